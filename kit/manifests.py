"""Manifests: patient-level splits, train fractions, and the manifest files themselves.

A manifest is ``<key>.csv`` (one row per image: ``image``, ``label`` or ``labels``, ``patient``,
``split``, extra reader columns) plus its ``<key>.json`` sidecar (``key``, ``domain``, ``task``,
``classes``, split settings and counts), written once by ``prepare_data.py``; every later stage
reads it back with ``load_manifest`` (or ``aggregate_manifests`` for the paper's 22-label "All"
set, Section 5.2.3).

``make_splits`` adds the ``split`` column (patient-level, stratified, seeded, an official split
respected); ``paper_source_rows`` takes a source's rows as the paper used them (every image, an
official split dropped: prepare_data.py --protocol paper); ``cap_per_class`` thins huge sets for
quick runs; ``nested_fraction`` takes the nested train subsets of a label-efficiency study.

    from kit.manifests import make_splits, load_manifest
    df = make_splits(df, val_frac=0.15, test_frac=0.15, seed=0)
    df, meta = load_manifest("OUT/manifests/shenzhen.csv")
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import files
from .paper import EYEPACS_TEST_GRADES_ADDED

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- splits

def check_fractions(val_frac: float, test_frac: float) -> None:
    for name, value in (("val_frac", val_frac), ("test_frac", test_frac)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} = {value}: must be in [0, 1)")
    if val_frac + test_frac >= 1.0:
        raise ValueError(f"val_frac + test_frac = {val_frac + test_frac}: must be < 1 (train needs images)")


def _indicator(df: pd.DataFrame) -> np.ndarray:
    """Per-image class membership (n_images, n_classes) bool, from `label` or `labels`."""
    if "labels" in df.columns:
        codes, uniques = pd.factorize(df["labels"].fillna("").astype(str))
        names = sorted({n for u in uniques for n in u.split("|") if n})
        col = {n: j for j, n in enumerate(names)}
        table = np.zeros((len(uniques), len(names)), dtype=bool)
        for i, u in enumerate(uniques):
            table[i, [col[n] for n in u.split("|") if n]] = True
        return table[codes]
    if "label" not in df.columns:
        raise ValueError("make_splits: the frame needs a 'label' or 'labels' column")
    label = df["label"].to_numpy(dtype=np.int64)
    if label.min() < 0:
        raise ValueError("make_splits: negative class index in 'label'")
    out = np.zeros((len(df), int(label.max()) + 1), dtype=bool)
    out[np.arange(len(df)), label] = True
    return out


def _patient_strata(membership: np.ndarray, code: np.ndarray, n_patients: int):
    """Per patient (rows coded 0..n_patients-1 by `code`): image count, images per class
    (n_patients, n_classes), the classes' rank (rarest first over these rows, ties by index) and
    the stratum = rank of the patient's rarest class (n_classes for a patient without labels)."""
    weights = np.bincount(code, minlength=n_patients).astype(np.float64)
    class_counts = np.zeros((n_patients, membership.shape[1]), dtype=np.int64)
    np.add.at(class_counts, code, membership.astype(np.int64))
    class_freq = membership.sum(axis=0)
    rank = np.empty(len(class_freq), dtype=np.int64)
    rank[np.lexsort((np.arange(len(class_freq)), class_freq))] = np.arange(len(class_freq))
    stratum = np.where(class_counts > 0, rank[None, :], len(rank)).min(axis=1, initial=len(rank))
    return weights, class_counts, rank, stratum


def _seeded_patient_order(df: pd.DataFrame, rows: np.ndarray, seed: int):
    """The patients of df's `rows` in the order subsets take them: strata (as in make_splits)
    rarest first, shuffled within each by one seeded draw over the sorted patient ids, so the
    order depends on (patients, labels, seed) only, not on row order.

    Returns (patient code per row of df, -1 outside `rows`; patient codes in that order; stratum
    per patient; images per patient and class, plus a last column for images without a label)."""
    code = np.full(len(df), -1)
    code[rows], _ = pd.factorize(df["patient"].astype(str).to_numpy()[rows], sort=True)
    n_patients = int(code.max()) + 1
    weights, class_counts, _, stratum = _patient_strata(_indicator(df)[rows], code[rows], n_patients)
    unlabelled = np.where(class_counts.any(axis=1), 0, weights).astype(np.int64)
    key = np.random.default_rng(seed).permutation(n_patients)
    return code, np.lexsort((key, stratum)), stratum, np.column_stack([class_counts, unlabelled])


def nested_fraction(df: pd.DataFrame, fraction: float, *, seed: int) -> pd.DataFrame:
    """About `fraction` of the train patients (whole patients, stratified on each patient's
    rarest class as make_splits does, seeded), with every val/test row kept: the label-
    efficiency subsets. Nested: for one seed, the subset at a smaller fraction is inside the
    one at a larger fraction. Every stratum keeps ceil(fraction x its patients) >= 1 patients.
    fraction = 1.0 returns df unchanged; rows keep their order."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction = {fraction}: must be in (0, 1]")
    if "split" not in df.columns:
        raise ValueError("nested_fraction: the frame needs a 'split' column (use make_splits first)")
    is_train = (df["split"] == "train").to_numpy()
    if fraction == 1.0 or not is_train.any():
        return df.copy()
    code, order, stratum, _ = _seeded_patient_order(df, np.flatnonzero(is_train), seed)
    keep = np.zeros(len(stratum), dtype=bool)
    ordered = stratum[order]
    for value in np.unique(ordered):
        members = order[ordered == value]  # the stratum's patients in the seeded order
        keep[members[:math.ceil(fraction * len(members))]] = True
    return df[~is_train | keep[code]].copy()


def cap_per_class(df: pd.DataFrame, max_images: int, *, seed: int) -> pd.DataFrame:
    """At most about `max_images` images per class, for quick runs on huge sets. Whole patients
    are taken in nested_fraction's seeded order (rarest stratum first) when every class they
    carry stays <= max_images, or when they bring a class that has no image yet (so every class
    keeps one patient). Multi-label images count for each of their labels. Applied before
    make_splits; rows keep their order and official_split."""
    if max_images < 1:
        raise ValueError(f"max per class = {max_images}: must be >= 1")
    code, order, _, counts = _seeded_patient_order(df, np.arange(len(df)), seed)
    totals = np.zeros(counts.shape[1], dtype=np.int64)
    keep = np.zeros(len(counts), dtype=bool)
    for p in order:
        has = counts[p] > 0
        if (totals[has] + counts[p, has] <= max_images).all() or (totals[has] == 0).any():
            keep[p] = True
            totals += counts[p]
    return df[keep[code]].copy()


def _allocate(weights: np.ndarray, cuts: list[tuple[int, float]], n_targets: int) -> np.ndarray:
    """Split one stratum of (already shuffled) patients by cumulative image count.

    `cuts` = [(target index, fraction)] for the carved splits, train (index n_targets - 1)
    takes the rest. A patient goes where the midpoint of its images falls. When the stratum
    has enough patients, every target gets at least one."""
    cum = np.cumsum(weights)
    mid = (cum - weights / 2) / cum[-1]
    out = np.full(len(weights), n_targets - 1)
    edge = 0.0
    for target, frac in cuts:
        out[(mid >= edge) & (mid < edge + frac)] = target
        edge += frac
    if len(weights) >= n_targets:
        for target in range(n_targets):
            if not (out == target).any():
                donor = np.bincount(out, minlength=n_targets).argmax()
                out[np.flatnonzero(out == donor)[0 if donor == n_targets - 1 else -1]] = target
    return out


def make_splits(df: pd.DataFrame, *, val_frac: float = 0.15, test_frac: float = 0.15,
                seed: int = 0, together=()) -> pd.DataFrame:
    """Add a ``split`` column (train/val/test): patient-level, stratified, seeded.

    * No patient is in two splits; the result depends only on (patients, labels, seed), not on
      row order.
    * Stratified on each patient's rarest class (over the pool's images), so rare classes (and,
      for multi-label data, rare findings) spread over all splits; within a stratum patients are
      shuffled and cut by cumulative image count, so image fractions follow val_frac/test_frac.
      Afterwards every class present gets >= 1 image in each split when it has enough patients.
    * An ``official_split`` column is respected: official test rows stay test, official val stay
      val. A split the data set does not ship is carved from the remaining rows (official train
      and unassigned), with its fraction taken of those rows: e.g. ChestX-ray14's official
      test -> val = val_frac of train_val_list; DeepDRiD's train/val -> test = test_frac of train.
    * `together`: groups of patients that must share a split (the patients of a picture that is in the
      data set twice under two names, kit/overlap.py twin_groups), split as one patient.
    """
    check_fractions(val_frac, test_frac)
    if df.empty:
        raise ValueError("make_splits: no images")
    if df["patient"].isna().any():
        raise ValueError("make_splits: empty patient id")
    membership = _indicator(df)
    patient_code, _ = pd.factorize(df["patient"].astype(str).map(linked_patients(together)), sort=True)
    n_patients = int(patient_code.max()) + 1
    official = _official_splits(df)

    # --- fixed rows (official val/test) and the splits left to carve from the pool
    official_has = {s: bool((official == s).any()) for s in ("val", "test")}
    fracs = {"test": test_frac, "val": val_frac}
    targets = [s for s in ("test", "val") if not official_has[s] and fracs[s] > 0] + ["train"]
    patient_fixed = np.full(n_patients, -1)  # index into SPLITS, or -1
    for s in ("val", "test"):  # test wins when a patient has rows in both
        patient_fixed[patient_code[official == s]] = SPLITS.index(s)
    pool_rows = patient_fixed[patient_code] < 0
    pool_patients = np.flatnonzero(np.bincount(patient_code[pool_rows], minlength=n_patients) > 0)

    split_of_patient = patient_fixed.copy()
    if len(pool_patients):
        # --- per pool patient: image count and class presence
        pos = np.full(n_patients, -1)
        pos[pool_patients] = np.arange(len(pool_patients))
        weights, class_counts, rank, stratum = _patient_strata(
            membership[pool_rows], pos[patient_code[pool_rows]], len(pool_patients))
        # --- shuffle within strata and cut by cumulative image count, then spread every class
        rng = np.random.default_rng(seed)
        priority = rng.permutation(len(pool_patients))  # tie-breaker for the repair pass
        cuts = [(i, fracs[s]) for i, s in enumerate(targets[:-1])]
        assigned = np.empty(len(pool_patients), dtype=np.int64)
        for value in np.unique(stratum):
            members = np.flatnonzero(stratum == value)
            members = members[rng.permutation(len(members))]
            assigned[members] = _allocate(weights[members], cuts, len(targets))
        _spread_classes(assigned, class_counts > 0, rank, priority, len(targets))
        split_of_patient[pool_patients] = [SPLITS.index(targets[t]) for t in assigned]

    out = df.copy()
    out["split"] = np.asarray(SPLITS)[split_of_patient[patient_code]]
    first = [c for c in ("image", "label", "labels", "patient", "split") if c in out.columns]
    return out[first + [c for c in out.columns if c not in first]]


def _official_splits(df: pd.DataFrame) -> np.ndarray:
    """Each row's official split (train/val/test, "" = none; all "" without an ``official_split`` column)."""
    if "official_split" not in df.columns:
        return np.full(len(df), "")
    official = df["official_split"].fillna("").astype(str).str.strip().to_numpy()
    unknown = sorted(set(official) - {"", *SPLITS})
    if unknown:
        raise ValueError(f"make_splits: official_split values {unknown} not in {SPLITS} or empty")
    return official


def _spread_classes(assigned: np.ndarray, presence: np.ndarray, rank, priority, n_targets: int) -> None:
    """The repair pass, in place on `assigned` (pool patient -> target split): every class present gets a
    patient in every target split where it can, rarest class first; a patient moves only when its split keeps
    every class it had, the lowest `priority` first."""
    counts = np.stack([presence[assigned == t].sum(axis=0) for t in range(n_targets)])
    for c in np.argsort(rank):
        for t in range(n_targets):
            if counts[t, c] > 0:
                continue
            donor = int(counts[:, c].argmax())
            if counts[donor, c] < 2:
                break  # the class has a single patient: nothing to spread
            candidates = np.flatnonzero((assigned == donor) & presence[:, c])
            for p in candidates[np.argsort(priority[candidates])]:
                if (counts[donor, presence[p]] >= 2).all():  # the donor keeps every class it had
                    assigned[p] = t
                    counts[donor] -= presence[p]
                    counts[t] += presence[p]
                    break


def linked_patients(groups):
    """A function patient -> the patient that stands for its group: groups of patients that must share a
    split (overlapping groups merge), each patient outside every group standing for itself."""
    parent = {}

    def root(p):
        while parent.get(p, p) != p:
            p = parent[p]
        return p

    for group in groups:
        members = sorted(map(str, group))
        for member in members[1:]:
            a, b = root(members[0]), root(member)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return lambda patient: root(patient)


# --------------------------------------------------------------------------- the source protocol

PROTOCOLS = ("paper", "held-out-test")


def paper_source_rows(df: pd.DataFrame, key: str) -> tuple[pd.DataFrame, dict]:
    """The rows the paper pretrains source `key` on (Section 5.2), before its 90/10 split.

    Every image of the download, whatever its official split: ChestX-ray14's test_list.txt
    images too; for EyePACS the official test set's images of grades 1-4 (the paper adds 14,043)
    and none of its grade-0 images. The official split is dropped (make_splits then carves val
    from all rows) and kept for the record as ``shipped_split``. Returns (rows, {"added_from_test":
    n, "left_out_test": n}), the counts 0 where the download ships no test split."""
    info = {"added_from_test": 0, "left_out_test": 0}
    if "official_split" not in df.columns:
        return df, info
    shipped = df["official_split"].fillna("").astype(str)
    keep = np.ones(len(df), dtype=bool)
    if key == "eyepacs":
        is_test = (shipped == "test").to_numpy()
        added = is_test & df["label"].isin(EYEPACS_TEST_GRADES_ADDED).to_numpy()
        keep = ~is_test | added
        info = {"added_from_test": int(added.sum()), "left_out_test": int((is_test & ~added).sum())}
    else:
        info["added_from_test"] = int((shipped == "test").sum())
    out = df[keep].drop(columns="official_split").assign(shipped_split=shipped[keep])
    return out.reset_index(drop=True), info


def split_counts(df: pd.DataFrame, classes: list[str], task: str) -> dict[str, dict[str, int]]:
    """{split: {class: number of images}} (multi-label: images carrying the class)."""
    counts = {}
    for split in SPLITS:
        part = df[df["split"] == split]
        if task == "multilabel":
            names = part["labels"].fillna("").astype(str).str.split("|").explode()
            found = names[names != ""].value_counts()
        else:
            found = part["label"].astype(int).map(dict(enumerate(classes))).value_counts()
        counts[split] = {c: int(found.get(c, 0)) for c in classes}
    return counts


def count_table(df: pd.DataFrame, classes: list[str], task: str) -> pd.DataFrame:
    """Class x split image counts with totals, for printing."""
    table = pd.DataFrame(split_counts(df, classes, task)).reindex(columns=list(SPLITS))
    table["all"] = table.sum(axis=1)
    images = df["split"].value_counts().reindex(list(SPLITS), fill_value=0)
    table.loc["(images)"] = [*images.tolist(), len(df)]
    patients = df.groupby("split")["patient"].nunique().reindex(list(SPLITS), fill_value=0)
    table.loc["(patients)"] = [*patients.tolist(), df["patient"].nunique()]
    return table.astype(int)


# --------------------------------------------------------------------------- manifests

def load_manifest(csv_path) -> tuple[pd.DataFrame, dict]:
    """Read ``<key>.csv`` and its ``<key>.json`` sidecar (written by prepare_data.py) and check
    them: required columns, split names, label indices / names against the sidecar's classes."""
    csv_path = Path(csv_path)
    json_path = csv_path.with_suffix(".json")
    if not csv_path.is_file():
        raise ValueError(f"{csv_path}: manifest not found (write it with prepare_data.py)")
    meta = _read_sidecar(json_path)
    task = meta["task"]
    text_columns = {c: str for c in ("image", "labels", "patient", "split", "official_split", "shipped_split",
                                     "label_name")}
    df = files.read_table(csv_path, dtype=text_columns, keep_default_na=False, na_values=[""])
    label_column = "label" if task == "multiclass" else "labels"
    files.require_columns(df, ("image", label_column, "patient", "split"), csv_path)
    if df.empty:
        raise ValueError(f"{csv_path}: manifest has no rows")
    for column in ("labels", "official_split", "shipped_split", "label_name"):
        if column in df.columns:
            df[column] = df[column].fillna("")
    _check_rows(df, csv_path, task, meta["classes"])
    _check_no_leak(df, csv_path)
    return df, meta


def _read_sidecar(json_path: Path) -> dict:
    """The manifest's JSON sidecar, checked: a JSON object with key, domain, task and classes."""
    if not json_path.is_file():
        raise ValueError(f"{json_path}: manifest sidecar not found (prepare_data.py writes it next to the CSV)")
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{json_path}: not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{json_path}: expected a JSON object")
    missing = [k for k in ("key", "domain", "task", "classes") if k not in meta]
    if missing:
        raise ValueError(f"{json_path}: missing key(s) {missing}")
    task, classes = meta["task"], meta["classes"]
    if task not in ("multiclass", "multilabel"):
        raise ValueError(f"{json_path}: task {task!r} is not multiclass or multilabel")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{json_path}: 'classes' must be a non-empty list of names")
    return meta


def _check_rows(df: pd.DataFrame, csv_path: Path, task: str, classes: list) -> None:
    """Every row has an image, a patient, a known split and a label of the sidecar's classes (the first bad row
    is named); multiclass labels become int64 in place."""
    row_number = df.index.to_numpy() + 2

    def fail(mask, problem):
        i = int(np.flatnonzero(mask)[0])
        raise ValueError(f"{csv_path}: row {row_number[i]}: {problem(i)}")

    for column in ("image", "patient"):
        if df[column].isna().any():
            fail(df[column].isna().to_numpy(), lambda i: f"empty {column!r}")
    bad = ~df["split"].isin(SPLITS).to_numpy()
    if bad.any():
        fail(bad, lambda i: f"split {df['split'].iloc[i]!r} is not one of {SPLITS}")
    if task == "multiclass":
        label = pd.to_numeric(df["label"], errors="coerce")
        bad = (label.isna() | (label != label.round()) | (label < 0) | (label >= len(classes))).to_numpy()
        if bad.any():
            fail(bad, lambda i: f"label {str(df['label'].iloc[i])!r} is not a class index 0..{len(classes) - 1}")
        df["label"] = label.astype(np.int64)
    else:
        known = set(classes)
        for value in df["labels"].unique():
            unknown = [n for n in value.split("|") if n and n not in known]
            if unknown:
                fail((df["labels"] == value).to_numpy(),
                     lambda i: f"label {unknown[0]!r} is not one of the sidecar's classes")


def _check_no_leak(df: pd.DataFrame, csv_path: Path) -> None:
    """A hand edit must not leak across splits: no image (by its real path: a symlink and its target are one
    file) and no patient in two splits."""
    for keys, what in ((real_paths(df["image"]), "image"), (df["patient"], "patient")):
        splits_of = df["split"].groupby(keys.to_numpy(), sort=False).nunique()
        leaked = splits_of[splits_of > 1]
        if len(leaked):
            at = (keys == leaked.index[0]).to_numpy()
            rows = df.index[at].to_numpy() + 2
            names = list(dict.fromkeys(df.loc[at, what]))
            found = sorted(set(df.loc[at, "split"]))
            shown = repr(names[0]) if len(names) == 1 else f"{names[0]!r} (also as {', '.join(map(repr, names[1:3]))})"
            raise ValueError(f"{csv_path}: {what} {shown} is in the {' and '.join(found)} splits (rows "
                             f"{', '.join(map(str, rows[:5]))}); a {what} must stay in one split "
                             f"({len(leaked)} {what}s affected); re-run prepare_data.py")


def real_paths(images: pd.Series) -> pd.Series:
    """Each image's real path, symlinks resolved: a file reached through a link and the link's target are one
    image. Each folder is resolved once, then only the files that are links themselves (one lstat each)."""
    images = images.astype(str)
    folders = {folder: os.path.realpath(folder) for folder in set(map(os.path.dirname, images))}
    return images.map(lambda p: os.path.realpath(p) if os.path.islink(p) else
                      os.path.join(folders[os.path.dirname(p)], os.path.basename(p)))


def aggregate_manifests(csv_paths) -> tuple[pd.DataFrame, dict]:
    """The paper's "All" set (5.2.3): the manifests' rows as one multi-label set whose labels
    are prefixed by dataset key (``chestxray14/Effusion``, ``breakhis/malignant``,
    ``eyepacs/grade_3``): 15 + 2 + 5 = 22 labels for the three sources.

    Multi-class rows become one prefixed label; multi-label rows keep all theirs (prefixed).
    Patients are prefixed by key, splits are kept; ``domain`` and ``source`` columns say where
    each row comes from (the transform chain follows ``domain``). ``meta["label_groups"]`` maps
    each source key to its prefixed label names, in ``classes`` order: a row's own labels are
    ``label_groups[row.source]``, which is what a masked loss (``--label-mask``) keeps; plain BCE
    counts the other sources' labels as negatives (the paper states neither; both are the kit's choice)."""
    paths = [Path(p) for p in csv_paths]
    if not paths:
        raise ValueError("aggregate_manifests: no manifests given")
    frames, classes, keys, metas, groups = [], [], [], [], {}
    for path in paths:
        df, meta = load_manifest(path)
        key = meta["key"]
        if key in keys:
            raise ValueError(f"{path}: dataset key {key!r} appears twice in the aggregate")
        prefixed = [f"{key}/{c}" for c in meta["classes"]]
        if meta["task"] == "multiclass":
            labels = df["label"].map(dict(enumerate(prefixed)))
        else:
            canonical = {v: "|".join(f"{key}/{n}" for n in v.split("|") if n) for v in df["labels"].unique()}
            labels = df["labels"].map(canonical)
        frames.append(pd.DataFrame({
            "image": df["image"], "labels": labels, "patient": f"{key}/" + df["patient"].astype(str),
            "split": df["split"], "domain": meta["domain"], "source": key,
        }))
        classes += prefixed
        groups[key] = prefixed
        keys.append(key)
        metas.append(meta)
    df = pd.concat(frames, ignore_index=True)
    meta = {
        "key": "all", "domain": "mixed", "task": "multilabel", "classes": classes,
        "headline_metric": "auroc", "class_weights": "none", "sources": keys, "label_groups": groups,
        "domains": {m["key"]: m["domain"] for m in metas},
        "manifests": [str(p.resolve()) for p in paths],
        "counts": split_counts(df, classes, "multilabel"),
    }
    return df, meta


def adopt(csv_path, key: str, out_dir) -> Path:
    """Copy a manifest (CSV + JSON sidecar, checked with load_manifest) into `out_dir` as `<key>.csv`,
    its sidecar's key set to `key`: how the workflow takes in a target you prepared yourself (targets: NAME=CSV)."""
    df, meta = load_manifest(csv_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files.write_text_atomic(out_dir / f"{key}.csv", Path(csv_path).read_text())
    files.write_text_atomic(out_dir / f"{key}.json", json.dumps({**meta, "key": key}, indent=2) + "\n")
    print(f"{csv_path}: {len(df)} images, {meta['domain']} {meta['task']}, classes {meta['classes']} -> "
          f"{out_dir / key}.csv")
    return out_dir / f"{key}.csv"


def load_manifests(csv_paths) -> tuple[pd.DataFrame, dict]:
    """One manifest (load_manifest), or several as the aggregated set (aggregate_manifests)."""
    csv_paths = list(csv_paths)
    return load_manifest(csv_paths[0]) if len(csv_paths) == 1 else aggregate_manifests(csv_paths)
