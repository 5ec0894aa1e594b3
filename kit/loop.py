"""The training loop of the study, written once: every training script builds its own recipe
(model, loss, optimizer, schedule) and hands it to ``fit``; ``predict`` is the evaluation pass.

``fit`` runs the epochs with AMP, DistributedDataParallel under torchrun, a progress bar and one
line per epoch, writes the run folder (runs.py: args.json, metrics.csv, last.pt every epoch, the
last one without what only resuming needs, best.pt on the best validation headline metric,
summary.json), resumes from last.pt, and stops at the first NaN or infinite loss. Each batch
arrives as uint8 pixels plus its augmentation as numbers (data.ImageDataset) and is augmented and
normalised on the device (transforms.apply_tail) just before the forward pass.
"""
import dataclasses
import datetime
import math
import sys
import time
from pathlib import Path

import monai.data.utils
import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

import transforms

from . import files, losses, metrics, recipe, runs
from .checkpoints import save_checkpoint
from .runtime import Distributed, autocast_dtype, gather, log, rng_state, seed_everything, set_rng_state


def warmup_cosine(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int = 0):
    """Learning rate per step: linear warm-up from ~0 over `warmup_steps`, then cosine decay to 0
    at `total_steps` (the scheduler is stepped after every optimizer step)."""
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup_steps, 1))
    if warmup_steps <= 0:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / (warmup_steps + 1), total_iters=warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


def fast_kernels(device: torch.device) -> dict:
    """Optimizer keyword arguments for the device: fused kernels on CUDA; on the CPU the `foreach`
    implementation, which halves the step over DenseNet-121's 364 tensors (bench/)."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


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


def forward(model, images, tails, device, *, amp_dtype, memory_format=torch.contiguous_format):
    """A loader's batch -> logits: uint8 images and their tails (data.ImageDataset) are augmented and
    normalised here, batched, on `device` (transforms.apply_tail), then the model runs under autocast
    (`amp_dtype`; None = fp32). The one forward of training, evaluation and predict.py."""
    images = transforms.apply_tail(images.to(device, non_blocking=True), tails, memory_format=memory_format)
    with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        return model(images)


def run_epoch(model, loader, criterion, device, *, task, amp_dtype, channels_last, optimizer=None,
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
            logits = forward(model, images, tails, device, amp_dtype=amp_dtype, memory_format=memory_format)
            targets = targets.to(device, non_blocking=True)
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
    return mean_loss, losses.to_probs(logits, task).numpy(), targets.numpy()


@torch.no_grad()
def predict(model, loader, criterion, device, *, task, amp=True, channels_last=True, desc="eval"):
    """Evaluation pass: (loss over the whole loader, probs (N, C), targets) in the loader's order."""
    return run_epoch(model, loader, criterion, device, task=task, amp_dtype=autocast_dtype(device, amp),
                      channels_last=channels_last, desc=desc)


def _score(row: dict, headline: str) -> float:
    """Model-selection score: the validation headline metric; -inf where it is undefined (NaN)."""
    value = row.get(headline, math.nan)
    return value if value is not None and math.isfinite(value) else -math.inf



BEST_KEYS = ("model", "meta", "epoch", "best_metric", "best_epoch", "trained_on")  # what best.pt holds
# What only continuing the training needs (AdamW's two moments make the optimizer twice the model): a finished
# run's last.pt keeps the rest, 31 MB instead of 91 MB for DenseNet-121
RESUME_ONLY = ("optimizer", "scheduler", "scaler", "rng")


def finished(checkpoint: dict) -> dict:
    """last.pt of a run whose last epoch is done: the model, its record and history, `finished` true; never
    trained further (a rerun of its command says it is finished; --no-resume trains it again)."""
    return {key: value for key, value in checkpoint.items() if key not in RESUME_ONLY} | {"finished": True}


@dataclasses.dataclass(frozen=True)
class Settings:
    """How fit runs the recipe: its length and seed, and the runtime switches (the scripts' flags of these
    names; `of` picks them from the parsed arguments)."""
    epochs: int
    seed: int
    batch_size: int
    workers: int = 0
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    log_every: int = 50
    sync_bn: bool = False

    @classmethod
    def of(cls, arguments: dict) -> "Settings":
        return cls(**{field.name: arguments[field.name] for field in dataclasses.fields(cls) if field.name in arguments})


def fit(model: nn.Module, train_loader, val_loader, *, criterion: nn.Module, optimizer: torch.optim.Optimizer,
        scheduler, meta: dict, run: runs.Run, settings: Settings, device: torch.device, dist_info: Distributed) -> dict:
    """Trains `model` for settings.epochs with the recipe it is given and writes the run folder.

    `run` is the opened run folder (runs.open_run): when it holds this run's last.pt, its model,
    optimizer, scheduler, scaler, RNG states and history are restored and training continues after
    its epoch; once the last epoch is done, last.pt is `finished`: what only resuming needs is left
    out, and a rerun trains nothing. `meta` describes model and data and travels in every
    checkpoint, so that later stages rebuild both; so do the run's fingerprint, the recipe it trains
    with (read off the model, optimizer, scheduler and criterion: kit/recipe.py) and its record of
    the training images and patients (for evaluate.py's overlap check). `device` and `dist_info` as
    the script set them up (runtime.init_distributed). Under torchrun: DistributedDataParallel; rank 0
    writes. Returns what summary.json holds.
    """
    out_dir, main_process = run.out_dir, dist_info.is_main_process
    amp_dtype = autocast_dtype(device, settings.amp)
    task, headline = meta["task"], meta["headline_metric"]
    domains = set((meta.get("domains") or {}).values()) or {meta["domain"]}  # an aggregate's sources', else one
    meta = {**meta, "recipe": recipe.record(model, optimizer, scheduler, criterion,
                                            strategy=run.arguments.get("strategy", "full"),
                                            augmentation=transforms.augmentation_record(domains, meta["image_size"]))}
    run.check_recipe(meta["recipe"])  # another recipe's last.pt: refused, or started over
    if main_process:
        _start_run_folder(out_dir, meta, run.arguments, device, dist_info, run.resume_from)
    log(f"model: DenseNet-121, {meta['init_description']}")

    # --- the model on its device with its training state (restored on resume), then DDP / compile
    model, net, scaler, state = _placed(model, criterion, optimizer, scheduler, run, settings, device, dist_info,
                                        amp_dtype)
    steps_per_epoch = len(train_loader)
    log(f"{_name(out_dir)}: {len(train_loader.dataset)} train / {len(val_loader.dataset)} val images, "
        f"{meta['num_outputs']} {task} outputs, {settings.epochs} epochs x {steps_per_epoch} steps of {settings.batch_size} "
        f"images x {dist_info.world_size} process(es) on {device}"
        f"{f' with {amp_dtype} autocast' if amp_dtype else ''}; class weights: {meta.get('loss_weights') or 'none'}")

    # --- epochs: train, validate, write last.pt (and best.pt) and metrics.csv
    columns = ["epoch", "split", "loss", *metrics.metric_names(task), "seconds", "lr"]
    history, epoch, run_start = state["history"], state["start_epoch"], time.time()
    saved = state["start_epoch"] - 1  # the epoch last.pt holds
    passes = {"train": (net, train_loader, {"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}),
              "val": (model, val_loader, {})}
    try:
        for epoch in range(state["start_epoch"], settings.epochs + 1):
            _seed_epoch(train_loader, val_loader, seed=settings.seed, epoch=epoch, rank=dist_info.rank,
                        workers=settings.workers)
            lr = optimizer.param_groups[0]["lr"]
            rows = [_pass_row(split, module, loader, model, criterion, device, out_dir=out_dir, epoch=epoch, lr=lr,
                              task=task, amp_dtype=amp_dtype, settings=settings, steps_per_epoch=steps_per_epoch,
                              dist_info=dist_info, training=training)
                    for split, (module, loader, training) in passes.items()]
            history += rows
            improved = _score(rows[1], headline) > state["best_score"] or state["best_epoch"] == 0  # epoch 1 always
            if improved:
                state["best_score"], state["best_epoch"] = _score(rows[1], headline), epoch
            rng = gather(rng_state(), dist_info)
            if main_process:
                seconds = state["seconds"] + time.time() - run_start
                checkpoint = _epoch_checkpoint(model, optimizer, scheduler, scaler, epoch=epoch, state=state,
                                               history=history, rng=rng, seconds=seconds, run=run, meta=meta,
                                               last=epoch == settings.epochs)
                # metrics.csv follows the checkpoint: after a kill it never holds an epoch last.pt lacks
                with files.ctrl_c_after_writes():
                    save_checkpoint(checkpoint, out_dir / "last.pt")
                    saved = epoch
                    files.write_csv(history, out_dir / "metrics.csv", columns)
                    if improved:  # the model alone: the optimizer state (2/3 of last.pt) serves resuming only
                        save_checkpoint({key: checkpoint[key] for key in BEST_KEYS}, out_dir / "best.pt")
            log(f"{_name(out_dir)} epoch {epoch}/{settings.epochs}: "
                + " | ".join(f"{row['split']} loss {row['loss']:.4f} {headline} {row.get(headline, math.nan):.4f}"
                             for row in rows) + f" | {rows[0]['seconds'] + rows[1]['seconds']:.1f} s")
    except KeyboardInterrupt:
        if main_process:
            _say_interrupted(out_dir, saved=saved, epoch=epoch)
        raise SystemExit(130) from None
    return _close_run(run, history, state, columns, settings=settings, headline=headline,
                      seconds=state["seconds"] + time.time() - run_start, meta=meta, dist_info=dist_info)


def _placed(model, criterion, optimizer, scheduler, run: runs.Run, settings: Settings, device, dist_info: Distributed,
            amp_dtype):
    """The model on its device (SyncBatchNorm under torchrun with --sync-bn), its training state restored
    (runs.Run's last.pt) or fresh: (model, the module to train: DDP-wrapped and/or compiled, scaler, state)."""
    if settings.sync_bn and dist_info.enabled:
        if device.type != "cuda":
            raise SystemExit("--sync-bn needs GPUs: PyTorch's SyncBatchNorm has no CPU kernel")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameters and state_dict keys
    model.to(device, memory_format=torch.channels_last if settings.channels_last else torch.preserve_format)
    criterion.to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    state = _restore(run, model, optimizer, scheduler, scaler, dist_info, seed=settings.seed, epochs=settings.epochs)
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist_info.enabled else model
    if settings.compile:
        net = torch.compile(net)
    return model, net, scaler, state


def _pass_row(split: str, module, loader, model, criterion, device, *, out_dir: Path, epoch: int, lr: float, task: str,
              amp_dtype, settings: Settings, steps_per_epoch: int, dist_info: Distributed, training: dict) -> dict:
    """One pass over a split (training when `training` holds the optimizer, scheduler and scaler) -> its
    metrics.csv row."""
    start = time.time()
    if split == "val" and dist_info.enabled:
        for buffer in model.buffers():  # BatchNorm statistics of rank 0, those its checkpoint holds
            dist.broadcast(buffer, src=0)
    loss, probs, targets = _checked_pass(
        module, loader, criterion, device, out_dir=out_dir, epoch=epoch, split=split, task=task,
        amp_dtype=amp_dtype, channels_last=settings.channels_last, log_every=settings.log_every,
        first_step=(epoch - 1) * steps_per_epoch, dist_info=dist_info, **training)
    return runs.plain({"epoch": epoch, "split": split, "loss": loss,
                       **metrics.compute_metrics(task, probs, np.nan_to_num(targets)),
                       "seconds": round(time.time() - start, 3), "lr": lr})


def _epoch_checkpoint(model, optimizer, scheduler, scaler, *, epoch: int, state: dict, history: list, rng,
                      seconds: float, run: runs.Run, meta: dict, last: bool) -> dict:
    """What last.pt holds after `epoch`; after the `last` epoch, `finished` (what only resuming needs goes)."""
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                  "best_metric": state["best_score"], "best_epoch": state["best_epoch"], "history": history,
                  "rng": rng, "seconds": seconds, "resume": run.fingerprint, "meta": meta,
                  "trained_on": {name: torch.from_numpy(keys) for name, keys in run.trained_on.items()},
                  "finished": False}
    return finished(checkpoint) if last else checkpoint


def _say_interrupted(out_dir: Path, *, saved: int, epoch: int) -> None:
    """Ctrl-C: when it came and what last.pt holds (`saved`: its epoch, 0 = none written)."""
    where = f"after epoch {saved}" if saved == epoch else f"during epoch {epoch}"
    kept = (f"{out_dir / 'last.pt'} holds epoch {saved}, written whole; run the same command again to "
            "continue from there") if saved else "no epoch had finished, so nothing was saved"
    print(f"{out_dir}: interrupted (Ctrl-C) {where}; {kept}", file=sys.stderr, flush=True)


def _close_run(run: runs.Run, history: list, state: dict, columns: list, *, settings: Settings, headline: str,
               seconds: float, meta: dict, dist_info: Distributed) -> dict:
    """summary.json and the final metrics.csv (rank 0; a complete run resumed from a last.pt that was not yet
    `finished` gets its finished last.pt); returns the summary once every process is here."""
    out_dir = run.out_dir
    result = runs.summary(history, epochs=settings.epochs, best_epoch=state["best_epoch"], best_score=state["best_score"],
                          headline=headline, seconds=seconds, meta=meta)
    if dist_info.is_main_process:
        if run.resume_from and state["start_epoch"] > settings.epochs and not run.resume_from.get("finished"):
            save_checkpoint(finished(run.resume_from), out_dir / "last.pt")  # complete, but kept what resuming needs
        files.write_csv(history, out_dir / "metrics.csv", columns)  # also for a run that was complete already
        files.write_json(result, out_dir / "summary.json")
    if dist_info.enabled:
        dist.barrier()  # no process leaves before rank 0 has written the run
    return result


def _restore(run: runs.Run, model, optimizer, scheduler, scaler, dist_info: Distributed, *, seed: int,
             epochs: int) -> dict:
    """The training state to start from: a fresh one, or the one in the run's last.pt (model,
    optimizer, scheduler, scaler and RNG states are loaded in place; a finished run's model alone,
    nothing being left to train)."""
    checkpoint = run.resume_from
    if not checkpoint:
        if dist_info.enabled:
            seed_everything(seed + dist_info.rank)  # one dropout stream per process; weights come from rank 0
        return {"history": [], "best_score": -math.inf, "best_epoch": 0, "start_epoch": 1, "seconds": 0.0}
    model.load_state_dict(checkpoint["model"])
    if checkpoint.get("finished"):
        if checkpoint["epoch"] < epochs:  # epochs is in the fingerprint: only a last.pt edited by hand gets here
            raise SystemExit(f"{run.out_dir / 'last.pt'} holds a finished run of {checkpoint['epoch']} epochs, without "
                             f"what continuing it needs; pass --no-resume to train {epochs} epochs from the start")
    else:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        rng = checkpoint["rng"]
        set_rng_state(rng[dist_info.rank] if dist_info.rank < len(rng) else rng[0])
    if dist_info.is_main_process and checkpoint["best_epoch"] == checkpoint["epoch"]:
        # last.pt is then also the best epoch's model: write best.pt again, in case a kill came between the two saves
        save_checkpoint({key: checkpoint[key] for key in BEST_KEYS}, run.out_dir / "best.pt")
    if checkpoint.get("finished"):
        log(f"{_name(run.out_dir)}: finished: all {checkpoint['epoch']} epochs are in {run.out_dir / 'last.pt'}, "
            "nothing to train (--no-resume trains the run again)")
    else:
        log(f"{_name(run.out_dir)}: resuming after epoch {checkpoint['epoch']} from {run.out_dir / 'last.pt'}")
    return {"history": list(checkpoint["history"]), "best_score": checkpoint["best_metric"],
            "best_epoch": checkpoint["best_epoch"], "start_epoch": checkpoint["epoch"] + 1,
            "seconds": checkpoint.get("seconds", 0.0)}


def _checked_pass(module, loader, criterion, device, *, out_dir: Path, epoch: int, split: str, **settings):
    """run_epoch, stopping the run with one line at a NaN or infinite loss (the last good last.pt is kept)."""
    kept = f"The last good checkpoint is kept: {out_dir / 'last.pt'} (epoch {epoch - 1})" if epoch > 1 else \
        "No epoch had finished, so this run wrote no checkpoint"
    try:
        loss, probs, targets = run_epoch(module, loader, criterion, device, desc=f"epoch {epoch} {split}", **settings)
    except NonFiniteLoss as err:
        raise SystemExit(f"{out_dir}: {err} (epoch {epoch}); stopping. {kept}; try a lower --lr") from None
    if not math.isfinite(loss):
        raise SystemExit(f"{out_dir}: the {split} loss is {loss} at epoch {epoch}; stopping. {kept}")
    return loss, probs, targets


def _name(out_dir: Path) -> str:
    return "/".join(out_dir.parts[-3:])  # e.g. shenzhen/Domain_RI/seed0


def _start_run_folder(out_dir: Path, meta: dict, arguments: dict, device, dist_info: Distributed, resume_from) -> None:
    """args.json first; a summary.json (and, starting over, a best.pt) of an earlier run goes, so
    that neither is ever mistaken for this run's."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("summary.json",) if resume_from else ("summary.json", "best.pt"):
        (out_dir / stale).unlink(missing_ok=True)
    files.write_json({"args": arguments, "meta": meta, "versions": runs.library_versions(), "git_sha": runs.git_sha(),
                      "command": sys.argv, "device": str(device), "world_size": dist_info.world_size,
                      "resumed_from_epoch": resume_from["epoch"] if resume_from else None,
                      "started": datetime.datetime.now().isoformat(timespec="seconds")}, out_dir / "args.json")


def _seed_epoch(train_loader, val_loader, *, seed: int, epoch: int, rank: int, workers: int) -> None:
    """Data order and augmentation as functions of (seed, epoch, process): a resumed run replays
    exactly what an uninterrupted one would have seen."""
    augment_seed = (seed * 1_000_003 + epoch * 1009 + rank) % 2**31
    train_loader.generator.manual_seed(augment_seed)  # worker processes derive their seeds from it
    if workers == 0:
        monai.data.utils.set_rnd(train_loader.dataset, seed=augment_seed)
    for loader in (train_loader, val_loader):
        loader.sampler.set_epoch(epoch)
