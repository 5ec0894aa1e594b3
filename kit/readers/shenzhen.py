"""Shenzhen (NLM-China) chest X-rays, a target (cxr, normal or tuberculosis): its reader."""
from __future__ import annotations

import re

import pandas as pd

from .layout import dataset_root, index_files, no_images, walk
from .rows import frame


SHENZHEN_CLASSES = ("normal", "tuberculosis")

_SHENZHEN_NAME = re.compile(r"^CHNCXR_(?P<id>\d{4})_(?P<label>[01])\.png$", re.IGNORECASE)


def read_shenzhen(root, *, check_files: bool = True, skip_bad: bool = False) -> pd.DataFrame:
    """Shenzhen (NLM-China) TB set: ``CHNCXR_<nnnn>_<0|1>.png`` (native place
    ``ChinaSet_AllFiles/CXR_png/``; found at any depth). Last digit = label (0 normal, 1 TB)."""
    root = dataset_root(root)
    found = [(n, p, m) for n, p in walk(root) if (m := _SHENZHEN_NAME.match(n))]
    index_files((n, p) for n, p, _ in found)
    if not found:
        raise no_images(root, "no CHNCXR_<nnnn>_<0|1>.png at any depth")
    labels = [int(m["label"]) for _, _, m in found]
    return frame([p for _, p, _ in found], [f"CHNCXR_{m['id']}" for _, _, m in found], label=labels,
                 classes=SHENZHEN_CLASSES)
