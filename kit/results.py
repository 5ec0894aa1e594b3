"""Reading a study's files: the fine-tuning runs under OUT/finetune/ and their evaluations under
OUT/eval/. Reads only what earlier stages wrote (CSV and JSON), never checkpoints (a checkpoint's bytes
are hashed, not loaded).

Every folder OUT/finetune/<target>/<arm>/[<anything>/]metrics.csv is one run of that target and
arm, its seed and train fraction read from its args.json (args.seed, args.train_fraction; else
from a folder name like frac0.1_seed2; else seed 0, fraction 1). Evaluations
(OUT/eval/**/metrics.csv, evaluate.py) are matched to runs by the checkpoint path they name, and used
only while the run folder holds the very checkpoint they evaluated (its content hash, checkpoint_digest):
a run trained again after its evaluation has no test numbers until it is evaluated again.
"""
import json
import math
import re
from pathlib import Path, PurePath

import numpy as np
import pandas as pd

from .paper import ARMS, STRATEGIES, TARGETS, paper_sorted

CHECKPOINTS = ("best", "last")  # evaluate.py output per run: best-validation and last-epoch checkpoint


def read_json(path):
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(value, dict):
        raise ValueError(f"{path}: not a JSON object")
    return value


def read_csv(path):
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read CSV ({err})") from err


def run_settings(run_dir):
    """{seed, fraction, strategy, manifest_rows} of a run: from its args.json, else its folder name
    ([<strategy>_][frac<F>_]seed<S>), else seed 0, fraction 1, full, no manifest hash."""
    recorded = read_json(run_dir / "args.json") if (run_dir / "args.json").is_file() else {}
    args = recorded.get("args") or {}
    seed = re.search(r"seed(\d+)", run_dir.name)
    fraction = re.search(r"frac([0-9.]+)", run_dir.name)
    strategy = re.match(rf"({'|'.join(STRATEGIES)})_", run_dir.name)
    data = (recorded.get("meta") or {}).get("data") or {}
    return {"seed": int(args.get("seed", seed.group(1) if seed else 0)),
            "fraction": float(args.get("train_fraction", fraction.group(1) if fraction else 1.0)),
            "strategy": str(args.get("strategy", strategy.group(1) if strategy else "full")),
            "manifest_rows": data.get("manifest_rows")}


def _visible(path: Path, base: Path) -> bool:
    """False for files in a folder whose name starts with '.': evaluate.py's unfinished folders."""
    return not any(part.startswith(".") for part in path.relative_to(base).parts)


def discover_runs(runs_dir):
    """One dict per OUT/finetune/<target>/<arm>/[...]/metrics.csv: target, arm, seed, fraction, strategy,
    manifest_rows, dir, key."""
    finetune = Path(runs_dir) / "finetune"
    runs = []
    for csv_path in sorted(finetune.rglob("metrics.csv")):
        rel = csv_path.parent.relative_to(finetune)
        if len(rel.parts) < 2 or not _visible(csv_path, finetune):
            continue
        runs.append({"target": rel.parts[0], "arm": rel.parts[1], **run_settings(csv_path.parent),
                     "dir": csv_path.parent, "key": rel.as_posix(), "evals": {}})
    if not runs:
        raise ValueError(f"no metrics.csv under {finetune}/*/*/ — run finetune_target.py first")
    target_order = paper_sorted({r["target"] for r in runs}, TARGETS)
    arm_order = paper_sorted({r["arm"] for r in runs}, ["RI", *ARMS])  # the random-init floor first
    return sorted(runs, key=lambda r: (target_order.index(r["target"]), arm_order.index(r["arm"]),
                                       r["fraction"], r["seed"], r["key"]))


def headline_metric(target, run_dirs):
    """Table 2's metric for a target: the paper's for D1-D5, else `meta.headline_metric` of its runs."""
    if target in TARGETS:
        return TARGETS[target][3]
    for run_dir in run_dirs:
        if (run_dir / "args.json").is_file():
            meta = read_json(run_dir / "args.json").get("meta") or {}
            if meta.get("headline_metric"):
                return str(meta["headline_metric"])
    return "accuracy"


def read_curves(csv_path, metric):
    """Per-epoch rows of one run: columns epoch, split, value (metric as a fraction) and loss.

    A resumed run may log an epoch twice; the last row for an (epoch, split) wins.
    """
    frame = read_csv(csv_path)
    missing = [c for c in ("epoch", "split", metric) if c not in frame.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {missing} (has {list(frame.columns)}); "
                         f"pick another with --metric")
    curves = pd.DataFrame({
        "epoch": pd.to_numeric(frame["epoch"], errors="coerce"),
        "split": frame["split"].astype(str).str.strip(),
        "value": pd.to_numeric(frame[metric], errors="coerce"),
        "loss": pd.to_numeric(frame["loss"], errors="coerce") if "loss" in frame.columns else math.nan,
    })
    if curves["epoch"].isna().any():
        raise ValueError(f"{csv_path}: column 'epoch' has non-numeric values")
    curves = curves.drop_duplicates(["epoch", "split"], keep="last").sort_values("epoch", kind="stable")
    if not (curves["split"] == "val").any():
        raise ValueError(f"{csv_path}: no rows with split == 'val' (splits found: {sorted(set(curves['split']))})")
    return curves.reset_index(drop=True)


def last_epoch_row(curves):
    """(last validation epoch, train value there, val value there), values as fractions (NaN if absent)."""
    epoch = int(curves.loc[curves["split"] == "val", "epoch"].max())
    at_epoch = curves[curves["epoch"] == epoch].set_index("split")["value"]
    return epoch, float(at_epoch.get("train", math.nan)), float(at_epoch.get("val", math.nan))


def eval_run_key(checkpoint, eval_rel):
    """(run key under finetune/, checkpoint kind) of an evaluate.py metrics.csv.

    From the checkpoint path it names (…/finetune/<run key>/<kind>.pt, wherever OUT now lives),
    else from where it lies: eval/<run key>/<kind>/ (the study's layout) or eval/<run key>/."""
    parts = PurePath(checkpoint).parts
    if "finetune" in parts[:-1]:
        start = len(parts) - 1 - parts[::-1].index("finetune")
        return "/".join(parts[start + 1:-1]), PurePath(checkpoint).stem
    if eval_rel.name in CHECKPOINTS:
        return eval_rel.parent.as_posix(), eval_rel.name
    stem = PurePath(checkpoint).stem
    return eval_rel.as_posix(), stem if stem in CHECKPOINTS else "best"


def stale_reason(run, kind, row) -> str | None:
    """Why an evaluation is not of the checkpoint now in its run folder (None: it is). The evaluation names the
    file's content hash (evaluate.py's checkpoint_digest); the run's <kind>.pt is hashed now. A fabricated or
    copied study without checkpoint files, whose evaluations name no hash either, has nothing to compare."""
    from .files import digest

    path = run["dir"] / f"{kind}.pt"
    recorded = row.get("checkpoint_digest")
    recorded = "" if recorded is None or pd.isna(recorded) else str(recorded)
    if not path.is_file():
        return f"its checkpoint {path} is gone" if recorded else None
    if not recorded:
        return f"it records no checkpoint hash, so it may be of an earlier {path.name}"
    now = f"sha256:{digest(path)}"
    return None if now == recorded else f"{path} has changed since (trained again?): {recorded} then, {now} now"


def attach_evals(runs_dir, runs) -> list:
    """run['evals'][kind] = {'row': the test row of evaluate.py's metrics.csv, 'predictions': path or None}, for
    the evaluations of the checkpoint now in the run folder; returns the others, left out, as dicts of run key,
    checkpoint kind, file and reason (stale_reason)."""
    eval_dir = Path(runs_dir) / "eval"
    by_key = {run["key"]: run for run in runs}
    left_out = []
    for csv_path in sorted(eval_dir.rglob("metrics.csv")):
        if not _visible(csv_path, eval_dir):
            continue
        frame = read_csv(csv_path)
        if "split" in frame.columns:
            frame = frame[frame["split"].astype(str).str.strip() == "test"]
        if frame.empty:
            continue
        row = frame.iloc[-1]
        key, kind = eval_run_key(str(row.get("checkpoint", "")), csv_path.parent.relative_to(eval_dir))
        if key not in by_key:
            continue
        reason = stale_reason(by_key[key], kind, row)
        if reason:
            left_out.append({"key": key, "kind": kind, "file": csv_path, "reason": reason})
            continue
        predictions = csv_path.parent / "predictions.csv"
        by_key[key]["evals"][kind] = {"row": row, "predictions": predictions if predictions.is_file() else None}
    return left_out


def read_predictions(path):
    """predictions.csv -> image-sorted frame + (probs (N, C), targets (N,), classes); multi-class only."""
    frame = read_csv(path)
    classes = [c[len("prob_"):] for c in frame.columns if c.startswith("prob_")]
    missing = [c for c in ("image", "patient", "target") if c not in frame.columns]
    if missing or not classes:
        raise ValueError(f"{path}: missing column(s) {missing or ['prob_<class>']} (has {list(frame.columns)})")
    frame = frame.sort_values("image", kind="stable").reset_index(drop=True)
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(frame["target"].astype(str)) - set(index))
    if unknown:
        raise ValueError(f"{path}: targets {unknown[:3]} are not among the prob_ columns (multi-label predictions?)")
    targets = frame["target"].astype(str).map(index).to_numpy(dtype=np.int64)
    probs = frame[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)
    return frame, probs, targets, classes


def split_sizes(runs_dir, target):
    """{'train': n, 'val': n, 'test': n} images from OUT/manifests/<target>.json counts, or None."""
    path = Path(runs_dir) / "manifests" / f"{target}.json"
    try:
        counts = json.loads(path.read_text())["counts"]
        return {s: sum(int(v) for v in counts.get(s, {}).values()) for s in ("train", "val", "test")}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
        return None


def read_study(runs_dir):
    """OUT/study.json as the study workflow writes it (data, demo, ImageNet weights found or why not, sizes,
    epochs, seeds, ...), or None for a folder it did not write."""
    path = Path(runs_dir) / "study.json"
    return read_json(path) if path.is_file() else None


def source_manifests(runs_dir, keys=("chestxray14", "breakhis", "eyepacs")):
    """{source key: {"protocol": ..., "sizes": {split: images}}} of the source manifests in OUT/manifests/
    (images per split from the sidecar's split_images, else counted in the manifest: a multi-label
    set's class counts are no image counts)."""
    found = {}
    for key in keys:
        path = Path(runs_dir) / "manifests" / f"{key}.json"
        if not path.is_file() or not path.with_suffix(".csv").is_file():
            continue
        meta = read_json(path)
        sizes = meta.get("split_images")
        if not isinstance(sizes, dict):
            sizes = read_csv(path.with_suffix(".csv"))["split"].value_counts().to_dict()
        found[key] = {"protocol": meta.get("protocol", "held-out-test"),
                      "sizes": {s: int(sizes.get(s, 0)) for s in ("train", "val", "test")}}
    return found


def manifest_data(runs_dir, targets, sources=("chestxray14", "breakhis", "eyepacs")):
    """{key: {"root", "demo_data"}} from OUT/manifests/<key>.json of each source and target that has one: the
    folder the data set was read from and what prepare_data.py recorded of its origin (demo_data: the
    DEMO_DATA.json of generated demo data, None for other data; left out where the manifest records nothing)."""
    found = {}
    for key in dict.fromkeys([*sources, *targets]):
        path = Path(runs_dir) / "manifests" / f"{key}.json"
        if path.is_file():
            meta = read_json(path)
            found[key] = {"root": meta.get("root")} | ({"demo_data": meta["demo_data"]} if "demo_data" in meta else {})
    return found


def run_arguments(runs_dir, runs):
    """{"fine-tuning": args, "pretraining": args} from the args.json of the first fine-tuning run and of
    the first pretraining run under OUT/pretrain/ (either left out when absent): the run's settings, with
    the recipe it recorded as it trained (kit/recipe.py) under "recipe" (None for a run that recorded none)."""
    found = {}
    candidates = (("fine-tuning", [r["dir"] / "args.json" for r in runs]),
                  ("pretraining", sorted((Path(runs_dir) / "pretrain").glob("*/*/args.json"))))
    for kind, paths in candidates:
        path = next((p for p in paths if p.is_file()), None)
        if path is not None:
            recorded = read_json(path)
            found[kind] = {**(recorded.get("args") or {}), "recipe": (recorded.get("meta") or {}).get("recipe")}
    return found


def _sidecar_field(runs_dir, key, field):
    """`field` of OUT/manifests/<key>.json; None where it is missing, unreadable or not a JSON object."""
    path = Path(runs_dir) / "manifests" / f"{key}.json"
    try:
        return json.loads(path.read_text()).get(field)
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def target_domain(runs_dir, target):
    """The domain (cxr, hwsi, efi, other) in OUT/manifests/<target>.json, or None."""
    return _sidecar_field(runs_dir, target, "domain")


def read_overlap(runs_dir):
    """What check_overlap.py found for the study in OUT/overlap/: (summary.csv as a frame, overlap.json), or
    (None, None) where it was not run. The twins each target's prepare_data.py kept in one split are in
    its manifest sidecar (manifest_twins)."""
    folder = Path(runs_dir) / "overlap"
    if not (folder / "summary.csv").is_file():
        return None, None
    record = read_json(folder / "overlap.json") if (folder / "overlap.json").is_file() else {}
    return read_csv(folder / "summary.csv"), record


def manifest_twins(runs_dir, target):
    """The sidecar's record of the pictures prepare_data.py found twice in a target (None: not looked for)."""
    return _sidecar_field(runs_dir, target, "twins")


def seen_in_pretraining(runs, kind):
    """{target: [the seen_in_pretraining of each run's `kind` evaluation: a count, or None where not checked]}."""
    seen = {}
    for run in runs:
        row = run["evals"].get(kind, {}).get("row")
        if row is None:
            continue
        value = pd.to_numeric(pd.Series([row.get("seen_in_pretraining")]), errors="coerce").iloc[0]
        seen.setdefault(run["target"], []).append(None if pd.isna(value) else int(value))
    return seen
