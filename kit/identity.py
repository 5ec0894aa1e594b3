"""What data a run saw, by content: hashes of manifest rows, image paths and patient ids.

``rows_hash`` tells two manifests' rows apart by content (a re-made split, a changed label), so a
run's fingerprint and its evaluations name the data they used, not a path; ``data_identity`` is a
run's record of its train and val rows; ``key_hashes`` of image paths and dataset-prefixed patient
ids (``patient_keys``) are the compact record of which images and patients a model was trained on,
which evaluate.py checks a test split against.
"""
import hashlib

import numpy as np
import pandas as pd


def rows_hash(df: pd.DataFrame) -> str:
    """A content hash of manifest rows: image, label(s), split and patient of every row, in any
    order. Two frames hash alike exactly when they hold the same rows, so a re-made split (another
    --seed or --val-frac) or a changed label is told apart from the same data."""
    label = "label" if "label" in df.columns else "labels"
    table = df[["image", label, "split", "patient"]].astype(str)
    lines = sorted("\t".join(row) for row in table.itertuples(index=False, name=None))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def data_identity(df, data_meta: dict) -> dict:
    """What the data of a run is: dataset key, task, classes, and the content of the train and val
    rows it learns from (rows_hash over image, label, split, patient) with their counts."""
    used = df[df["split"].isin(["train", "val"])]
    counts = used["split"].value_counts()
    return {"key": data_meta["key"], "task": data_meta["task"], "classes": list(data_meta["classes"]),
            "rows": rows_hash(used), "train": int(counts.get("train", 0)), "val": int(counts.get("val", 0))}


def hash64(values) -> np.ndarray:
    """A 64-bit hash of each string (image paths, dataset-prefixed patient ids)."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "little", signed=True)
                        for v in values), dtype=np.int64)


def key_hashes(values) -> np.ndarray:
    """The sorted distinct hash64 of strings: a compact record of which images and patients a model
    was trained on (0.8 MB for ChestX-ray14's 112,120 images), for evaluate.py's overlap check."""
    return np.unique(hash64(values))


def patient_keys(df: pd.DataFrame, key: str) -> pd.Series:
    """Patient ids made unique across data sets (``<dataset key>/<patient>``; the aggregated set's
    patients carry their key already), so two data sets that both number patients 1, 2, ... never
    share a patient."""
    patients = df["patient"].astype(str)
    return patients if key == "all" else key + "/" + patients
