"""The one training loop of the study, shared by pretrain_source.py, pretrain_all.py and
finetune_target.py, plus the pieces evaluate.py reuses (datasets, loaders, prediction).

A run folder holds (DESIGN.md, "Run folder"):
    args.json     resolved arguments, the model/data `meta`, library versions, git sha (written first)
    metrics.csv   one row per (epoch, split): epoch, split, loss, <metric columns>, seconds, lr
    last.pt       every epoch;  best.pt  on the best validation headline metric
    summary.json  written once the last epoch is done (study.sh skips a stage that has it)

Checkpoints hold tensors and plain Python values only (see models.save_checkpoint /
models.load_checkpoint, which use weights_only=True).
"""

import argparse
import contextlib
import csv
import datetime
import io
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from monai.data import DataLoader
from tqdm import tqdm

import metrics as metrics_lib
import transforms
from datasets import write_text_atomic
import models
from models import ImageNetWeightsUnavailable, save_checkpoint

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- runtime

def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available; 'cuda' without a GPU is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA device is visible; use --device cpu or auto")
    return device


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 where the hardware has it (every recent CPU and Ampere+ GPUs), else fp16 on CUDA."""
    if not amp:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch; MONAI's random transforms are seeded by monai.data.DataLoader."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """RNG states as plain values/tensors, so a checkpoint stays loadable with weights_only=True."""
    np_state = np.random.get_state()
    state = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def library_versions() -> dict:
    import monai
    return {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
            "numpy": np.__version__, "pandas": pd.__version__}


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def write_json(obj, path: Path) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_csv(rows: list[dict], path: Path, columns: list[str]) -> None:
    """Whole rows at once (metrics files are small: rewriting beats appending, and never duplicates)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


# --------------------------------------------------------------------------- data

def encode_targets(df: pd.DataFrame, task: str, classes: list[str]) -> np.ndarray:
    """Manifest rows -> int class indices (multiclass) or a 0/1 float matrix (multilabel)."""
    if task == "multiclass":
        labels = df["label"].to_numpy(dtype=np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"label index out of range 0..{len(classes) - 1}")
        return labels
    index = {name: i for i, name in enumerate(classes)}
    targets = np.zeros((len(df), len(classes)), dtype=np.float32)
    for row, joined in enumerate(df["labels"].fillna("").astype(str)):
        for name in filter(None, joined.split("|")):
            if name not in index:
                raise ValueError(f"label {name!r} is not one of the manifest's classes")
            targets[row, index[name]] = 1.0
    return targets


class ImageDataset(torch.utils.data.Dataset):
    """Images from a manifest frame with the transform chain of each row's domain.

    `df` needs columns image and label/labels, and either a `domain` column (the aggregated
    "All" set mixes CXR, histology and fundus rows) or one `domain` for every row.
    """

    def __init__(self, df: pd.DataFrame, *, task: str, classes: list[str], image_size: int,
                 train: bool, domain: str | None = None):
        self.images = df["image"].astype(str).tolist()
        self.targets = encode_targets(df, task, classes)
        domains = df["domain"].astype(str).tolist() if "domain" in df.columns else [domain] * len(df)
        if any(d is None for d in domains):
            raise ValueError("ImageDataset needs a `domain` column or the domain argument")
        self.domain_names = sorted(set(domains))
        make = transforms.train_transforms if train else transforms.eval_transforms
        # A list, not a dict: monai.data.DataLoader seeds the Randomizable objects it finds in
        # lists and attributes, which makes augmentation reproducible for a given --seed.
        self.chains = [make(d, image_size=image_size) for d in self.domain_names]
        position = {d: i for i, d in enumerate(self.domain_names)}
        self.chain_of = np.array([position[d] for d in domains], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        try:
            image = self.chains[self.chain_of[i]]({"image": self.images[i]})["image"]
        except Exception as err:  # MONAI wraps reader errors in RuntimeError("applying transform ...")
            while err.__cause__ is not None:
                err = err.__cause__
            raise ValueError(f"{self.images[i]}: cannot read the image ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else 'no details'})") from None
        return torch.as_tensor(image), torch.as_tensor(self.targets[i])


def make_loader(dataset: ImageDataset, *, batch_size: int, train: bool, workers: int, seed: int,
                device: torch.device) -> DataLoader:
    """Seeded shuffling (data order is fixed by --seed); training drops a last batch of one,
    which BatchNorm in the head cannot normalise."""
    generator = torch.Generator().manual_seed(seed)
    drop_last = train and len(dataset) % batch_size == 1
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=workers,
                      generator=generator, drop_last=drop_last, pin_memory=device.type == "cuda",
                      persistent_workers=workers > 0)


def balanced_class_weights(targets: np.ndarray, num_classes: int) -> list[float]:
    """sklearn's 'balanced' weights n / (C * n_c); a class absent from training gets weight 0."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.round(6).tolist()


def make_criterion(task: str, class_weights: list[float] | None) -> nn.Module:
    if task == "multilabel":
        return nn.BCEWithLogitsLoss()
    weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
    return nn.CrossEntropyLoss(weight=weight)


def to_probs(logits: torch.Tensor, task: str) -> torch.Tensor:
    logits = logits.float()
    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=1)


# --------------------------------------------------------------------------- loops

def _run_epoch(model, loader, criterion, device, *, task, amp_dtype, channels_last, optimizer=None,
               scheduler=None, scaler=None, desc=""):
    """One pass over `loader`; trains when an optimizer is given. Returns (mean loss, probs, targets).

    Losses and logits stay on the device until the end of the pass: no host synchronisation
    per step, except the progress-bar refresh every 20 steps when a terminal shows it.
    """
    training = optimizer is not None
    model.train(training)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    seen = 0
    all_logits, all_targets = [], []
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None)
    with torch.set_grad_enabled(training):
        for step, (images, targets) in enumerate(bar):
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            targets = targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                logits = model(images)
            loss = criterion(logits.float(), targets)
            if training:
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
            total_loss += loss.detach().double() * len(images)
            seen += len(images)
            all_logits.append(logits.detach())
            all_targets.append(targets.detach())
            if step % 20 == 0 and not bar.disable:  # .item() waits for the device: only for a visible bar
                bar.set_postfix(loss=f"{loss.item():.4f}")
    if seen == 0:
        raise RuntimeError(f"{desc}: the loader produced no batches")
    probs = to_probs(torch.cat(all_logits), task).cpu().numpy()
    targets = torch.cat(all_targets).cpu().numpy()
    return float(total_loss.item() / seen), probs, targets


@torch.no_grad()
def predict(model, loader, criterion, device, *, task, amp=True, channels_last=True, desc="eval"):
    """Evaluation pass: (mean loss, probs (N, C), targets) in the loader's order."""
    return _run_epoch(model, loader, criterion, device, task=task, amp_dtype=autocast_dtype(device, amp),
                      channels_last=channels_last, desc=desc)


def _score(row: dict, headline: str) -> float:
    """Model-selection score: the validation headline metric; -inf where it is undefined (NaN)."""
    value = row.get(headline, math.nan)
    return value if value is not None and math.isfinite(value) else -math.inf


def fit(model: nn.Module, train_set: ImageDataset, val_set: ImageDataset, *, meta: dict, args) -> dict:
    """Trains `model` and writes the run folder `args.out`.

    Reads from `args`: out, epochs, batch_size, lr, weight_decay, workers, seed, device, amp,
    channels_last, class_weights ('auto' | 'balanced' | 'none'). `meta` describes model and data
    and travels inside every checkpoint so downstream scripts can rebuild both.
    """
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    amp_dtype = autocast_dtype(device, args.amp)
    task, headline = meta["task"], meta["headline_metric"]

    # --- loss: the paper balanced EyePACS, Messidor and DeepDRiD with class weights
    weighting = meta.get("class_weights", "none") if args.class_weights == "auto" else args.class_weights
    class_weights = (balanced_class_weights(train_set.targets, len(meta["classes"]))
                     if weighting == "balanced" and task == "multiclass" else None)
    meta = {**meta, "loss_weights": class_weights}
    criterion = make_criterion(task, class_weights).to(device)

    for stale in ("summary.json", "best.pt"):  # a previous run's: never mistaken for this run's
        (out_dir / stale).unlink(missing_ok=True)
    write_json({"args": vars(args), "meta": meta, "versions": library_versions(), "git_sha": git_sha(),
                "command": sys.argv, "device": str(device),
                "started": datetime.datetime.now().isoformat(timespec="seconds")}, out_dir / "args.json")

    # --- data
    train_loader = make_loader(train_set, batch_size=args.batch_size, train=True, workers=args.workers,
                               seed=args.seed, device=device)
    val_loader = make_loader(val_set, batch_size=args.batch_size, train=False, workers=args.workers,
                             seed=args.seed, device=device)
    steps = args.epochs * len(train_loader)
    print(f"{out_dir.name}: {len(train_set)} train / {len(val_set)} val images, {len(meta['classes'])} "
          f"{task} outputs, {args.epochs} epochs x {len(train_loader)} steps on {device}"
          f"{f' with {amp_dtype} autocast' if amp_dtype else ''}; class weights: {class_weights or 'none'}")

    # --- optimisation: AdamW with a cosine decay over all steps
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    # --- epochs
    columns = ["epoch", "split", "loss", *metrics_lib.metric_names(task), "seconds", "lr"]
    rows, best_score, best_epoch = [], -math.inf, 0
    run_start = time.time()
    for epoch in range(1, args.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        for split, loader in (("train", train_loader), ("val", val_loader)):
            start = time.time()
            loss, probs, targets = _run_epoch(
                model, loader, criterion, device, task=task, amp_dtype=amp_dtype,
                channels_last=args.channels_last, desc=f"epoch {epoch} {split}",
                **({"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler} if split == "train" else {}))
            if not math.isfinite(loss):
                raise SystemExit(f"{out_dir}: {split} loss is {loss} at epoch {epoch}; stopping "
                                 f"(last good checkpoint: {out_dir / 'last.pt'})")
            rows.append({"epoch": epoch, "split": split, "loss": loss,
                         **metrics_lib.compute_metrics(task, probs, targets),
                         "seconds": round(time.time() - start, 3), "lr": lr})
        write_csv(rows, out_dir / "metrics.csv", columns)

        train_row, val_row = rows[-2], rows[-1]
        score = _score(val_row, headline)
        checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                      "best_metric": max(score, best_score), "rng": rng_state(), "meta": meta}
        save_checkpoint(checkpoint, out_dir / "last.pt")
        if score > best_score or best_epoch == 0:  # epoch 1 always gives a best.pt
            best_score, best_epoch = score, epoch
            save_checkpoint(checkpoint, out_dir / "best.pt")
        print(f"{out_dir.name} epoch {epoch}/{args.epochs}: "
              f"train loss {train_row['loss']:.4f} {headline} {train_row.get(headline, math.nan):.4f} | "
              f"val loss {val_row['loss']:.4f} {headline} {val_row.get(headline, math.nan):.4f} | "
              f"{train_row['seconds'] + val_row['seconds']:.1f} s", flush=True)

    summary = {"epochs": args.epochs, "best_epoch": best_epoch,
               "best_val_score": best_score if math.isfinite(best_score) else None,
               "headline_metric": headline, "last_val": rows[-1], "seconds": round(time.time() - run_start, 2)}
    write_json(summary, out_dir / "summary.json")
    return summary


# --------------------------------------------------------------------------- shared script pieces

def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


def image_size(text: str) -> int:
    """argparse type: a side length DenseNet-121 can take (its stem and four poolings halve 5 times)."""
    value = int(text)
    if value < 32:
        raise ValueError(f"must be >= 32 px, got {value}")
    return value


def dropout_rate(text: str) -> float:
    """argparse type: a probability in [0, 1)."""
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"must be in [0, 1), got {value}")
    return value


def run_meta(data_meta: dict, args, *, init_description: str) -> dict:
    """What a checkpoint must carry so that later stages rebuild model and eval transforms."""
    return {
        "key": data_meta["key"], "domain": data_meta["domain"], "task": data_meta["task"],
        "classes": list(data_meta["classes"]),
        "headline_metric": data_meta.get("headline_metric",
                                         "accuracy" if data_meta["task"] == "multiclass" else "auroc"),
        "class_weights": data_meta.get("class_weights", "none"),
        "domains": data_meta.get("domains", {data_meta["key"]: data_meta["domain"]}),
        "arch": "densenet121", "num_outputs": len(data_meta["classes"]),
        "hidden_dim": args.hidden_dim, "dropout": args.dropout,
        "image_size": args.image_size, "transforms": {"domain": data_meta["domain"], "image_size": args.image_size},
        "init": str(args.init), "init_description": init_description,
        "source_checkpoint": None if args.init in ("random", "imagenet") else str(Path(args.init).resolve()),
        "manifests": [str(Path(p).resolve()) for p in
                      (args.manifests if hasattr(args, "manifests") else [args.manifest])],
    }


def train(df: pd.DataFrame, data_meta: dict, args) -> dict:
    """What every training script does once it has chosen its data: the train/val datasets,
    DenseNet-121 initialised from --init (random, ImageNet or a pretrain checkpoint), fit."""
    train_set, val_set = split_datasets(df, data_meta, args.image_size)
    model, init_description = models.create_model(len(data_meta["classes"]), args.init, hidden_dim=args.hidden_dim,
                                                  dropout=args.dropout, imagenet_weights=args.imagenet_weights)
    print(f"model: DenseNet-121, {init_description}")
    return fit(model, train_set, val_set, meta=run_meta(data_meta, args, init_description=init_description), args=args)


def split_datasets(df: pd.DataFrame, data_meta: dict, image_size: int) -> tuple[ImageDataset, ImageDataset]:
    """The train split with the augmenting chain and the val split with the eval chain."""
    sets = []
    for split, train in (("train", True), ("val", False)):
        part = df[df["split"] == split]
        if len(part) < 2:
            raise SystemExit(f"manifest {data_meta['key']}: the {split} split has {len(part)} images; "
                             f"need at least 2 (re-run prepare_data.py with other --val-frac/--test-frac)")
        sets.append(ImageDataset(part, task=data_meta["task"], classes=data_meta["classes"],
                                 image_size=image_size, train=train, domain=data_meta["domain"]))
    return sets[0], sets[1]


def add_model_args(parser, *, hidden_dim: int, dropout: float) -> None:
    """`# Model` flags of the training scripts; each script passes its defaults, so they stay
    visible (and editable) in its get_args_parser()."""
    group = parser.add_argument_group("model")
    group.add_argument("--imagenet-weights", type=str, default=None,
                       help="torchvision densenet121-a639ec97.pth for --init imagenet "
                            "(default: the torch hub cache, else download)")
    group.add_argument("--hidden-dim", type=positive_int, default=hidden_dim, help="width of the head's FC layer")
    group.add_argument("--dropout", type=dropout_rate, default=dropout, help="dropout in the head, in [0, 1)")


def add_optimisation_args(parser, *, epochs: int, batch_size: int, lr: float, weight_decay: float,
                          class_weights: tuple[str, ...] = ("auto", "balanced", "none")) -> None:
    """`# Optimisation` flags of the training scripts, with the script's defaults."""
    group = parser.add_argument_group("optimisation")
    group.add_argument("--epochs", type=positive_int, default=epochs, help="passes over the train split")
    group.add_argument("--batch-size", type=positive_int, default=batch_size, help="images per step (per process)")
    group.add_argument("--lr", type=float, default=lr, help="peak AdamW learning rate (cosine decay to 0)")
    group.add_argument("--weight-decay", type=float, default=weight_decay, help="AdamW weight decay")
    group.add_argument("--class-weights", type=str, default=class_weights[0], choices=list(class_weights),
                       help="cross-entropy class weights; auto = what the manifest recommends "
                            "(balanced for EyePACS, Messidor and DeepDRiD, as in the paper)")


def add_runtime_args(parser, *, workers: int = 2) -> None:
    """The `# Runtime` flags every script shares (not hyperparameters, so they live here once)."""
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", type=str, default="auto", help="auto | cpu | cuda | cuda:N")
    group.add_argument("--workers", type=int, default=workers, help="data-loading processes (0 = in the main process)")
    group.add_argument("--seed", type=int, default=0, help="fixes init, augmentation and data order")
    group.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                       help="bf16 autocast (fp16 on GPUs without bf16); about 2x faster on a recent CPU")
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                       help="channels-last memory format (faster convolutions on CPU and tensor cores)")


@contextlib.contextmanager
def user_errors():
    """Turns the errors that mean 'bad input' into one clear line instead of a traceback.

    Set STUDY_DEBUG=1 to see the traceback anyway.
    """
    try:
        yield
    except (ValueError, FileNotFoundError, ImageNetWeightsUnavailable) as err:
        if os.environ.get("STUDY_DEBUG"):
            raise
        message = str(err)
        if "Original Traceback" in message:  # re-raised from a DataLoader worker: keep the original's last line
            message = message.strip().splitlines()[-1].split(": ", 1)[-1]
        raise SystemExit(f"error: {message}") from None
