"""COVID-19 Radiography Database, a target (cxr, COVID, Lung_Opacity, Normal, Viral Pneumonia): its reader."""
from __future__ import annotations

import os

import pandas as pd

from .layout import canonical_folder, class_folders, dataset_root, images_in, stem
from .rows import frame


COVID19_CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")


def read_covid19_radiography(root, *, check_files: bool = True, skip_bad: bool = False) -> pd.DataFrame:
    """COVID-19 Radiography Database: ``COVID-19_Radiography_Dataset/<Class>/images/*.png``
    (newer; ``masks/`` and metadata files ignored) or ``<Class>/*.png`` (older), with or without
    the ``COVID-19_Radiography_Dataset/`` level. The four classes are always the canonical ones;
    a class that is not there is just absent. Patient = image id."""
    root = dataset_root(root)
    aliases = {"COVID-19": "COVID", "Lung Opacity": "Lung_Opacity"}
    _, folders = class_folders(root, ("COVID-19_Radiography_Dataset", "COVID-19 Radiography Database"),
                               lambda n: canonical_folder(n, COVID19_CLASSES, aliases),
                               f"expected some of {list(COVID19_CLASSES)}")
    images, labels = [], []
    for cls, folder in sorted(folders.items(), key=lambda kv: COVID19_CLASSES.index(kv[0])):
        inner = folder / "images"
        paths = images_in(inner if inner.is_dir() else folder, recursive=False)
        if not paths:
            raise ValueError(f"{folder}: class folder holds no images")
        images += paths
        labels += [COVID19_CLASSES.index(cls)] * len(paths)
    return frame(images, [stem(os.path.basename(p)) for p in images], label=labels, classes=COVID19_CLASSES)
