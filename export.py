"""Hand a model on: a checkpoint -> TorchScript, a MONAI bundle, or (pretrained models) the backbone.

Writes into --out, per --formats:

    model.ts      TorchScript: the model with its normalisation, loads with torch alone
                  (torch.jit.load; no kit, no MONAI). Input uint8 in [0, 255] or float in [0, 1],
                  (B, 1 or 3, S, S) as transforms.loader_transforms(domain, image_size=S, train=False)
                  leaves the picture; output probabilities (softmax; sigmoid if multi-label). The file's
                  extra file meta.json says so, with the classes, domain, image size and source.
    bundle/       a MONAI bundle that runs with MONAI alone: configs/metadata.json, configs/inference.json
                  (MONAI's DenseNet121 + the head from torch.nn; the images through the kit's eval chain
                  in stock MONAI transforms, transforms.stock_eval_config), models/model.pt,
                  docs/README.md (training data, test metrics with CIs from --metrics, intended use).
                  One domain only.
    backbone.pt   the backbone alone (features.* and the meta): models.load_backbone("backbone.pt")
                  gives a MONAI DenseNet-121 feature extractor, and finetune_target.py --init takes it:
                  a pretrained model (CXR_*, HWSI_*, EFI_*, All_*) to use instead of ImageNet.

A fine-tuned model, to hand on (the default formats):
    python export.py --checkpoint OUT/finetune/shenzhen/Domain_RI/seed0/best.pt --out OUT/export/shenzhen \\
        --metrics OUT/eval/shenzhen/Domain_RI/seed0/best/metrics.csv
A pretrained source model, as the start of a new target:
    python export.py --checkpoint OUT/pretrain/CXR_RI/seed0/last.pt --out OUT/export/CXR_RI --formats backbone
"""
from pathlib import Path

from kit import cli

FORMATS = ("torchscript", "bundle", "backbone")


def get_args_parser():
    parser = cli.Parser(__doc__)
    parser.add_argument("--checkpoint", type=cli.existing_file, required=True, help="best.pt / last.pt of a run")
    parser.add_argument("--out", type=str, required=True, help="folder for model.ts, bundle/ and backbone.pt")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=["torchscript", "bundle"],
                        help="what to write (backbone: for pretrained models, to fine-tune from)")
    parser.add_argument("--metrics", type=cli.existing_file, default=None,
                        help="evaluate.py's metrics.csv of this checkpoint, for the bundle's metadata and README")
    return parser


def main(args):
    from kit import export, models

    model, meta, checkpoint = models.model_from_checkpoint(args.checkpoint)
    if "bundle" in args.formats and meta["domain"] not in ("cxr", "hwsi", "efi"):
        raise ValueError(f"{args.checkpoint}: a model of {meta['domain']} domains has no single preprocessing chain "
                         "for a bundle; export it with --formats torchscript backbone")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    epoch = checkpoint.get("epoch")
    if "torchscript" in args.formats:
        export.save_torchscript(model, meta, out / "model.ts", source=args.checkpoint, epoch=epoch)
        print(f"TorchScript: {out / 'model.ts'} (input uint8 or [0, 1] (B, C, {meta['image_size']}, "
              f"{meta['image_size']}); output probabilities of {', '.join(meta['classes'])})")
    if "bundle" in args.formats:
        folder = export.save_bundle(model, meta, out / "bundle", source=args.checkpoint, epoch=epoch,
                                    metrics_csv=args.metrics)
        print(f"MONAI bundle: {folder}")
    if "backbone" in args.formats:
        export.save_backbone(checkpoint, out / "backbone.pt", source=args.checkpoint)
        print(f"backbone: {out / 'backbone.pt'} (models.load_backbone, or finetune_target.py --init)")


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    with cli.user_errors():
        main(args)
