"""Kather 2016 colorectal histology tiles, a target (hwsi, 8 tissue classes): its reader."""
from __future__ import annotations

import os
import re

import pandas as pd

from .layout import canonical_folder, class_folders, dataset_root, images_in, stem
from .rows import frame


KATHER2016_CLASSES = ("TUMOR", "STROMA", "COMPLEX", "LYMPHO", "DEBRIS", "MUCOSA", "ADIPOSE", "EMPTY")


def read_kather2016(root, *, check_files: bool = True, skip_bad: bool = False) -> pd.DataFrame:
    """Kather 2016 colorectal texture tiles: ``Kather_texture_2016_image_tiles_5000/01_TUMOR`` ...
    ``08_EMPTY/*.tif`` (or the numbered folders directly under root). Patient = image id."""
    root = dataset_root(root)

    def match(name: str) -> str | None:
        m = re.match(r"^\d+_(.+)$", name)
        return canonical_folder(m[1], KATHER2016_CLASSES) if m else None

    _, folders = class_folders(root, ("Kather_texture_2016_image_tiles_5000",), match,
                               "expected 01_TUMOR ... 08_EMPTY")
    images, labels = [], []
    for cls, folder in sorted(folders.items(), key=lambda kv: KATHER2016_CLASSES.index(kv[0])):
        paths = images_in(folder, recursive=True)
        if not paths:
            raise ValueError(f"{folder}: class folder holds no images")
        images += paths
        labels += [KATHER2016_CLASSES.index(cls)] * len(paths)
    return frame(images, [stem(os.path.basename(p)) for p in images], label=labels,
                 classes=KATHER2016_CLASSES)
