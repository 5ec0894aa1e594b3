"""A run folder: what identifies a run, whether a folder holds this run to resume, and its records.

A run folder (``--out`` of a training script) holds:
    args.json     resolved arguments, the model/data ``meta``, library versions, git sha (written first)
    metrics.csv   one row per (epoch, split): epoch, split, loss, <metric columns>, seconds, lr
    last.pt       every epoch;  best.pt  on the best validation headline metric
    summary.json  written once the last epoch is done (study.sh skips a run that has it)

A run is resumed only from a ``last.pt`` of the very same run: its **fingerprint** (every
argument except the runtime-only ones in RUNTIME_ARGS, the data and the number of processes)
must equal this run's, so a hyperparameter added to a script tomorrow is covered without
touching this file.
"""
import math
import platform
import subprocess
from pathlib import Path

import numpy as np

from .checkpoints import load_checkpoint
from .runtime import log

# Arguments that say where or how fast a run goes, never what it computes: they may change
# between a start and a resume. Every other argument is part of the fingerprint. (--imagenet-weights
# is where the ImageNet file lies; the init itself is --init.)
RUNTIME_ARGS = frozenset({"out", "resume", "device", "workers", "amp", "channels_last", "compile", "log_every",
                          "imagenet_weights"})


def fingerprint(args, data_meta: dict, *, world_size: int) -> dict:
    """What a checkpoint in --out must share with this run to be resumed: the data (dataset key,
    task, classes), the number of processes (the global batch and the schedule depend on it) and
    every argument not in RUNTIME_ARGS."""
    settings = {name: value for name, value in sorted(vars(args).items()) if name not in RUNTIME_ARGS}
    return {"data": {"key": data_meta["key"], "task": data_meta["task"], "classes": list(data_meta["classes"])},
            "world_size": world_size, **settings}


def resume_checkpoint(out_dir, fingerprint: dict, *, resume: bool) -> dict | None:
    """The checkpoint to resume from (out_dir/last.pt of this very run), or None to start afresh.

    A last.pt of another run (other data or any other non-runtime argument) is refused with one
    line naming what changed, rather than overwritten or silently continued; --no-resume starts
    over in the folder.
    """
    out_dir = Path(out_dir)
    path = out_dir / "last.pt"
    if not path.exists():
        return None
    if not resume:
        log(f"{out_dir}: --no-resume: starting over; the existing checkpoints will be replaced")
        return None
    checkpoint = load_checkpoint(path)
    saved = checkpoint.get("resume")
    if not isinstance(saved, dict):
        raise SystemExit(f"{path}: this checkpoint holds no resume information (not written by a training script "
                         f"of this kit); choose another --out, or pass --no-resume to start over in {out_dir}")
    changed = [f"{name} {saved.get(name)!r} -> {fingerprint.get(name)!r}"
               for name in dict.fromkeys([*fingerprint, *saved]) if saved.get(name) != fingerprint.get(name)]
    if changed:
        raise SystemExit(f"{out_dir} holds the checkpoint of a different run ({'; '.join(changed)}); choose another "
                         f"--out, or pass --no-resume to start over in it")
    return checkpoint


def run_meta(data_meta: dict, args, *, init_description: str, loss_weights=None, skipped_images: int = 0) -> dict:
    """What a checkpoint carries so that later stages rebuild the model and its eval transforms."""
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
        "manifests": [str(Path(p).resolve()) for p in (args.manifests if hasattr(args, "manifests") else [args.manifest])],
        "loss_weights": loss_weights, "skipped_images": skipped_images,
    }


def library_versions() -> dict:
    import monai
    import pandas as pd
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
            "numpy": np.__version__, "pandas": pd.__version__}


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def plain(row: dict) -> dict:
    """A metrics row with numpy scalars turned into Python numbers (checkpoints hold plain values)."""
    return {key: value.item() if isinstance(value, np.generic) else value for key, value in row.items()}


def summary(rows: list[dict], *, epochs: int, best_epoch: int, best_score: float, headline: str,
            seconds: float, meta: dict) -> dict:
    """summary.json: written when the last epoch is done."""
    return {"epochs": epochs, "best_epoch": best_epoch,
            "best_val_score": best_score if math.isfinite(best_score) else None,
            "headline_metric": headline, "last_val": rows[-1], "seconds": round(seconds, 2),
            "skipped_images": meta.get("skipped_images", 0)}
