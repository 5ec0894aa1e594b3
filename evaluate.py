"""Evaluate fine-tuned (or pretrained) checkpoints on one split of a manifest, with 95 % CIs.

The model and the eval transform chain are rebuilt from the checkpoint's `meta`, so evaluation
sees exactly what validation saw during training. The study evaluates the best-validation and
the last checkpoint of every run on the test split, which is never used for training or model
selection. Writes, per checkpoint:
    predictions.csv   image, patient, split, target, pred, prob_<class>... (one row per image)
    metrics.csv       one row: split, checkpoint, checkpoint_digest (sha256 of the file evaluated: plot_results.py
                      uses an evaluation only while its run folder holds that very file), epoch, loss, then per
                      metric <m>, <m>_ci_low,
                      <m>_ci_high (fractions), then n, n_patients, bootstrap, ci_level, bootstrap_seed,
                      seen_in_pretraining (images of the split its backbone's pretraining saw: check_overlap.py;
                      empty where not checked)
    per_class.csv     class, precision, recall, f1, support, note (decision: argmax; multi-label p >= 0.5);
                      a 0/0 value (precision of a class never predicted, recall of a class absent from
                      the split) is left empty and the note says why
    confusion.csv     true, <predicted class>... counts, rows = true class (multi-class only)
    confusion.png     the same as a figure, counts and row-normalised % (multi-class only)
    cam/              with --cam N: Grad-CAM heat maps of N images per class, correct and wrong
                      (cam/<class>/{correct,wrong}/<image>.png: the input | the map over it, the class
                      explained, its probability and a colour bar below), cam/cam.csv

Confidence intervals are percentile bootstrap intervals (--bootstrap resamples, --seed). The
resampling unit is the patient (the manifest's `patient` column): a patient's images are drawn
together, since they are not independent; where a data set has no patient ids the manifest
holds the image id, and the bootstrap is over images.

One checkpoint:
    python evaluate.py --checkpoint runs/demo/finetune/shenzhen/Domain_RI/seed0/best.pt \\
        --manifest runs/demo/manifests/shenzhen.csv --split test --out runs/demo/eval/shenzhen/Domain_RI/seed0/best
Many in one process (how the study workflow runs it): outputs go to OUT/<checkpoint path relative to --relative-to, no .pt>/
    python evaluate.py --checkpoint runs/demo/finetune/shenzhen/*/seed0/{best,last}.pt \\
        --relative-to runs/demo/finetune/shenzhen --manifest runs/demo/manifests/shenzhen.csv \\
        --split test --out runs/demo/eval/shenzhen          # -> eval/shenzhen/<arm>/seed0/{best,last}/
"""

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from kit import cli


def get_args_parser():
    parser = cli.Parser(__doc__)
    data = parser.add_argument_group("data")
    data.add_argument("--checkpoint", type=str, nargs="+", required=True,
                      help="best.pt / last.pt files; with several, outputs go to OUT/<path relative to --relative-to, "
                           "without .pt>/")
    data.add_argument("--manifest", type=str, nargs="+", required=True,
                      help="the manifest the model was trained on (several: the aggregated All set)")
    data.add_argument("--split", type=str, default="test", choices=["train", "val", "test"],
                      help="which split to evaluate; the test split is never used for training or selection")
    data.add_argument("--batch-size", type=cli.positive_int, default=64, help="images per forward pass")
    data.add_argument("--overlap", type=cli.existing_file, default=None, metavar="OVERLAP_CSV",
                      help="check_overlap.py's overlap.csv: a checkpoint whose backbone was pretrained on a picture "
                           "of the evaluated split is refused (default: the overlap.csv its pretraining left out)")
    data.add_argument("--allow-pretraining-overlap", action=argparse.BooleanOptionalAction, default=False,
                      help="evaluate anyway when the pretraining saw pictures of the split (the paper's way: "
                           "metrics.csv counts them in seen_in_pretraining and the report flags them)")
    stats = parser.add_argument_group("statistics")
    stats.add_argument("--bootstrap", type=cli.non_negative_int, default=10_000,
                       help="bootstrap resamples (of patients) for the confidence intervals; 0 = none; >= 10000 "
                            "for reporting (computed for all resamples at once: seconds per checkpoint)")
    stats.add_argument("--ci", type=cli.ci_level, default=0.95, help="confidence level of the intervals, in (0, 1)")
    stats.add_argument("--seed", type=cli.seed, default=0, help="seed of the bootstrap resampling")
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=str, required=True, help="output folder")
    output.add_argument("--cam", type=cli.non_negative_int, default=0, metavar="N",
                        help="Grad-CAM heat maps (where the model looked) of up to N images per class and outcome, "
                             "the most confident first: OUT/cam/<class>/{correct,wrong}/<image>.png and "
                             "OUT/cam/cam.csv; 0 = none")
    output.add_argument("--relative-to", type=str, default=None,
                        help="outputs go to OUT/<checkpoint path relative to this folder, without .pt>/ (default: the "
                             "checkpoints' common folder; a single checkpoint without it writes to OUT itself)")
    cli.add_runtime_args(parser, training=False)
    return parser


def output_dirs(checkpoints: list[Path], out: Path, relative_to: str | None) -> list[Path]:
    """OUT/<checkpoint path relative to --relative-to (default: the checkpoints' common folder), no .pt>;
    one checkpoint without --relative-to: OUT itself."""
    if len(checkpoints) == 1 and not relative_to:
        return [out]
    resolved = [p.resolve() for p in checkpoints]
    base = Path(relative_to).resolve() if relative_to else Path(os.path.commonpath([p.parent for p in resolved]))
    dirs = []
    for path in resolved:
        if not path.is_relative_to(base):
            raise ValueError(f"{path}: not inside --relative-to {base}")
        dirs.append(out / path.relative_to(base).with_suffix(""))
    if len(set(dirs)) != len(dirs):
        raise ValueError("two checkpoints map to the same output folder; evaluate them one at a time")
    return dirs


def metrics_with_ci(task: str, probs: np.ndarray, targets: np.ndarray, patients: np.ndarray,
                    args) -> dict[str, float]:
    """Every metric of the task with its percentile bootstrap interval over patients (every resample
    at once: stats.resampled_metrics)."""
    from kit import metrics, stats

    names = metrics.metric_names(task)
    point = metrics.compute_metrics(task, probs, targets)
    row = {}
    if args.bootstrap > 0:
        distribution = stats.resampled_metrics(task, names, [probs], targets, patients, args.bootstrap, args.seed)
        low, high = stats.percentile_interval(distribution[:, 0, :], args.ci)
    else:
        low = high = [np.nan] * len(names)
    for name, lo, hi in zip(names, low, high):
        row |= {name: point[name], f"{name}_ci_low": float(lo), f"{name}_ci_high": float(hi)}
    return row


def plot_confusion(confusion: np.ndarray, classes: list[str], title: str, path: Path) -> None:
    """Counts with the row-normalised share (recall) in each cell; darker = larger share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kit import files

    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = 2.2 + 0.75 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.2, size), layout="constrained")
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{confusion[i, j]}\n{100 * shares[i, j]:.0f}%", ha="center", va="center", fontsize=8,
                    color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="share of the true class")
    files.save_figure(fig, path, dpi=120)


def write_evaluation(out_dir: Path, path: Path, checkpoint: dict, meta: dict, df: pd.DataFrame, loss: float,
                     probs: np.ndarray, targets: np.ndarray, args, seen: int | None = None, digest: str = "") -> dict:
    """The files listed above for one checkpoint; returns the metrics row."""
    from kit import files, metrics

    # --- predictions.csv: one row per image, class probabilities as columns
    classes = meta["classes"]
    multiclass = meta["task"] == "multiclass"
    patients = df["patient"].astype(str).to_numpy()
    predictions = pd.DataFrame({"image": df["image"].to_numpy(), "patient": patients, "split": args.split})
    if multiclass:
        predictions["target"] = [classes[t] for t in targets]
    else:
        predictions["target"] = ["|".join(c for c, t in zip(classes, row) if t) for row in targets]
    for column, values in metrics.prediction_columns(meta["task"], classes, probs).items():
        predictions[column] = values

    # --- metrics with CIs over patients; per-class report; confusion matrix
    row = {"split": args.split, "checkpoint": str(path.resolve()), "checkpoint_digest": digest,
           "epoch": checkpoint.get("epoch"), "loss": loss,
           **metrics_with_ci(meta["task"], probs, targets, patients, args),
           "n": len(df), "n_patients": len(set(patients)), "bootstrap": args.bootstrap, "ci_level": args.ci,
           "bootstrap_seed": args.seed, "seen_in_pretraining": "" if seen is None else seen}
    onehot_targets = np.eye(len(classes), dtype=bool)[targets] if multiclass else targets.astype(bool)
    decisions = np.eye(len(classes), dtype=bool)[probs.argmax(axis=1)] if multiclass else probs >= 0.5
    per_class = metrics.per_class_rows(classes, onehot_targets, decisions)  # 0/0 left empty, with a note

    out_dir.mkdir(parents=True, exist_ok=True)
    files.write_csv(predictions.to_dict("records"), out_dir / "predictions.csv", list(predictions.columns))
    files.write_csv(per_class, out_dir / "per_class.csv", ["class", "precision", "recall", "f1", "support", "note"])
    if multiclass:
        confusion = metrics.confusion_matrix(targets, probs.argmax(axis=1), len(classes))
        files.write_csv([{"true": name, **dict(zip(classes, counts.tolist()))}
                         for name, counts in zip(classes, confusion)], out_dir / "confusion.csv", ["true", *classes])
        plot_confusion(confusion, classes, f"{meta['key']} {args.split} — {'/'.join(path.resolve().parts[-3:])} "
                       f"(n = {len(df)})", out_dir / "confusion.png")
    files.write_csv([row], out_dir / "metrics.csv", list(row))
    return row


def check_data(path: Path, checkpoint: dict, meta: dict, df: pd.DataFrame, manifest_rows: str, data_meta: dict,
               args) -> str | None:
    """Refuse a test split that shares images or patients with what the checkpoint was trained or
    selected on (its train and val rows); a manifest other than the training one is allowed when
    it shares none, with a note (returned). Checkpoints that keep no record get a note too."""
    from kit import runs

    trained_with = (meta.get("data") or {}).get("manifest_rows")
    if trained_with == manifest_rows:
        return None
    if args.split != "test":
        return f"note: {args.manifest[0]} is not the manifest {path} was trained with"
    overlap = runs.training_overlap(checkpoint, df, data_meta["key"])
    if overlap is None:
        return (f"note: {path} keeps no record of its training images (an older checkpoint); not checked whether "
                f"the {args.split} split of {args.manifest[0]} overlaps them")
    images, patients = overlap
    if images or patients:
        raise ValueError(f"{args.manifest[0]}: {images} of the {len(df)} test images and {patients} test patients "
                         f"were used to train or select {path} (this manifest holds another split than the one it "
                         f"was trained with: was prepare_data.py re-run?); evaluate it on its own manifest")
    return (f"note: {args.manifest[0]} is not the manifest {path} was trained with; its test split shares no image "
            f"and no patient with the training data")


def check_pretraining(path: Path, checkpoint: dict, meta: dict, df: pd.DataFrame, data_meta: dict, args):
    """(pictures of the split the backbone's pretraining was trained on, or None where nothing tells, note).

    The pretraining is the one recorded in the checkpoint (finetune_target.py --init a pretrained model);
    overlap.csv (check_overlap.py: --overlap, else the one that pretraining left out) pairs the target's
    images with source pictures. A split sharing pictures with the pretraining is refused unless
    --allow-pretraining-overlap: the arm would be tested on images it has seen, with other labels."""
    from kit import overlap

    record = meta.get("pretraining")
    if not record:
        return 0, None  # random or ImageNet init: no medical pretraining, nothing of the split seen
    recorded = (record.get("overlap") or {}).get("file")
    overlap_csv = args.overlap or (recorded if recorded and Path(recorded).is_file() else None)
    pretrained = (checkpoint.get("trained_on") or {}).get("pretrained_images")
    if overlap_csv is None or pretrained is None:
        why = "no overlap.csv (run check_overlap.py and pass --overlap)" if overlap_csv is None else \
            "its checkpoint keeps no record of the pretraining's images"
        return None, f"note: {path}: not checked whether its pretraining saw pictures of this split ({why})"
    seen = overlap.seen_in_pretraining(overlap_csv, data_meta["key"], df["image"], pretrained)
    if seen and not args.allow_pretraining_overlap:
        raise ValueError(f"{args.manifest[0]}: {seen} of the {len(df)} {args.split} images are pictures that the "
                         f"pretraining of {path} ({record.get('key')}, {record.get('checkpoint')}) was trained on "
                         f"(pairs listed in {overlap_csv}); pretrain with --exclude-overlap {overlap_csv}, or pass "
                         f"--allow-pretraining-overlap to evaluate anyway")
    note = f"note: {path}: {seen} {args.split} image(s) were seen in pretraining (--allow-pretraining-overlap)" \
        if seen else None
    return seen, note


def main(args):
    import torch  # here, after parsing: --help answers without loading torch and MONAI

    from kit import data, files, identity, locks, loop, losses, manifests, models, runtime

    runtime.seed_everything(args.seed)
    device = runtime.resolve_device(args.device)
    checkpoints = [Path(p) for p in args.checkpoint]
    out_root = Path(args.out)
    out_dirs = output_dirs(checkpoints, out_root, args.relative_to)
    # one writer per output folder; this also fails at once, before any inference, where it cannot write
    locks.hold(out_root.parent / f".{out_root.name}.lock", what=f"evaluation folder {out_root}")
    for path in checkpoints:  # every file there before any inference; a run that lost its best.pt says how to mend it
        if not path.is_file():
            lost = path.name == "best.pt" and (path.parent / "last.pt").is_file()
            raise ValueError(f"{path}: no such file" + (" (its run folder holds last.pt: train the run again with "
                                                        "--no-resume, or evaluate last.pt)" if lost else ""))

    # --- data: the split to evaluate
    df, data_meta = manifests.load_manifests(args.manifest)
    manifest_rows = identity.rows_hash(df)
    df = df[df["split"] == args.split].reset_index(drop=True)
    if df.empty:
        raise ValueError(f"{args.manifest[0]}: the {args.split} split is empty")

    for path, out_dir in zip(checkpoints, out_dirs):
        # --- model and eval transforms exactly as the checkpoint was trained (rebuilt from its meta); the file's
        # content hash goes into metrics.csv, binding the evaluation to this very checkpoint
        digest = f"sha256:{files.digest(path)}" if path.is_file() else ""
        model, meta, checkpoint = models.model_from_checkpoint(path)
        if list(meta["classes"]) != list(data_meta["classes"]):
            raise ValueError(f"{path}: the checkpoint's classes {meta['classes']} differ from the manifest's "
                             f"{data_meta['classes']}; evaluate it on the manifest it was trained on")
        note = check_data(path, checkpoint, meta, df, manifest_rows, data_meta, args)
        seen, seen_note = check_pretraining(path, checkpoint, meta, df, data_meta, args)
        for line in (note, seen_note):
            if line:
                print(line)
        model.to(device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
        dataset = data.ImageDataset(df, task=meta["task"], classes=meta["classes"], image_size=meta["image_size"],
                                    train=False, domain=meta["domain"],
                                    cache_dirs=data.manifest_folders(args.manifest))  # a cache next to the manifest
        loader = data.make_loader(dataset, batch_size=args.batch_size, train=False, workers=args.workers,
                                  seed=args.seed, device=device)
        criterion = losses.make_criterion(meta["task"], meta.get("loss_weights")).to(device)

        # --- predict, then the files with CIs over patients, all put in place at once
        loss, probs, targets = loop.predict(model, loader, criterion, device, task=meta["task"], amp=args.amp,
                                            channels_last=args.channels_last, desc=f"eval {path.parent.name}")
        tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp_dir, ignore_errors=True)
        row = write_evaluation(tmp_dir, path, checkpoint, meta, df, loss, probs, targets, args, seen=seen,
                               digest=digest)
        if args.cam:  # inside the folder before it is put in place
            from kit import cam

            cam.write_examples(tmp_dir / "cam", model, dataset, task=meta["task"], classes=meta["classes"],
                               targets=targets, probs=probs, n=args.cam, device=device)
        files.publish(tmp_dir, out_dir)
        headline = meta["headline_metric"]
        print(f"{path}: {args.split} n={len(df)} ({row['n_patients']} patients) loss {loss:.4f} {headline} "
              f"{row[headline]:.4f} [{row[f'{headline}_ci_low']:.4f}, {row[f'{headline}_ci_high']:.4f}] -> {out_dir}")


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    with cli.user_errors():
        main(args)
