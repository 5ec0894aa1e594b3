"""NIH ChestX-ray14, a source (cxr, multi-label: 14 findings + No Finding): its reader."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from .. import files
from .layout import dataset_root, index_files, no_images, read_names, scan
from .rows import frame, missing_error, no_problems, note, origins


CHESTXRAY14_CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema",
                       "Fibrosis", "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening",
                       "Pneumonia", "Pneumothorax", "No Finding")


def read_chestxray14(root, *, check_files: bool = True, skip_bad: bool = False) -> pd.DataFrame:
    """NIH ChestX-ray14: ``Data_Entry_2017_v2020.csv`` (or ``Data_Entry_2017.csv``, ``.gz`` too),
    images in ``images/`` or ``images_001/images/`` ... ``images_012/images/``, optional
    ``train_val_list.txt`` / ``test_list.txt`` (the official, patient-level test split).

    With ``check_files=False`` the metadata alone is read (images that are not there get the
    path ``<root>/images/<name>``), which is how the full 112,120-row table is tested.
    """
    root = dataset_root(root)
    names = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
    candidates = [root / f"{n}{gz}" for n in names for gz in ("", ".gz")]
    table = next((p for p in candidates if p.is_file()), None)
    if table is None:
        raise ValueError(f"{root}: no {' or '.join(names)} (.gz) found")

    # The header line `OriginalImage[Width,Height]` is unquoted, so data rows have more fields
    # than the header names; read by position after locating the columns in the header.
    header = files.read_table(table, nrows=0).columns.tolist()
    wanted = ("Image Index", "Finding Labels", "Patient ID")
    header = [str(h).strip() for h in header]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ValueError(f"{table}: missing column(s) {missing}; found {header}")
    positions = [header.index(c) for c in wanted]
    meta = files.read_table(table, header=None, skiprows=1, usecols=positions, dtype=str, keep_default_na=False)
    meta.columns = [wanted[positions.index(p)] for p in meta.columns]
    meta = meta.apply(lambda column: column.str.strip())
    row_number = meta.index.to_numpy() + 2  # 1-based line in the file, after the header
    if meta.empty:
        raise no_images(root, f"{table.name} has no rows")
    problem = no_problems(len(meta))
    for column in ("Image Index", "Patient ID"):
        note(problem, meta[column].to_numpy() == "", lambda i: f"empty {column!r}")

    # Labels: validate and canonicalise each distinct combination once (~800 of them).
    order = {name: i for i, name in enumerate(CHESTXRAY14_CLASSES)}
    canonical: dict[str, str] = {}
    for combo in meta["Finding Labels"].unique():
        found = [s.strip() for s in combo.split("|") if s.strip()]
        unknown = [s for s in found if s not in order]
        if unknown or not found:
            text = (f"unknown label {unknown[0]!r}" if unknown else "empty 'Finding Labels'") + \
                f"; expected {'|'.join(CHESTXRAY14_CLASSES)}"
            note(problem, meta["Finding Labels"].to_numpy() == combo, lambda i: text)
        canonical[combo] = "|".join(sorted(set(found) & set(order), key=order.__getitem__))
    labels = meta["Finding Labels"].map(canonical)

    # Images: one os.scandir per folder, never a stat per listed file.
    folders = [root / "images"] + sorted(p for p in root.glob("images_*/images") if p.is_dir())
    folders = [f for f in folders if f.is_dir()]
    index = index_files(pair for folder in folders for pair in scan(folder))
    default = str(root / "images")
    image = [index.get(n) or os.path.join(default, n) for n in meta["Image Index"]]
    frame_images = pd.Series(image)
    if check_files:
        if not folders:
            raise ValueError(f"{root}: no images/ or images_*/images/ folder (metadata only? "
                             f"use --no-check-files)")
        absent = ~meta["Image Index"].isin(index.keys()).to_numpy() & (problem == "")
        if absent.any():
            rows = pd.DataFrame({"image": frame_images[absent]})
            raise missing_error(table, rows, row_number[absent],
                                f"looked in {', '.join(str(f) for f in folders)}")

    # Official split (patient-level): test_list.txt -> test, train_val_list.txt -> train (val is
    # carved from it by make_splits); rows in neither list stay unassigned ("").
    official = None
    test_list, train_list = root / "test_list.txt", root / "train_val_list.txt"
    if test_list.is_file():
        is_test = meta["Image Index"].isin(read_names(test_list)).to_numpy()
        is_train = (meta["Image Index"].isin(read_names(train_list)).to_numpy() if train_list.is_file()
                    else ~is_test)
        official = np.where(is_test, "test", np.where(is_train, "train", ""))
    return frame(image, meta["Patient ID"], labels=labels, official_split=official,
                 origin=origins(table, row_number), problem=problem, skip_bad=skip_bad)
