"""Readers of the datasets' native layouts: one module per dataset, and the registry of them.

Each reader takes a dataset folder as the user downloaded it (``root`` = the data set's own
folder, e.g. ``DATA/shenzhen`` holding ``ChinaSet_AllFiles/``) and returns one row per image:

* ``image``   absolute path,
* ``label``   int class index (multi-class) or ``labels`` (``|``-joined class names, multi-label),
* ``patient`` str (the image id where the data set has no patient ids),
* ``official_split`` (optional) ``train``/``val``/``test`` or ``""`` where the data set ships a split,
* extra columns (``label_name``; breakhis ``subtype, slide, magnification``; messidor
  ``base, macular_edema_risk``; eyepacs, deepdrid ``eye``),
* ``origin`` (the metadata file and row the label came from, "" where the file name is the
  label) and ``problem`` (why the row cannot be used, "" when it can): for error messages and
  the skipped list, not written to the manifest. A reader raises on the first row with a
  problem unless called with ``skip_bad=True``.

The package: ``rows`` (the frame every reader returns, bad rows, image checks) and ``layout``
(finding a layout's files) are shared; ``chestxray14``, ``breakhis``, ``eyepacs``, ``shenzhen``,
``covid19_radiography``, ``kather2016``, ``messidor``, ``deepdrid`` read the paper's data sets,
``folder`` and ``table`` (``--dataset csv``) a user's own. Splitting and writing the manifest is
``manifests.py``'s job.

    from kit.readers import read_dataset
    df, classes = read_dataset("shenzhen", "DATA/shenzhen")
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from .breakhis import BREAKHIS_CLASSES, parse_breakhis_name, read_breakhis
from .chestxray14 import CHESTXRAY14_CLASSES, read_chestxray14
from .covid19_radiography import COVID19_CLASSES, read_covid19_radiography
from .deepdrid import label_deepdrid_rows, read_deepdrid
from .eyepacs import read_eyepacs
from .folder import folder_classes, read_folder
from .kather2016 import KATHER2016_CLASSES, read_kather2016
from .layout import IMAGE_EXTENSIONS, image_suffix, walk
from .messidor import parse_messidor_sheet, read_messidor
from .rows import DR_GRADES_4, DR_GRADES_5, ORIGIN, PROBLEM, bad_rows, bad_rows_error, check_images, image_problem
from .shenzhen import SHENZHEN_CLASSES, read_shenzhen
from .table import TASKS, read_table


@dataclass(frozen=True)
class DatasetSpec:
    key: str
    domain: str                 # cxr | hwsi | efi ("" for folder and csv: chosen with --domain)
    task: str                   # multiclass | multilabel
    classes: tuple[str, ...]    # index order; () for folder (sorted sub-folder names) and csv (from the table)
    headline_metric: str        # accuracy | kappa | auroc
    class_weights: str          # "balanced" | "none": recommended loss weighting (paper 5.2.1/5.3)
    reader: Callable[..., pd.DataFrame]


DATASETS: dict[str, DatasetSpec] = {s.key: s for s in (
    DatasetSpec("chestxray14", "cxr", "multilabel", CHESTXRAY14_CLASSES, "auroc", "none", read_chestxray14),
    DatasetSpec("breakhis", "hwsi", "multiclass", BREAKHIS_CLASSES, "accuracy", "none", read_breakhis),
    DatasetSpec("eyepacs", "efi", "multiclass", DR_GRADES_5, "kappa", "balanced", read_eyepacs),
    DatasetSpec("shenzhen", "cxr", "multiclass", SHENZHEN_CLASSES, "accuracy", "none", read_shenzhen),
    DatasetSpec("covid19_radiography", "cxr", "multiclass", COVID19_CLASSES, "accuracy", "none",
                read_covid19_radiography),
    DatasetSpec("kather2016", "hwsi", "multiclass", KATHER2016_CLASSES, "accuracy", "none", read_kather2016),
    DatasetSpec("messidor", "efi", "multiclass", DR_GRADES_4, "kappa", "balanced", read_messidor),
    DatasetSpec("deepdrid", "efi", "multiclass", DR_GRADES_5, "kappa", "balanced", read_deepdrid),
    DatasetSpec("folder", "", "multiclass", (), "accuracy", "none", read_folder),
    DatasetSpec("csv", "", "multiclass", (), "accuracy", "none", read_table),  # task and metric: --task, --metric
)}


def read_dataset(key: str, root, *, check_files: bool = True, skip_bad: bool = False,
                 **options) -> tuple[pd.DataFrame, list[str]]:
    """Run the reader of `key` on `root`; returns (frame, classes in index order).

    check_files: the reader's own check that listed images exist (one error with the count).
    skip_bad: rows that cannot be labelled stay in the frame with their ``problem`` instead of
    raising (prepare_data.py drops and lists them). options: the reader's own (folder:
    patient_regex; csv: image_col, label_col, label_cols, patient_col, split_col, task)."""
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {key!r}; choose from {list(DATASETS)}")
    spec = DATASETS[key]
    df = spec.reader(root, check_files=check_files, skip_bad=skip_bad, **options)
    if df.empty:
        raise ValueError(f"{os.path.abspath(root)}: the {key} reader found no images (an empty label table or folder?)")
    return df, list(df.attrs.get("classes") or spec.classes)

