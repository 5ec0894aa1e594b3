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
import dataclasses
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

import monai.data.utils
import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
from monai.data import DataLoader
from tqdm import tqdm

import cache
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
    """bf16 where the hardware has it (CPUs with AVX-512 BF16/AMX, Ampere+ GPUs), fp16 on older
    GPUs, none (fp32) on CPUs without native bf16."""
    if not amp:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None  # emulated bf16 on an older CPU is slower than fp32
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


def set_rng_state(state: dict) -> None:
    """Restores what rng_state() saved (resume: dropout and every other draw continue as if never stopped)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


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


# --------------------------------------------------------------------------- distributed

@dataclasses.dataclass(frozen=True)
class Distributed:
    """Where this process sits in a torchrun job; a plain `python` run is rank 0 of 1."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """Rank 0, or a plain `python` run: the one process that prints and writes files."""
    return int(os.environ.get("RANK", "0")) == 0


def log(*values) -> None:
    """print() on the main process only: under torchrun every rank runs the same script."""
    if is_main_process():
        print(*values, flush=True)


def init_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """(Distributed, device) of this process; joins the torchrun job on the first call.

    torchrun sets WORLD_SIZE, RANK and LOCAL_RANK: NCCL on GPUs (one GPU per process,
    cuda:LOCAL_RANK), gloo on CPUs. Without them there is no process group: one process.
    """
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world_size, local_rank), device


def gather(obj, info: Distributed) -> list:
    """`obj` of every process, in rank order (a one-element list in a single process)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------- data

def encode_targets(df: pd.DataFrame, task: str, classes: list[str]) -> np.ndarray:
    """Manifest rows -> int class indices (multiclass) or a 0/1 float matrix (multilabel).

    Multilabel rows with a `known_labels` column (`|`-joined names; see mask_unknown_labels)
    get NaN for every other label: "not annotated", which the loss then ignores.
    """
    if task == "multiclass":
        labels = df["label"].to_numpy(dtype=np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"label index out of range 0..{len(classes) - 1}")
        return labels
    index = {name: i for i, name in enumerate(classes)}

    def indices(joined):
        for name in filter(None, str(joined).split("|")):
            if name not in index:
                raise ValueError(f"label {name!r} is not one of the manifest's classes")
            yield index[name]

    targets = np.zeros((len(df), len(classes)), dtype=np.float32)
    if "known_labels" in df.columns:
        targets[:] = np.nan
        for row, joined in enumerate(df["known_labels"].fillna("")):
            targets[row, list(indices(joined))] = 0.0
    for row, joined in enumerate(df["labels"].fillna("")):
        targets[row, list(indices(joined))] = 1.0
    return targets


def mask_unknown_labels(df: pd.DataFrame, data_meta: dict) -> pd.DataFrame:
    """--label-mask for the aggregated set: each row knows only its own dataset's labels.

    A ChestX-ray14 image says nothing about `breakhis/malignant`; without the mask (the
    paper's choice) it counts as a negative for it, with the mask the loss ignores it.
    """
    groups = data_meta["label_groups"]
    return df.assign(known_labels=df["source"].map(lambda source: "|".join(groups[source])))


class ImageDataset(torch.utils.data.Dataset):
    """Images from a manifest frame with the transform chain of each row's domain.

    `df` needs columns image and label/labels, and either a `domain` column (the aggregated
    "All" set mixes CXR, histology and fundus rows) or one `domain` for every row.

    `cache_dirs`: folders (the manifests' folders) whose ``cache/`` may hold preprocessing
    caches (cache.py). Rows found in a valid cache are read from its memory map and go through
    the cached chain (the same augmentation, without decoding); the others are read from disk.
    `n_cached` says how many rows come from a cache.
    """

    def __init__(self, df: pd.DataFrame, *, task: str, classes: list[str], image_size: int,
                 train: bool, domain: str | None = None, cache_dirs: list | None = None):
        self.images = df["image"].astype(str).tolist()
        self.targets = encode_targets(df, task, classes)
        domains = df["domain"].astype(str).tolist() if "domain" in df.columns else [domain] * len(df)
        if any(d is None for d in domains):
            raise ValueError("ImageDataset needs a `domain` column or the domain argument")
        self.domain_names = sorted(set(domains))
        # The loader's half of each chain (uint8 pixels + the image's augmentation drawn as numbers);
        # _run_epoch applies the other half, batched, on the training device (transforms.apply_tail).
        # Batches stack: every image has image_size x image_size pixels, and grey cxr images get 3
        # channels when the set also holds colour domains (the aggregated "All" set).
        channels = 1 if self.domain_names == ["cxr"] else 3
        # A list, not a dict: monai.data.DataLoader seeds the Randomizable objects it finds in
        # lists and attributes, which makes augmentation reproducible for a given --seed.
        self.chains, self.cached_chains = ([transforms.loader_transforms(d, image_size=image_size, train=train,
                                                                         cached=cached, channels=channels)
                                            for d in self.domain_names] for cached in (False, True))
        position = {d: i for i, d in enumerate(self.domain_names)}
        self.chain_of = np.array([position[d] for d in domains], dtype=np.int64)
        self.cached, stale = cache.find_cached(self.images, domains, image_size=image_size, cache_dirs=cache_dirs)
        for line in stale:
            log(line)  # once per job, not per torchrun process
        self.n_cached = len(self.cached)
        self._pixels = {}  # memmaps, opened on first use in each process (see __getstate__)

    def __getstate__(self):
        # Loader workers get the dataset without open memmaps (pickling one copies its data) and
        # open their own: the pages stay in the OS page cache once, shared by all processes.
        return {**self.__dict__, "_pixels": {}}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        """(uint8 (C, S, S) pixels, float32 (8,) augmentation tail, target); see transforms.apply_tail."""
        location = self.cached.get(i)
        try:
            if location is None:
                item = self.chains[self.chain_of[i]]({"image": self.images[i]})
            else:
                if location[0] not in self._pixels:
                    self._pixels[location[0]] = cache.open_pixels(location[0])
                pixels = cache.read_cached(self._pixels[location[0]], location)
                item = self.cached_chains[self.chain_of[i]]({"image": pixels})
        except Exception as err:
            raise ValueError(transforms.read_error(self.images[i], err)) from None
        return item["image"], item[transforms.TAIL_KEY], torch.as_tensor(self.targets[i])


def make_loader(dataset: ImageDataset, *, batch_size: int, train: bool, workers: int, seed: int,
                device: torch.device, sampler=None) -> DataLoader:
    """Seeded shuffling (data order is fixed by --seed); training drops a last batch of one,
    which BatchNorm in the head cannot normalise.

    A dataset read entirely from a preprocessing cache is loaded in one background thread
    whatever `workers` says (cache.ThreadLoader: a cached item is a memmap row and a few random
    draws, ~25 us, less than handing it over from a worker process; on 2 cores the thread gave
    22,000 images/s, 2 worker processes 11,500, and a GPU takes a few thousand); otherwise
    `workers` processes decode (0 = in this process).

    With a `sampler` (fit passes a DistributedSampler, also in a single process: its order is a
    function of seed and epoch, so a resumed run replays it) the sampler decides the order, and
    workers restart every epoch so that fit can reseed augmentation per epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    drop_last = train and (len(sampler) if sampler is not None else len(dataset)) % batch_size == 1
    settings = dict(batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler, generator=generator,
                    drop_last=drop_last, pin_memory=device.type == "cuda")
    if getattr(dataset, "n_cached", 0) == len(dataset) > 0:
        # every row cached: one thread outruns worker processes (bench/bench_loader.py)
        return cache.ThreadLoader(dataset, num_workers=0, **settings)
    return DataLoader(dataset, num_workers=workers, persistent_workers=workers > 0 and sampler is None, **settings)


def balanced_class_weights(targets: np.ndarray, num_classes: int) -> list[float]:
    """sklearn's 'balanced' weights n / (C * n_c); a class absent from training gets weight 0."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.round(6).tolist()


class MultiLabelBCE(nn.Module):
    """Binary cross-entropy with logits over the annotated labels: NaN targets (not annotated,
    see mask_unknown_labels) are ignored. Without NaN it equals nn.BCEWithLogitsLoss()."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(targets)
        losses = nn.functional.binary_cross_entropy_with_logits(logits, targets.nan_to_num(0.0), reduction="none")
        return (losses * known).sum() / known.sum().clamp(min=1)


def make_criterion(task: str, class_weights: list[float] | None) -> nn.Module:
    if task == "multilabel":
        return MultiLabelBCE()
    weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
    return nn.CrossEntropyLoss(weight=weight)


def to_probs(logits: torch.Tensor, task: str) -> torch.Tensor:
    logits = logits.float()
    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=1)


# --------------------------------------------------------------------------- loops

class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


_NO_BAD_STEP = torch.iinfo(torch.int64).max


def _check_finite(first_bad: torch.Tensor, dist_info: Distributed) -> None:
    """Host sync: raise NonFiniteLoss when a step (on any process) had a non-finite loss."""
    if dist_info.enabled:
        dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)  # every rank stops at the same check
    step = int(first_bad.item())
    if step != _NO_BAD_STEP:
        raise NonFiniteLoss(f"the training loss became NaN or infinite at step {step}")


def _run_epoch(model, loader, criterion, device, *, task, amp_dtype, channels_last, optimizer=None,
               scheduler=None, scaler=None, desc="", log_every=50, first_step=0, dist_info=Distributed()):
    """One pass over `loader`; trains when an optimizer is given. Returns (mean loss, probs, targets).

    The loader yields (uint8 images, augmentation tails, targets) (ImageDataset); each batch is
    augmented and normalised on `device` by transforms.apply_tail before the forward pass.

    Losses and logits stay on the device: the host waits for it only every `log_every` training
    steps, to check that the loss is finite (steps are numbered from `first_step` + 1) and to
    refresh the progress bar. Under torchrun each process sees a shard; the predictions of all
    processes are gathered in dataset order, each sample once (the sampler's padding dropped),
    so the metrics are those of the whole split. An evaluation pass's loss is the criterion over
    the whole split at once.
    """
    training = optimizer is not None
    model.train(training)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    first_bad = torch.full((), _NO_BAD_STEP, device=device, dtype=torch.int64)
    seen = 0
    all_logits, all_targets = [], []
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None if dist_info.is_main_process else True)
    with torch.set_grad_enabled(training):
        for step, (images, tails, targets) in enumerate(bar, start=1):
            # uint8 from the loader; augmentation and normalisation run here, batched, on the device
            images = transforms.apply_tail(images.to(device, non_blocking=True), tails, memory_format=memory_format)
            targets = targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                logits = model(images)
            loss = criterion(logits.float(), targets)
            if training:
                bad = ~torch.isfinite(loss) & (first_bad == _NO_BAD_STEP)
                first_bad = torch.where(bad, first_step + step, first_bad)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if step % log_every == 0:
                    _check_finite(first_bad, dist_info)
                    if not bar.disable:
                        bar.set_postfix(loss=f"{loss.item():.4f}")
            total_loss += loss.detach().double() * len(images)
            seen += len(images)
            all_logits.append(logits.detach().float())
            all_targets.append(targets.detach())
    if training:
        _check_finite(first_bad, dist_info)
    logits = torch.cat(all_logits).cpu() if all_logits else torch.zeros(0)
    targets = torch.cat(all_targets).cpu() if all_targets else torch.zeros(0)
    if dist_info.enabled:
        order = torch.as_tensor(list(loader.sampler)[:seen], dtype=torch.int64)
        shards = gather((order, logits, targets, float(total_loss.item()), seen), dist_info)
        order = torch.cat([shard[0] for shard in shards])
        _, first = np.unique(order.numpy(), return_index=True)  # sorted by index, padding duplicates dropped
        logits = torch.cat([shard[1] for shard in shards])[first]
        targets = torch.cat([shard[2] for shard in shards])[first]
        total_loss = torch.tensor(sum(shard[3] for shard in shards), dtype=torch.float64)
        seen = sum(shard[4] for shard in shards)
    if seen == 0:
        raise RuntimeError(f"{desc}: the loader produced no batches")
    if training:
        mean_loss = float(total_loss.item() / seen)
    else:
        with torch.no_grad():
            mean_loss = float(criterion(logits.to(device), targets.to(device)).item())
    return mean_loss, to_probs(logits, task).numpy(), targets.numpy()


@torch.no_grad()
def predict(model, loader, criterion, device, *, task, amp=True, channels_last=True, desc="eval"):
    """Evaluation pass: (loss over the whole loader, probs (N, C), targets) in the loader's order."""
    return _run_epoch(model, loader, criterion, device, task=task, amp_dtype=autocast_dtype(device, amp),
                      channels_last=channels_last, desc=desc)


def _score(row: dict, headline: str) -> float:
    """Model-selection score: the validation headline metric; -inf where it is undefined (NaN)."""
    value = row.get(headline, math.nan)
    return value if value is not None and math.isfinite(value) else -math.inf


# What must not change between a run and its resumption: anything that changes the result.
# Runtime settings (--device, --workers, --compile, --log-every) may change.
RESUME_SETTINGS = ("epochs", "batch_size", "lr", "weight_decay", "seed", "class_weights", "image_size",
                   "hidden_dim", "dropout", "label_mask", "train_fraction", "sync_bn")


def run_fingerprint(meta: dict, args, world_size: int) -> dict:
    """The settings a checkpoint in `args.out` must share with this run to be resumed."""
    settings = vars(args)
    return {"key": meta["key"], "task": meta["task"], "classes": list(meta["classes"]),
            "init": meta["source_checkpoint"] or meta["init"], "world_size": world_size,
            **{name: settings.get(name) for name in RESUME_SETTINGS}}


def resume_checkpoint(out_dir: Path, fingerprint: dict, resume: bool) -> dict | None:
    """The checkpoint to resume from (out_dir/last.pt of this very run), or None to start afresh.

    A last.pt of another run (other data, init or hyperparameters) is refused rather than
    overwritten or silently continued; --no-resume starts over in the folder.
    """
    path = out_dir / "last.pt"
    if not path.exists():
        return None
    if not resume:
        log(f"{out_dir}: --no-resume: starting over; the existing checkpoints will be replaced")
        return None
    checkpoint = models.load_checkpoint(path)
    saved = checkpoint.get("resume")
    if not isinstance(saved, dict):
        raise SystemExit(f"{path}: this checkpoint holds no resume information (not written by a training script "
                         f"of this kit); choose another --out, or pass --no-resume to start over in {out_dir}")
    changed = [f"{name} {saved.get(name)!r} -> {value!r}" for name, value in fingerprint.items()
               if saved.get(name) != value]
    if changed:
        raise SystemExit(f"{out_dir} holds the checkpoint of a different run ({'; '.join(changed)}); choose another "
                         f"--out, or pass --no-resume to start over in it")
    return checkpoint


def _plain(row: dict) -> dict:
    """A metrics row with numpy scalars turned into Python numbers (checkpoints hold plain values)."""
    return {key: value.item() if isinstance(value, np.generic) else value for key, value in row.items()}


def _summary(rows: list[dict], *, epochs: int, best_epoch: int, best_score: float, headline: str,
             seconds: float, meta: dict) -> dict:
    return {"epochs": epochs, "best_epoch": best_epoch,
            "best_val_score": best_score if math.isfinite(best_score) else None,
            "headline_metric": headline, "last_val": rows[-1], "seconds": round(seconds, 2),
            "skipped_images": meta.get("skipped_images", 0)}


def fit(model: nn.Module, train_set: ImageDataset, val_set: ImageDataset, *, meta: dict, args) -> dict:
    """Trains `model` and writes the run folder `args.out`; resumes it when it holds this run's last.pt.

    Reads from `args`: out, epochs, batch_size, lr, weight_decay, workers, seed, device, amp,
    channels_last, compile, log_every, resume, sync_bn, class_weights ('auto' | 'balanced' |
    'none'). `meta` describes model and data and travels inside every checkpoint so
    downstream scripts can rebuild both. Under torchrun: DistributedDataParallel, rank 0 writes.
    """
    dist_info, device = init_distributed(args.device)
    main_process = dist_info.is_main_process
    out_dir = Path(args.out)
    amp_dtype = autocast_dtype(device, args.amp)
    task, headline = meta["task"], meta["headline_metric"]
    fingerprint = run_fingerprint(meta, args, dist_info.world_size)
    resume_from = resume_checkpoint(out_dir, fingerprint, args.resume)

    # --- loss: the paper balanced EyePACS, Messidor and DeepDRiD with class weights
    weighting = meta.get("class_weights", "none") if args.class_weights == "auto" else args.class_weights
    class_weights = (balanced_class_weights(train_set.targets, len(meta["classes"]))
                     if weighting == "balanced" and task == "multiclass" else None)
    meta = {**meta, "loss_weights": class_weights}
    criterion = make_criterion(task, class_weights).to(device)

    if main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("summary.json",) if resume_from else ("summary.json", "best.pt"):
            (out_dir / stale).unlink(missing_ok=True)  # never mistaken for this run's
        write_json({"args": vars(args), "meta": meta, "versions": library_versions(), "git_sha": git_sha(),
                    "command": sys.argv, "device": str(device), "world_size": dist_info.world_size,
                    "resumed_from_epoch": resume_from["epoch"] if resume_from else None,
                    "started": datetime.datetime.now().isoformat(timespec="seconds")}, out_dir / "args.json")

    # --- data: the order is a function of (seed, epoch) on any number of processes, so a resumed
    # run replays it; under torchrun each process takes every world_size-th image
    samplers = {split: torch.utils.data.DistributedSampler(
        dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=split == "train", seed=args.seed)
        for split, dataset in (("train", train_set), ("val", val_set))}
    train_loader = make_loader(train_set, batch_size=args.batch_size, train=True, workers=args.workers,
                               seed=args.seed, device=device, sampler=samplers["train"])
    val_loader = make_loader(val_set, batch_size=args.batch_size, train=False, workers=args.workers,
                             seed=args.seed, device=device, sampler=samplers["val"])
    steps_per_epoch = len(train_loader)
    run_name = "/".join(out_dir.parts[-3:])  # e.g. shenzhen/Domain_RI/seed0
    log(f"{run_name}: {len(train_set)} train / {len(val_set)} val images, {len(meta['classes'])} {task} outputs, "
        f"{args.epochs} epochs x {steps_per_epoch} steps of {args.batch_size} images x {dist_info.world_size} "
        f"process(es) on {device}{f' with {amp_dtype} autocast' if amp_dtype else ''}; "
        f"class weights: {class_weights or 'none'}")

    # --- model and optimisation: AdamW with a cosine decay over all steps
    if args.sync_bn and dist_info.enabled:
        if device.type != "cuda":
            raise SystemExit("--sync-bn needs GPUs: PyTorch's SyncBatchNorm has no CPU kernel")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same state_dict keys as BatchNorm
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    # fused kernels on CUDA; foreach on the CPU halves the step of DenseNet-121's 364 tensors (bench/)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                  **({"fused": True} if device.type == "cuda" else {"foreach": True}))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(args.epochs * steps_per_epoch, 1))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    rows, best_score, best_epoch, start_epoch, seconds_before = [], -math.inf, 0, 1, 0.0
    if resume_from:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        scheduler.load_state_dict(resume_from["scheduler"])
        scaler.load_state_dict(resume_from["scaler"])
        rows, best_score = list(resume_from["history"]), resume_from["best_metric"]
        best_epoch, start_epoch = resume_from["best_epoch"], resume_from["epoch"] + 1
        seconds_before = resume_from.get("seconds", 0.0)
        rng = resume_from["rng"]
        set_rng_state(rng[dist_info.rank] if dist_info.rank < len(rng) else rng[0])
        log(f"{run_name}: resuming after epoch {resume_from['epoch']} from {out_dir / 'last.pt'}")
    elif dist_info.enabled:
        seed_everything(args.seed + dist_info.rank)  # one dropout stream per process; weights come from rank 0
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist_info.enabled else model
    if args.compile:
        net = torch.compile(net)
    columns = ["epoch", "split", "loss", *metrics_lib.metric_names(task), "seconds", "lr"]

    # --- epochs
    run_start = time.time()
    for epoch in range(start_epoch, args.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        # augmentation: one stream per (seed, epoch, process), as reproducible as the data order
        augment_seed = (args.seed * 1_000_003 + epoch * 1009 + dist_info.rank) % 2**31
        train_loader.generator.manual_seed(augment_seed)  # workers derive their seeds from it
        if args.workers == 0:
            monai.data.utils.set_rnd(train_set, seed=augment_seed)
        for sampler in samplers.values():
            sampler.set_epoch(epoch)
        epoch_rows = []
        for split, loader in (("train", train_loader), ("val", val_loader)):
            start = time.time()
            if split == "val" and dist_info.enabled:
                for buffer in model.buffers():  # BatchNorm statistics of rank 0, those its checkpoint holds
                    dist.broadcast(buffer, src=0)
            try:
                loss, probs, targets = _run_epoch(
                    net if split == "train" else model, loader, criterion, device, task=task, amp_dtype=amp_dtype,
                    channels_last=args.channels_last, desc=f"epoch {epoch} {split}", log_every=args.log_every,
                    first_step=(epoch - 1) * steps_per_epoch, dist_info=dist_info,
                    **({"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler} if split == "train" else {}))
            except NonFiniteLoss as err:
                raise SystemExit(f"{out_dir}: {err} (epoch {epoch}); stopping. The last good checkpoint is kept: "
                                 f"{out_dir / 'last.pt'} (epoch {epoch - 1}); try a lower --lr") from None
            if not math.isfinite(loss):
                raise SystemExit(f"{out_dir}: the {split} loss is {loss} at epoch {epoch}; stopping. The last good "
                                 f"checkpoint is kept: {out_dir / 'last.pt'} (epoch {epoch - 1})")
            epoch_rows.append(_plain({"epoch": epoch, "split": split, "loss": loss,
                                      **metrics_lib.compute_metrics(task, probs, np.nan_to_num(targets)),
                                      "seconds": round(time.time() - start, 3), "lr": lr}))
        rows += epoch_rows
        train_row, val_row = epoch_rows
        score = _score(val_row, headline)
        improved = score > best_score or best_epoch == 0  # epoch 1 always gives a best.pt
        if improved:
            best_score, best_epoch = score, epoch
        rng = gather(rng_state(), dist_info)
        if main_process:
            checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                          "best_metric": best_score, "best_epoch": best_epoch, "history": rows, "rng": rng,
                          "seconds": seconds_before + time.time() - run_start, "resume": fingerprint, "meta": meta}
            # metrics.csv follows the checkpoint: after a kill it never holds an epoch last.pt lacks
            save_checkpoint(checkpoint, out_dir / "last.pt")
            write_csv(rows, out_dir / "metrics.csv", columns)
            if improved:
                save_checkpoint(checkpoint, out_dir / "best.pt")
        log(f"{run_name} epoch {epoch}/{args.epochs}: "
            f"train loss {train_row['loss']:.4f} {headline} {train_row.get(headline, math.nan):.4f} | "
            f"val loss {val_row['loss']:.4f} {headline} {val_row.get(headline, math.nan):.4f} | "
            f"{train_row['seconds'] + val_row['seconds']:.1f} s")

    summary = _summary(rows, epochs=args.epochs, best_epoch=best_epoch, best_score=best_score, headline=headline,
                       seconds=seconds_before + time.time() - run_start, meta=meta)
    if main_process:
        write_csv(rows, out_dir / "metrics.csv", columns)  # also for a run that was complete already
        write_json(summary, out_dir / "summary.json")
    if dist_info.enabled:
        dist.barrier()  # no process leaves before rank 0 has written the run
    return summary


# --------------------------------------------------------------------------- shared script pieces

def number(kind: type, *, at_least=None, above=None, at_most=None, below=None, unit: str = ""):
    """An argparse type: a finite `kind` (int or float) within the given bounds; outside them,
    argparse prints e.g. `argument --epochs: must be >= 1, got 0`."""
    bounds = [(at_least, ">=", lambda v, b: v >= b), (above, ">", lambda v, b: v > b),
              (at_most, "<=", lambda v, b: v <= b), (below, "<", lambda v, b: v < b)]
    wanted = " and ".join(f"{sign} {bound}{unit}" for bound, sign, _ in bounds if bound is not None)

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not math.isfinite(value) or not all(ok(value, bound) for bound, _, ok in bounds if bound is not None):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value

    return parse


positive_int = number(int, at_least=1)
non_negative_int = number(int, at_least=0)
positive_float = number(float, above=0)
non_negative_float = number(float, at_least=0)
fraction = number(float, above=0, at_most=1)  # a share of a split
dropout_rate = number(float, at_least=0, below=1)
image_size = number(int, at_least=32, unit=" px")  # DenseNet-121's stem and four poolings halve 5 times


def existing_file(text: str) -> str:
    """argparse type: a path to a file that exists (checked before any work starts)."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text


def init_source(text: str) -> str:
    """argparse type for --init: random | imagenet | an existing checkpoint file."""
    return text if text in ("random", "imagenet") else existing_file(text)


def manifest_paths(args) -> list[str]:
    """--manifest of pretrain_source.py / finetune_target.py, or --manifests of pretrain_all.py."""
    return args.manifests if hasattr(args, "manifests") else [args.manifest]


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
        "manifests": [str(Path(p).resolve()) for p in manifest_paths(args)],
    }


class _ReadCheck(torch.utils.data.Dataset):
    """Item i of an ImageDataset, reduced to '' (readable) or the one-line reason it is not."""

    def __init__(self, dataset: ImageDataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> str:
        try:
            self.dataset[self.indices[i]]
        except ValueError as err:
            return str(err)
        return ""


def find_unreadable(df: pd.DataFrame, data_meta: dict, *, image_size: int, workers: int, cache_dirs: list,
                    dist_info: Distributed = Distributed()) -> pd.DataFrame:
    """--skip-bad: reads every image of `df` once through its eval chain (in parallel; under
    torchrun each process a share; rows in a preprocessing cache are quick) and returns the
    rows that cannot be read, with a `reason` column."""
    dataset = ImageDataset(df, task=data_meta["task"], classes=data_meta["classes"], image_size=image_size,
                           train=False, domain=data_meta["domain"], cache_dirs=cache_dirs)
    mine = list(range(dist_info.rank, len(df), dist_info.world_size))
    loader = torch.utils.data.DataLoader(_ReadCheck(dataset, mine), batch_size=None, num_workers=workers)
    reasons = tqdm(loader, desc="checking images", leave=False, disable=None if dist_info.is_main_process else True)
    found = sorted((i, reason) for shard in gather(list(zip(mine, reasons)), dist_info) for i, reason in shard if reason)
    bad = df.iloc[[i for i, _ in found]].copy()
    bad["reason"] = [reason for _, reason in found]
    return bad


def train(df: pd.DataFrame, data_meta: dict, args) -> dict:
    """What every training script does once it has chosen its data: the train/val datasets,
    DenseNet-121 initialised from --init (random, ImageNet or a pretrain checkpoint), fit."""
    dist_info, _ = init_distributed(args.device)
    out_dir = Path(args.out)
    # a different run's checkpoint in --out is refused now, not after the image check and model set-up
    if args.resume:
        resume_checkpoint(out_dir, run_fingerprint(run_meta(data_meta, args, init_description=""), args,
                                                   dist_info.world_size), resume=True)
    df = df[df["split"].isin(["train", "val"])]
    cache_dirs = sorted({str(Path(m).parent) for m in manifest_paths(args)})  # where prepare_data --cache puts it
    if args.skip_bad:
        bad = find_unreadable(df, data_meta, image_size=args.image_size, workers=args.workers,
                              cache_dirs=cache_dirs, dist_info=dist_info)
        if len(bad) and dist_info.is_main_process:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_csv(bad.to_dict("records"), out_dir / "skipped.csv", ["image", "split", "reason"])
            log(f"--skip-bad: skipping {len(bad)} unreadable image(s) of {len(df)}; the list: {out_dir / 'skipped.csv'}")
        df = df.drop(index=bad.index)
        data_meta = {**data_meta, "skipped_images": len(bad)}
    train_set, val_set = split_datasets(df, data_meta, args.image_size, cache_dirs=cache_dirs)
    if train_set.n_cached or val_set.n_cached:
        log(f"preprocessing cache: {train_set.n_cached} of {len(train_set)} train and {val_set.n_cached} of "
            f"{len(val_set)} val images")
    model, init_description = models.create_model(len(data_meta["classes"]), args.init, hidden_dim=args.hidden_dim,
                                                  dropout=args.dropout, imagenet_weights=args.imagenet_weights)
    log(f"model: DenseNet-121, {init_description}")
    meta = run_meta(data_meta, args, init_description=init_description)
    meta["skipped_images"] = data_meta.get("skipped_images", 0)
    return fit(model, train_set, val_set, meta=meta, args=args)


def split_datasets(df: pd.DataFrame, data_meta: dict, image_size: int,
                   cache_dirs: list | None = None) -> tuple[ImageDataset, ImageDataset]:
    """The train split with the augmenting chain and the val split with the eval chain; images
    come from a preprocessing cache in `cache_dirs` where one is valid (see cache.py)."""
    sets = []
    for split, train in (("train", True), ("val", False)):
        part = df[df["split"] == split]
        if len(part) < 2:
            raise SystemExit(f"manifest {data_meta['key']}: the {split} split has {len(part)} images; "
                             f"need at least 2 (re-run prepare_data.py with other --val-frac/--test-frac)")
        sets.append(ImageDataset(part, task=data_meta["task"], classes=data_meta["classes"],
                                 image_size=image_size, train=train, domain=data_meta["domain"],
                                 cache_dirs=cache_dirs))
    return sets[0], sets[1]


def add_model_args(parser, *, hidden_dim: int, dropout: float) -> None:
    """`# Model` flags of the training scripts; each script passes its defaults, so they stay
    visible (and editable) in its get_args_parser()."""
    group = parser.add_argument_group("model")
    group.add_argument("--imagenet-weights", type=existing_file, default=None,
                       help="torchvision densenet121-a639ec97.pth for --init imagenet "
                            "(default: the torch hub cache, else download)")
    group.add_argument("--hidden-dim", type=positive_int, default=hidden_dim, help="width of the head's FC layer")
    group.add_argument("--dropout", type=dropout_rate, default=dropout, help="dropout in the head, in [0, 1)")


def add_optimisation_args(parser, *, epochs: int, batch_size: int, lr: float, weight_decay: float,
                          class_weights: tuple[str, ...] = ("auto", "balanced", "none")) -> None:
    """`# Optimisation` flags of the training scripts, with the script's defaults."""
    group = parser.add_argument_group("optimisation")
    group.add_argument("--epochs", type=positive_int, default=epochs, help="passes over the train split")
    group.add_argument("--batch-size", type=positive_int, default=batch_size,
                       help="images per step PER PROCESS: under torchrun the global batch is N x this. "
                            "The learning rate is not scaled for you; scale --lr linearly with the global batch")
    group.add_argument("--lr", type=positive_float, default=lr, help="peak AdamW learning rate (cosine decay to 0)")
    group.add_argument("--weight-decay", type=non_negative_float, default=weight_decay, help="AdamW weight decay")
    group.add_argument("--class-weights", type=str, default=class_weights[0], choices=list(class_weights),
                       help="cross-entropy class weights; auto = what the manifest recommends "
                            "(balanced for EyePACS, Messidor and DeepDRiD, as in the paper)")


def add_checkpointing_args(parser, *, out_example: str) -> None:
    """`# Checkpointing` flags of the training scripts."""
    group = parser.add_argument_group("checkpointing")
    group.add_argument("--out", type=str, required=True, help=f"run folder, e.g. {out_example}")
    group.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                       help="continue from OUT/last.pt when it holds this run (same data, init and "
                            "hyperparameters); --no-resume starts over in OUT")
    group.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=False,
                       help="decode every train/val image first and leave out those that cannot be read "
                            "(listed in OUT/skipped.csv, counted in summary.json); default: stop at the first")


def default_workers() -> int:
    """--workers default: the cores this process may use, shared among the training processes
    torchrun starts on this machine, at most 8 (each worker holds its own MONAI and transforms).
    Decoding full-size images takes ~10 ms of a core each; a fully cached set uses one thread."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def add_runtime_args(parser, *, workers: int | None = None) -> None:
    """The `# Runtime` flags every script shares (not hyperparameters, so they live here once)."""
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", type=str, default="auto", help="auto | cpu | cuda | cuda:N (torchrun: one GPU "
                                                                   "per process, cuda:LOCAL_RANK)")
    group.add_argument("--workers", type=non_negative_int, default=default_workers() if workers is None else workers,
                       help="image-decoding processes per training process (0 = in the main process; default: "
                            "the cores per training process, at most 8). A set read wholly from the "
                            "preprocessing cache loads in one thread instead")
    group.add_argument("--seed", type=int, default=0, help="fixes init, augmentation and data order")
    group.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                       help="bf16 autocast (fp16 on GPUs without bf16; off on CPUs without native bf16): "
                            "1.5-2x faster on a recent CPU, more on tensor cores")
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                       help="channels-last memory format (faster convolutions on CPU and tensor cores)")
    group.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                       help="torch.compile the model (minutes of compilation; pays off on long GPU runs)")
    group.add_argument("--log-every", type=positive_int, default=50,
                       help="steps between loss checks (NaN stops the run) and progress-bar updates; "
                            "the host waits for the device only then")
    group.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=False,
                       help="under torchrun on GPUs: BatchNorm statistics over the global batch")


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
