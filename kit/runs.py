"""A run folder: what identifies a run, whether a folder holds this run to resume, and its records.

A run folder (``--out`` of a training script) holds:
    args.json     resolved arguments, the model/data ``meta``, library versions, git sha (written first)
    metrics.csv   one row per (epoch, split): epoch, split, loss, <metric columns>, seconds, lr
    last.pt       every epoch; once the last is done, `finished` and without the optimizer, scheduler,
                  scaler and RNG states that only resuming needs (a rerun then trains nothing)
    best.pt       on the best validation headline metric
    summary.json  written once the last epoch is done (the study workflow's output of a run)

A run is resumed only from a ``last.pt`` of the very same run: its **fingerprint** (every
argument except the runtime-only ones in RUNTIME_ARGS, the data and the number of processes)
must equal this run's, so a hyperparameter added to a script tomorrow is covered without
touching this file.
"""
import dataclasses
import math
import platform
import subprocess
from pathlib import Path

import numpy as np

from . import backbones, files, identity, locks, recipe
from .checkpoints import CheckpointError, load_checkpoint
from .runtime import is_main_process, log

# Arguments that say where or how fast a run goes, never what it computes: they may change
# between a start and a resume. Every other argument is part of the fingerprint. (--imagenet-weights
# is where the ImageNet file lies; the init itself is --init.)
RUNTIME_ARGS = frozenset({"out", "resume", "restart_if_changed", "device", "workers", "amp", "channels_last",
                          "compile", "log_every", "imagenet_weights"})


# Arguments that say which data a run reads: the data's content (identity.data_identity) stands for them in the
# fingerprint, so a moved manifest or overlap.csv is the same run, and changed content is another.
DATA_ARGS = frozenset({"manifest", "manifests", "exclude_overlap"})


def fingerprint(arguments: dict, data_meta: dict, df, *, world_size: int) -> dict:
    """What a checkpoint in --out must share with this run to be resumed: the data (identity.data_identity:
    the manifest's train/val rows by content, not its path), the number of processes (the global
    batch and the schedule depend on it) and every argument not in RUNTIME_ARGS except the
    manifest paths, which the data's content replaces (a moved manifest is the same data). An --init
    checkpoint counts by its content too: a pretraining done again is another start, the same file
    moved is not. `arguments`: the script's parsed arguments, vars(args). loop.fit adds the recipe
    the run trains with (check_recipe)."""
    settings = {name: value for name, value in sorted(arguments.items())
                if name not in RUNTIME_ARGS and name not in DATA_ARGS}
    if "init" in settings and str(settings["init"]) not in ("random", "imagenet"):
        settings["init"] = f"checkpoint sha256:{files.digest(settings['init'])}"
    return {"data": identity.data_identity(df, data_meta), "world_size": world_size, **settings}



def _difference(name, saved, now) -> str:
    if name == "recipe":
        return "; ".join(recipe.differences(saved, now))
    if name == "data" and isinstance(saved, dict) and isinstance(now, dict):
        for field in ("key", "task", "classes"):
            if saved.get(field) != now.get(field):
                return f"data: {'dataset' if field == 'key' else field} {saved.get(field)!r} -> {now.get(field)!r}"
        return (f"data: the manifest's train/val rows changed (train {saved.get('train')} -> {now.get('train')}, "
                f"val {saved.get('val')} -> {now.get('val')} images; content {saved.get('rows')} -> {now.get('rows')}); "
                f"was prepare_data.py re-run with another split?")
    return f"{name} {saved!r} -> {now!r}"


def resume_checkpoint(out_dir, fingerprint: dict, *, resume: bool, restart_if_changed: bool = False) -> dict | None:
    """The checkpoint to resume from (out_dir/last.pt of this very run), or None to start afresh.

    A last.pt of another run (other data or any other non-runtime argument) is refused with one
    line naming what changed, rather than overwritten or silently continued (restart_if_changed:
    started over, saying what changed); --no-resume starts over in the folder.
    """
    out_dir = Path(out_dir)
    path = out_dir / "last.pt"
    if not path.exists():
        return None
    if not resume:
        log(f"{out_dir}: --no-resume: starting over; the existing checkpoints will be replaced")
        return None
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as err:  # cut short or damaged outside the kit (its own saves are atomic)
        if restart_if_changed:
            log(f"{err}: starting over (--restart-if-changed)")
            return None
        raise SystemExit(f"{err}; --no-resume starts over in {out_dir}") from None
    saved = checkpoint.get("resume")
    if not isinstance(saved, dict) and restart_if_changed:
        log(f"{out_dir}: its last.pt holds no resume information: starting over (--restart-if-changed)")
        return None
    if not isinstance(saved, dict):
        raise SystemExit(f"{path}: this checkpoint holds no resume information (not written by a training script "
                         f"of this kit); choose another --out, or pass --no-resume to start over in {out_dir}")
    changed = [_difference(name, saved.get(name), fingerprint.get(name))
               for name in dict.fromkeys([*fingerprint, *saved])
               if name != "recipe" and saved.get(name) != fingerprint.get(name)]  # the recipe: Run.check_recipe
    if changed and restart_if_changed:
        log(f"{out_dir}: its last.pt is another run's ({'; '.join(changed)}): starting over (--restart-if-changed)")
        return None
    if changed:
        raise SystemExit(f"{out_dir} holds the checkpoint of a different run ({'; '.join(changed)}); choose another "
                         f"--out, or pass --no-resume to start over in it")
    if not (out_dir / "best.pt").is_file() and checkpoint.get("best_epoch") != checkpoint.get("epoch"):
        # last.pt is not the best epoch's model, so best.pt cannot be written again from it
        raise SystemExit(f"{out_dir}: best.pt is missing, and the best validation epoch ({checkpoint.get('best_epoch')}) "
                         f"is not the one last.pt holds ({checkpoint.get('epoch')}): its model is gone. Pass --no-resume "
                         f"to train the run again, or evaluate last.pt alone")
    return checkpoint


@dataclasses.dataclass
class Run:
    """A run folder opened for training: its fingerprint, the checkpoint to resume from (None: start
    afresh), the record of the images and patients it learns from (for evaluate.py), and the script's
    arguments (args.json)."""
    out_dir: Path
    fingerprint: dict
    resume_from: dict | None
    trained_on: dict
    data: dict  # the fingerprint's data identity + the content hash of the whole manifest (all splits)
    arguments: dict
    restart_if_changed: bool = False

    def check_recipe(self, run_recipe: dict) -> None:
        """Add the recipe the run trains with (kit/recipe.py) to its fingerprint; a last.pt trained with
        another one is refused, naming what changed (restart_if_changed: started over)."""
        self.fingerprint["recipe"] = run_recipe
        saved = (self.resume_from or {}).get("resume") or {}
        if self.resume_from is None or saved.get("recipe") == run_recipe:
            return
        changed = _difference("recipe", saved.get("recipe"), run_recipe)
        if not self.restart_if_changed:
            raise SystemExit(f"{self.out_dir} holds the checkpoint of a run with another recipe ({changed}); choose "
                             f"another --out, or pass --no-resume to start over in it")
        log(f"{self.out_dir}: its last.pt is another run's ({changed}): starting over (--restart-if-changed)")
        self.resume_from = None


def open_run(out_dir, *, arguments: dict, data_meta: dict, df, world_size: int, resume: bool = True,
             restart_if_changed: bool = False) -> Run:
    """Open the run folder `out_dir` before any expensive work: take its lock (rank 0; a second writer is
    refused with one line naming the holder), then refuse a last.pt of a different run (resume_checkpoint).
    `arguments`: the script's parsed arguments (vars(args)), the run's settings; `df` the manifest as
    loaded: its train and val rows identify the data."""
    out_dir = Path(out_dir)
    if is_main_process():
        locks.hold(out_dir / ".lock", what=f"run folder {out_dir}")
    run_fingerprint = fingerprint(arguments, data_meta, df, world_size=world_size)
    used = df[df["split"].isin(["train", "val"])]
    trained_on = {"images": identity.key_hashes(used["image"].astype(str)),
                  "patients": identity.key_hashes(identity.patient_keys(used, data_meta["key"]))}
    resume_from = resume_checkpoint(out_dir, run_fingerprint, resume=resume, restart_if_changed=restart_if_changed)
    return Run(out_dir, run_fingerprint, resume_from, trained_on,
               {**run_fingerprint["data"], "manifest_rows": identity.rows_hash(df)}, dict(arguments),
               restart_if_changed)


def training_overlap(checkpoint: dict, df, key: str) -> tuple[int, int] | None:
    """(images, patients) of the rows `df` of data set `key` that the checkpoint's model was trained
    or selected on (its train and val rows, by image path and by patient); None when the checkpoint
    keeps no such record (written by an older version of the kit)."""
    trained = checkpoint.get("trained_on")
    if not isinstance(trained, dict) or not {"images", "patients"} <= set(trained):
        return None
    images = np.isin(identity.hash64(df["image"].astype(str)), np.asarray(trained["images"]))
    patients = identity.patient_keys(df, key)
    shared = np.isin(identity.hash64(patients), np.asarray(trained["patients"]))
    return int(images.sum()), int(patients[shared].nunique())


def pretraining_of(init, run: Run) -> dict | None:
    """What the backbone an --init checkpoint gives was pretrained on, for evaluate.py: its data identity
    and the overlap.csv it left out (kit/overlap.py), None for random or ImageNet init. The images it was
    trained on go into the run's record (run.trained_on["pretrained_images"]), so that evaluate.py can
    tell a test image the pretraining saw."""
    if str(init) in ("random", "imagenet"):
        return None
    published = backbones.record_of(init)
    if published["layout"] != "kit":  # a published DenseNet-121: its data is not known to the kit
        return {"checkpoint": str(Path(init).resolve()), "key": None, "data": None, "overlap": None,
                "images_recorded": False, "layout": published["layout"], "sha256": published["sha256"]}
    checkpoint = load_checkpoint(init)
    meta = checkpoint.get("meta") if isinstance(checkpoint.get("meta"), dict) else {}
    trained = checkpoint.get("trained_on")
    if isinstance(trained, dict) and "images" in trained:
        run.trained_on["pretrained_images"] = np.asarray(trained["images"])
    return {"checkpoint": str(Path(init).resolve()), "key": meta.get("key"), "data": meta.get("data"),
            "overlap": meta.get("overlap"), "images_recorded": "pretrained_images" in run.trained_on,
            "layout": "kit", "sha256": published["sha256"]}


def run_meta(data_meta: dict, run: Run, *, init: str, init_description: str, hidden_dim: int, dropout: float,
             image_size: int, manifests: list, loss_weights=None, skipped_images: int = 0, overlap: dict | None = None,
             pretraining: dict | None = None) -> dict:
    """What a checkpoint carries so that later stages rebuild the model and its eval transforms, and
    check what it was trained on (``data``: Run.data; ``overlap``: the target pictures a pretraining left
    out, kit/overlap.py; ``pretraining``: what an --init backbone was pretrained on, pretraining_of).
    loop.fit adds the ``recipe`` the run trains with (kit/recipe.py)."""
    return {
        "key": data_meta["key"], "domain": data_meta["domain"], "task": data_meta["task"],
        "classes": list(data_meta["classes"]),
        "headline_metric": data_meta.get("headline_metric",
                                         "accuracy" if data_meta["task"] == "multiclass" else "auroc"),
        "class_weights": data_meta.get("class_weights", "none"),
        "domains": data_meta.get("domains", {data_meta["key"]: data_meta["domain"]}),
        "arch": "densenet121", "num_outputs": len(data_meta["classes"]),
        "hidden_dim": hidden_dim, "dropout": dropout,
        "image_size": image_size, "transforms": {"domain": data_meta["domain"], "image_size": image_size},
        "init": str(init), "init_description": init_description,
        "source_checkpoint": None if str(init) in ("random", "imagenet") else str(Path(init).resolve()),
        "manifests": [str(Path(p).resolve()) for p in manifests],
        "loss_weights": loss_weights, "skipped_images": skipped_images, "data": run.data,
        "overlap": overlap, "pretraining": pretraining,
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
