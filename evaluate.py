"""Evaluate fine-tuned (or pretrained) checkpoints on one split of a manifest, with 95 % CIs.

The model and the eval transform chain are rebuilt from the checkpoint's `meta`, so evaluation
sees exactly what validation saw during training. The study evaluates the best-validation and
the last checkpoint of every run on the test split, which is never used for training or model
selection. Writes, per checkpoint:
    predictions.csv   image, patient, split, target, pred, prob_<class>... (one row per image)
    metrics.csv       one row: split, checkpoint, epoch, loss, then per metric <m>, <m>_ci_low,
                      <m>_ci_high (fractions), then n, n_patients, bootstrap, ci_level, bootstrap_seed
    per_class.csv     class, precision, recall, f1, support (decision: argmax; multi-label p >= 0.5)
    confusion.csv     true, <predicted class>... counts, rows = true class (multi-class only)
    confusion.png     the same as a figure, counts and row-normalised % (multi-class only)

Confidence intervals are percentile bootstrap intervals (--bootstrap resamples, --seed). The
resampling unit is the patient (the manifest's `patient` column): a patient's images are drawn
together, since they are not independent; where a data set has no patient ids the manifest
holds the image id, and the bootstrap is over images.

One checkpoint:
    python evaluate.py --checkpoint runs/demo/finetune/shenzhen/Domain_RI/seed0/best.pt \
        --manifest runs/demo/manifests/shenzhen.csv --split test --out runs/demo/eval/shenzhen/Domain_RI/seed0/best
Many in one process (how study.sh runs it): outputs go to OUT/<checkpoint path relative to --relative-to, no .pt>/
    python evaluate.py --checkpoint runs/demo/finetune/shenzhen/*/seed0/{best,last}.pt \
        --relative-to runs/demo/finetune/shenzhen --manifest runs/demo/manifests/shenzhen.csv \
        --split test --out runs/demo/eval/shenzhen          # -> eval/shenzhen/<arm>/seed0/{best,last}/
"""

import argparse
import os
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
                        help="best.pt / last.pt files; with several, outputs go to OUT/<path relative to "
                             "--relative-to, without .pt>/")
    parser.add_argument("--manifest", type=str, nargs="+", required=True,
                        help="the manifest the model was trained on (several: the aggregated All set)")
    parser.add_argument("--split", type=str, default="test", choices=["train", "val", "test"],
                        help="which split to evaluate; the test split is never used for training or selection")
    parser.add_argument("--batch-size", type=engine.positive_int, default=64, help="images per forward pass")
    # Statistics
    parser.add_argument("--bootstrap", type=engine.non_negative_int, default=1000,
                        help="bootstrap resamples (of patients) for the confidence intervals; 0 = none; >= 1000 "
                             "for reporting")
    parser.add_argument("--ci", type=metrics_lib.ci_level, default=0.95, help="confidence level of the intervals, in (0, 1)")
    # Output
    parser.add_argument("--out", type=str, required=True, help="output folder")
    parser.add_argument("--relative-to", type=str, default=None,
                        help="outputs go to OUT/<checkpoint path relative to this folder, without .pt>/ (default: the "
                             "checkpoints' common folder; a single checkpoint without it writes to OUT itself)")
    engine.add_runtime_args(parser)  # --seed also seeds the bootstrap
    return parser


def load_data(manifests: list[str]) -> tuple[pd.DataFrame, dict]:
    if len(manifests) == 1:
        return datasets.load_manifest(manifests[0])
    return datasets.aggregate_manifests(manifests)


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
    """Every metric of the task with its percentile bootstrap interval over patients."""
    names = metrics_lib.metric_names(task)
    point = metrics_lib.compute_metrics(task, probs, targets)
    row = {}
    if args.bootstrap > 0:
        def statistic(rows):
            values = metrics_lib.compute_metrics(task, probs[rows], targets[rows])
            return [values[name] for name in names]

        distribution = metrics_lib.bootstrap_distribution(statistic, patients, n_resamples=args.bootstrap,
                                                          seed=args.seed)
        low, high = metrics_lib.percentile_interval(distribution, args.ci)
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
    tmp = path.with_name(path.stem + ".tmp.png")
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)


def evaluate_checkpoint(path: Path, df: pd.DataFrame, data_meta: dict, args, out_dir: Path,
                        device: torch.device) -> dict:
    """One checkpoint on the selected rows: writes the files listed above, returns the metrics row."""
    model, meta, checkpoint = models.model_from_checkpoint(path)
    if list(meta["classes"]) != list(data_meta["classes"]):
        raise ValueError(f"{path}: the checkpoint's classes {meta['classes']} differ from the manifest's "
                         f"{data_meta['classes']}; evaluate it on the manifest it was trained on")

    # --- model and data exactly as the checkpoint was trained
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    dataset = engine.ImageDataset(df, task=meta["task"], classes=meta["classes"], image_size=meta["image_size"],
                                  train=False, domain=meta["domain"],  # a preprocessing cache next to the manifest
                                  cache_dirs=sorted({str(Path(m).parent) for m in args.manifest}))
    loader = engine.make_loader(dataset, batch_size=args.batch_size, train=False, workers=args.workers,
                                seed=args.seed, device=device)
    criterion = engine.make_criterion(meta["task"], meta.get("loss_weights")).to(device)
    loss, probs, targets = engine.predict(model, loader, criterion, device, task=meta["task"], amp=args.amp,
                                          channels_last=args.channels_last, desc=f"eval {path.parent.name}")

    # --- predictions.csv: one row per image, class probabilities as columns
    classes = meta["classes"]
    multiclass = meta["task"] == "multiclass"
    patients = df["patient"].astype(str).to_numpy()
    predictions = pd.DataFrame({"image": df["image"].to_numpy(), "patient": patients, "split": args.split})
    if multiclass:
        predictions["target"] = [classes[t] for t in targets]
        predictions["pred"] = [classes[p] for p in probs.argmax(axis=1)]
    else:
        predictions["target"] = ["|".join(c for c, t in zip(classes, row) if t) for row in targets]
        predictions["pred"] = ["|".join(c for c, p in zip(classes, row) if p >= 0.5) for row in probs]
    for i, name in enumerate(classes):
        predictions[f"prob_{name}"] = probs[:, i].astype(np.float64).round(6)

    # --- metrics with CIs over patients; per-class report; confusion matrix
    row = {"split": args.split, "checkpoint": str(path.resolve()), "epoch": checkpoint.get("epoch"), "loss": loss,
           **metrics_with_ci(meta["task"], probs, targets, patients, args),
           "n": len(df), "n_patients": len(set(patients)), "bootstrap": args.bootstrap, "ci_level": args.ci,
           "bootstrap_seed": args.seed}
    onehot_targets = np.eye(len(classes), dtype=bool)[targets] if multiclass else targets.astype(bool)
    decisions = np.eye(len(classes), dtype=bool)[probs.argmax(axis=1)] if multiclass else probs >= 0.5
    per_class = [{"class": name, **values}
                 for name, values in zip(classes, metrics_lib.per_class_report(onehot_targets, decisions))]

    out_dir.mkdir(parents=True, exist_ok=True)
    engine.write_csv(predictions.to_dict("records"), out_dir / "predictions.csv", list(predictions.columns))
    engine.write_csv(per_class, out_dir / "per_class.csv", ["class", "precision", "recall", "f1", "support"])
    if multiclass:
        confusion = metrics_lib.confusion_matrix(targets, probs.argmax(axis=1), len(classes))
        engine.write_csv([{"true": name, **dict(zip(classes, counts.tolist()))} for name, counts in zip(classes, confusion)],
                         out_dir / "confusion.csv", ["true", *classes])
        plot_confusion(confusion, classes, f"{meta['key']} {args.split} — {'/'.join(path.resolve().parts[-3:])} "
                       f"(n = {len(df)})", out_dir / "confusion.png")
    engine.write_csv([row], out_dir / "metrics.csv", list(row))  # last: its presence means 'done'
    headline = meta["headline_metric"]
    print(f"{path}: {args.split} n={len(df)} ({row['n_patients']} patients) loss {loss:.4f} {headline} "
          f"{row[headline]:.4f} [{row[f'{headline}_ci_low']:.4f}, {row[f'{headline}_ci_high']:.4f}] -> {out_dir}")
    return row


def main(args):
    engine.seed_everything(args.seed)
    device = engine.resolve_device(args.device)
    checkpoints = [Path(p) for p in args.checkpoint]
    out_dirs = output_dirs(checkpoints, Path(args.out), args.relative_to)

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
