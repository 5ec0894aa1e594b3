"""Evaluate fine-tuned (or pretrained) checkpoints on one split of a manifest.

The model and the eval transform chain are rebuilt from the checkpoint's `meta`, so evaluation
sees exactly what validation saw during training. Writes, per checkpoint:
    predictions.csv   image, patient, split, target, pred, prob_<class>... (one row per image)
    metrics.csv       split, checkpoint, epoch, loss, <metric columns>, n

One checkpoint:
    python evaluate.py --checkpoint runs/demo/finetune/shenzhen/Domain_RI/best.pt \
        --manifest runs/demo/manifests/shenzhen.csv --split test --out runs/demo/eval/shenzhen/Domain_RI
Every arm of a target in one process (outputs go to OUT_DIR/<run folder name>/):
    python evaluate.py --checkpoint runs/demo/finetune/shenzhen/*/best.pt \
        --manifest runs/demo/manifests/shenzhen.csv --split test --out runs/demo/eval/shenzhen
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import datasets
import engine
import metrics as metrics_lib
import models


def get_args_parser():
    parser = argparse.ArgumentParser(description="Evaluate checkpoints on a manifest split.")
    # Data
    parser.add_argument("--checkpoint", type=str, nargs="+", required=True,
                        help="best.pt / last.pt files; with several, outputs go to OUT/<run folder name>/")
    parser.add_argument("--manifest", type=str, nargs="+", required=True,
                        help="the manifest the model was trained on (several: the aggregated All set)")
    parser.add_argument("--split", type=str, default="test", choices=["train", "val", "test"],
                        help="which split to evaluate; the test split is never used for training or selection")
    parser.add_argument("--batch-size", type=engine.positive_int, default=64, help="images per forward pass")
    # Output
    parser.add_argument("--out", type=str, required=True, help="output folder")
    engine.add_runtime_args(parser)
    return parser


def load_data(manifests: list[str]) -> tuple[pd.DataFrame, dict]:
    if len(manifests) == 1:
        return datasets.load_manifest(manifests[0])
    return datasets.aggregate_manifests(manifests)


def evaluate_checkpoint(path: Path, df: pd.DataFrame, data_meta: dict, args, out_dir: Path,
                        device: torch.device) -> dict:
    """One checkpoint on the selected rows: writes predictions.csv and metrics.csv, returns the metrics row."""
    model, meta, checkpoint = models.model_from_checkpoint(path)
    if list(meta["classes"]) != list(data_meta["classes"]):
        raise ValueError(f"{path}: the checkpoint's classes {meta['classes']} differ from the manifest's "
                         f"{data_meta['classes']}; evaluate it on the manifest it was trained on")

    # --- model and data exactly as the checkpoint was trained
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    dataset = engine.ImageDataset(df, task=meta["task"], classes=meta["classes"], image_size=meta["image_size"],
                                  train=False, domain=meta["domain"])
    loader = engine.make_loader(dataset, batch_size=args.batch_size, train=False, workers=args.workers,
                                seed=args.seed, device=device)
    criterion = engine.make_criterion(meta["task"], meta.get("loss_weights")).to(device)
    loss, probs, targets = engine.predict(model, loader, criterion, device, task=meta["task"], amp=args.amp,
                                          channels_last=args.channels_last, desc=f"eval {path.parent.name}")

    # --- predictions.csv: one row per image, class probabilities as columns
    classes = meta["classes"]
    predictions = pd.DataFrame({"image": df["image"].to_numpy(), "patient": df["patient"].to_numpy(),
                                "split": args.split})
    if meta["task"] == "multiclass":
        predictions["target"] = [classes[t] for t in targets]
        predictions["pred"] = [classes[p] for p in probs.argmax(axis=1)]
    else:
        predictions["target"] = ["|".join(c for c, t in zip(classes, row) if t) for row in targets]
        predictions["pred"] = ["|".join(c for c, p in zip(classes, row) if p >= 0.5) for row in probs]
    for i, name in enumerate(classes):
        predictions[f"prob_{name}"] = probs[:, i].astype(np.float64).round(6)

    row = {"split": args.split, "checkpoint": str(path.resolve()), "epoch": checkpoint.get("epoch"),
           "loss": loss, **metrics_lib.compute_metrics(meta["task"], probs, targets), "n": len(df)}
    out_dir.mkdir(parents=True, exist_ok=True)
    engine.write_csv(predictions.to_dict("records"), out_dir / "predictions.csv", list(predictions.columns))
    engine.write_csv([row], out_dir / "metrics.csv", list(row))
    headline = meta["headline_metric"]
    print(f"{path}: {args.split} n={len(df)} loss {loss:.4f} {headline} {row[headline]:.4f} -> {out_dir}")
    return row


def main(args):
    engine.seed_everything(args.seed)
    device = engine.resolve_device(args.device)
    checkpoints = [Path(p) for p in args.checkpoint]
    if len(checkpoints) == 1:
        out_dirs = [Path(args.out)]
    else:
        out_dirs = [Path(args.out) / p.parent.name for p in checkpoints]
        if len(set(out_dirs)) != len(out_dirs):
            raise ValueError("several checkpoints share a run folder name; evaluate them one at a time")

    # --- data
    df, data_meta = load_data(args.manifest)
    df = df[df["split"] == args.split].reset_index(drop=True)
    if df.empty:
        raise ValueError(f"{args.manifest[0]}: the {args.split} split is empty")

    # --- evaluate
    for path, out_dir in zip(checkpoints, out_dirs):
        evaluate_checkpoint(path, df, data_meta, args, out_dir, device)


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    with engine.user_errors():
        main(args)
