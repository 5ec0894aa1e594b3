"""Predict with a fine-tuned checkpoint: images in, predictions.csv out (clinical use).

Inputs: image files (PNG, JPEG, TIFF, BMP, DICOM, NIfTI), folders (walked recursively; suffix-less
DICOM files of a series folder included, one image per file) and CSV files with an `image` column
(relative paths from the CSV's folder). Every image goes through the eval transform chain of
transforms.py rebuilt from the checkpoint's meta (domain, image size): the numbers evaluate.py
computes for the same image. Writes into --out:

    predictions.csv   image, pred, prob_<class>...; PatientID, StudyInstanceUID, SOPInstanceUID when
                      an input is DICOM; cam (the heat-map PNG) with --cam
    skipped.csv       image, reason: what could not be read or is not what the model was trained on

DICOM is shown as a viewer shows it (rescale, VOI LUT or window, MONOCHROME1 inverted). Refused,
one line each in skipped.csv, the others still predicted: unreadable files, 3-D volumes and
multi-frame DICOM, and images the model was not trained for (a DICOM modality of another kind,
e.g. CT for a chest X-ray model; a colour image for a chest X-ray model; a grey one for a
histology or fundus model). When nothing could be predicted (e.g. the one input was refused) the
command fails with that one line.

    python predict.py --checkpoint OUT/finetune/shenzhen/Domain_RI/seed0/best.pt \\
        OUT/demo_data/shenzhen/ChinaSet_AllFiles/CXR_png/ --out OUT/predict/shenzhen
    python predict.py --checkpoint best.pt scan.dcm series_folder/ worklist.csv --out OUT/predict/today \\
        --cam OUT/predict/today/cam          # + where the model looked (Grad-CAM), one PNG per image
"""
import argparse
from pathlib import Path

from kit import cli


def get_args_parser():
    parser = cli.Parser(__doc__)
    data = parser.add_argument_group("data")
    data.add_argument("inputs", nargs="+", help="image files, folders (recursive) and CSV files with an `image` column")
    data.add_argument("--checkpoint", type=cli.existing_file, required=True,
                      help="a fine-tuned best.pt / last.pt (one domain: cxr, hwsi or efi)")
    data.add_argument("--batch-size", type=cli.positive_int, default=64, help="images per forward pass")
    data.add_argument("--check-domain", action=argparse.BooleanOptionalAction, default=True,
                      help="refuse images the model was not trained for (DICOM modality; colour for a chest X-ray "
                           "model, grey for a histology or fundus model); --no-check-domain predicts every "
                           "readable image")
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=str, required=True, help="folder for predictions.csv and skipped.csv")
    output.add_argument("--cam", type=str, default=None, metavar="DIR",
                        help="also write a Grad-CAM heat map per image as DIR/<name>.png: input | map over input, "
                             "the predicted class and its probability and a colour bar below")
    cli.add_runtime_args(parser, training=False)
    return parser


def predict_batches(model, loader, images, meta, device, *, amp_dtype, memory_format, explain, cam_dir, cam_staging):
    """Every readable image through the model, with `explain` (Grad-CAM) the heat map of its predicted class into
    `cam_staging`: (input indices predicted, their probability batches, (index, reason) of the images skipped,
    {index: DICOM ids and cam path})."""
    import torch
    from tqdm import tqdm

    from kit import cam, loop, losses

    rows, probs, skipped, ids, taken = [], [], [], {}, set()
    with torch.no_grad():
        for indices, pixels, tails, batch_ids, failed in tqdm(loader, desc="predict", unit="batch",
                                                              dynamic_ncols=True):
            ids.update(batch_ids)
            skipped += failed
            if not indices:
                continue
            logits = loop.forward(model, pixels, tails, device, amp_dtype=amp_dtype, memory_format=memory_format)
            batch_probs = losses.to_probs(logits.float(), meta["task"]).cpu()
            rows += indices
            probs.append(batch_probs)
            if explain is not None:  # the map of the predicted class, captioned with it and its probability
                explained = batch_probs.argmax(dim=1)
                heat = explain(cam.normalised(pixels, tails, device), explained)
                for i, picture, heat_map, c, p in zip(indices, pixels, heat, explained.tolist(), batch_probs):
                    name = cam.file_name(images[i], taken)
                    ids.setdefault(i, {})["cam"] = str(Path(cam_dir) / name)
                    cam.save_overlay(cam_staging / name, picture, heat_map, class_name=meta["classes"][c],
                                     prob=float(p[c]))
    return rows, probs, skipped, ids


def prediction_columns(images, rows, probs, ids, meta) -> dict:
    """predictions.csv's columns: image, the prediction and per-class probabilities, then the DICOM ids and the
    heat map's path where any row has them."""
    import numpy as np
    import torch

    from kit import inputs, metrics

    probs = torch.cat(probs).numpy().astype(np.float64)
    columns = {"image": [images[i] for i in rows],
               **metrics.prediction_columns(meta["task"], meta["classes"], probs)}
    extra = [key for key in (*inputs.DICOM_IDS, "cam") if any(key in ids.get(i, {}) for i in rows)]
    for key in extra:
        columns[key] = [ids.get(i, {}).get(key, "") for i in rows]
    return columns


def main(args):
    from kit import inputs

    images, notes = inputs.find_inputs(args.inputs)  # before the model loads: a typo fails at once
    for note in notes:
        print(f"note: {note}")

    import torch

    from kit import cam, files, locks, models, runtime

    model, meta, _ = models.model_from_checkpoint(args.checkpoint)
    if meta["domain"] not in ("cxr", "hwsi", "efi"):
        raise ValueError(f"{args.checkpoint}: a model of {meta['domain']} domains (a pretrained All_* model); "
                         "predict with a fine-tuned checkpoint of one domain")
    out = Path(args.out)
    locks.hold(out.parent / f".{out.name}.lock", what=f"prediction folder {out}")
    device = runtime.resolve_device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    amp_dtype = runtime.autocast_dtype(device, args.amp)
    explain = cam.GradCam(model) if args.cam else None

    # the heat maps go to a hidden folder beside --cam and join it with predictions.csv once every image is
    # done: a Ctrl-C or a full disk leaves no maps without their predictions.csv
    with files.staging(args.cam) as cam_staging:
        dataset = inputs.PredictionSet(images, domain=meta["domain"], image_size=meta["image_size"],
                                       classes=meta["classes"], task=meta["task"], check_domain=args.check_domain)
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False,
                                             num_workers=args.workers, collate_fn=inputs.collate,
                                             pin_memory=device.type == "cuda")
        rows, probs, skipped, ids = predict_batches(model, loader, images, meta, device, amp_dtype=amp_dtype,
                                                    memory_format=memory_format, explain=explain, cam_dir=args.cam,
                                                    cam_staging=cam_staging)

        # --- predictions.csv and skipped.csv, in input order
        out.mkdir(parents=True, exist_ok=True)
        skipped = [{"image": images[i], "reason": reason} for i, reason in sorted(skipped)]
        if not rows:
            files.write_csv(skipped, out / "skipped.csv", ["image", "reason"])
            first = skipped[0]["reason"]
            raise ValueError(first if len(images) == 1 else f"none of the {len(images)} images could be predicted "
                             f"(reasons: {out / 'skipped.csv'}); the first: {first}")
        columns = prediction_columns(images, rows, probs, ids, meta)
        with files.ctrl_c_after_writes():  # the maps, skipped.csv and predictions.csv: all of them, or none
            if cam_staging is not None:
                files.move_into(cam_staging, args.cam)
            files.write_csv(skipped, out / "skipped.csv", ["image", "reason"])
            files.write_csv([dict(zip(columns, values)) for values in zip(*columns.values())],
                            out / "predictions.csv", list(columns))
    print(f"{len(rows)} of {len(images)} images predicted -> {out / 'predictions.csv'}"
          + (f"; {len(skipped)} skipped -> {out / 'skipped.csv'}" if skipped else ""))
    for row in skipped[:5]:
        print(f"  skipped: {row['reason']}")
    if len(skipped) > 5:
        print(f"  ... and {len(skipped) - 5} more")

if __name__ == "__main__":
    args = get_args_parser().parse_args()
    with cli.user_errors():
        main(args)
