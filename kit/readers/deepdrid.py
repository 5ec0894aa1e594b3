"""DeepDRiD regular fundus images, a target (efi, ICDR grades 0-4): its reader and its eye labels."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .. import files
from .layout import dataset_root, index_files, no_images, stem, walk
from .rows import DR_GRADES_5, ORIGIN, PROBLEM, frame, grades, missing_error, no_problems, note, origins


def label_deepdrid_rows(table: pd.DataFrame, source="deepdrid csv") -> pd.DataFrame:
    """DeepDRiD rows -> ``eye`` (left/right, from the ``_l``/``_r`` in image_id) and ``label``.

    The label is the eye's own level (``_l`` -> ``left_eye_DR_Level``, ``_r`` ->
    ``right_eye_DR_Level``); when that column is empty, the one eye column that is filled
    (the real row ``56_r3`` fills the left one); when both are empty, ``patient_DR_Level``.
    ``problem`` says why a row cannot be used (no eye tag, a level that is no grade), else ""."""
    files.require_columns(table, ("patient_id", "image_id", "left_eye_DR_Level", "right_eye_DR_Level",
                             "patient_DR_Level"), source)
    row_number = table.index.to_numpy() + 2
    image_id = table["image_id"].astype(str).str.strip()
    eye = image_id.str.extract(r"_(?P<eye>[lr])\d*$", flags=re.IGNORECASE)["eye"].str.lower()
    problem = no_problems(len(table))
    note(problem, eye.isna().to_numpy(), lambda i: f"image_id {image_id.iloc[i]!r} has no _l/_r eye tag")
    left, right, patient = (pd.to_numeric(table[c], errors="coerce").to_numpy(dtype=np.float64)
                            for c in ("left_eye_DR_Level", "right_eye_DR_Level", "patient_DR_Level"))
    is_left = (eye == "l").to_numpy()
    own, other = np.where(is_left, left, right), np.where(is_left, right, left)
    level = np.where(~np.isnan(own), own, np.where(~np.isnan(other), other, patient))
    label = grades(pd.Series(level), 5, "DR level", problem)
    return pd.DataFrame({"image_id": image_id, "patient": table["patient_id"].astype(str).str.strip(),
                         "eye": np.where(is_left, "left", "right"), "label": label, "row": row_number,
                         PROBLEM: problem})


def read_deepdrid(root, *, check_files: bool = True, skip_bad: bool = False) -> pd.DataFrame:
    """DeepDRiD regular fundus images: ``regular_fundus_images/regular-fundus-training/*.csv``
    and ``regular-fundus-validation/*.csv`` (found at any depth); ``image_path`` (Windows paths)
    is ignored and ``<image_id>.jpg`` is looked up anywhere under the split folder.
    official_split = train (training) / val (validation); patient = patient_id."""
    root = dataset_root(root)
    split_dirs = {"train": "regular-fundus-training", "val": "regular-fundus-validation"}
    parts, official = [], []
    for split, dirname in split_dirs.items():
        folders = sorted(p for p in [root / dirname, *root.rglob(dirname)] if p.is_dir())
        folders = list(dict.fromkeys(folders))
        if len(folders) > 1:
            raise ValueError(f"{root}: {dirname} found twice ({folders[0]}, {folders[1]}); keep one")
        if not folders:
            continue
        folder = folders[0]
        csvs = sorted(p for p in folder.glob("*.csv") if not p.name.startswith("."))
        if len(csvs) != 1:
            raise ValueError(f"{folder}: expected one label CSV, found {[p.name for p in csvs] or 'none'}")
        table = files.read_table(csvs[0], dtype=str)
        table.columns = [str(c).strip() for c in table.columns]
        rows = label_deepdrid_rows(table, csvs[0])
        rows[ORIGIN] = origins(csvs[0], rows["row"])
        index = index_files(((n, p) for n, p in walk(folder) if n.lower().endswith(".jpg")), key=stem)
        rows["image"] = [index.get(i) or str(folder / "Images" / p / f"{i}.jpg")
                         for i, p in zip(rows["image_id"], rows["patient"])]
        if check_files:
            absent = ~rows["image_id"].isin(index.keys()).to_numpy() & (rows[PROBLEM] == "").to_numpy()
            if absent.any():
                raise missing_error(csvs[0], rows[absent], rows["row"].to_numpy()[absent],
                                    f"no <image_id>.jpg under {folder}")
        parts.append(rows)
        official += [split] * len(rows)
    if not parts:
        raise ValueError(f"{root}: no regular-fundus-training/ or regular-fundus-validation/ folder found")
    df = pd.concat(parts, ignore_index=True)
    if df.empty:
        raise no_images(root, "the DeepDRiD CSVs list no images")
    return frame(df["image"], df["patient"], label=df["label"], classes=DR_GRADES_5, official_split=official,
                 origin=df[ORIGIN], problem=df[PROBLEM], skip_bad=skip_bad, eye=df["eye"])
