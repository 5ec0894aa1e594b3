"""EyePACS, Kaggle's diabetic retinopathy set of 2015, a source (efi, ICDR grades 0-4): its reader."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .. import files
from .layout import dataset_root, image_suffix, index_files, no_images, stem, walk
from .rows import DR_GRADES_5, ORIGIN, PROBLEM, frame, grades, missing_error, no_problems, note, origins


_EYEPACS_NAME = re.compile(r"^(?P<patient>\d+)_(?P<eye>left|right)$")


def _eyepacs_table(path: Path, folder: Path, index: dict[str, str], check_files: bool) -> pd.DataFrame:
    table = files.read_table(path, dtype=str, keep_default_na=False)
    table.columns = [str(c).strip() for c in table.columns]
    files.require_columns(table, ("image", "level"), path)
    row_number = table.index.to_numpy() + 2
    names = table["image"].str.strip()
    problem = no_problems(len(table))
    parts = names.str.extract(_EYEPACS_NAME).fillna("")
    note(problem, parts["patient"].to_numpy() == "",
         lambda i: f"image {names.iloc[i]!r} is not <patient>_<left|right>")
    level = grades(table["level"], 5, "level", problem)
    image = pd.Series([index.get(n) or str(folder / f"{n}.jpeg") for n in names])
    if check_files:
        absent = ~names.isin(index.keys()).to_numpy() & (problem == "")
        if absent.any():
            raise missing_error(path, pd.DataFrame({"image": image[absent]}), row_number[absent],
                                f"looked in {folder}")
    return pd.DataFrame({"image": image, "label": level, "patient": parts["patient"], "eye": parts["eye"],
                         ORIGIN: origins(path, row_number), PROBLEM: problem})


def read_eyepacs(root, *, check_files: bool = True, skip_bad: bool = False) -> pd.DataFrame:
    """EyePACS (Kaggle DR 2015): ``trainLabels.csv`` (``image,level``) + ``train/<image>.jpeg``
    (``images/`` accepted too); with ``retinopathy_solution.csv`` and a ``test/`` folder, those
    rows form the official test split. Patient = number before ``_left``/``_right``."""
    root = dataset_root(root)
    labels_csv = next((root / n for n in ("trainLabels.csv", "trainLabels.csv.zip") if (root / n).is_file()), None)
    if labels_csv is None:
        raise ValueError(f"{root}: no trainLabels.csv found")
    folder = next((root / n for n in ("train", "images") if (root / n).is_dir()), root / "train")
    # Indexed by stem: the Kaggle images are .jpeg, a user's resized copy may be .png.
    index = index_files(((n, p) for n, p in walk(folder) if image_suffix(n)), key=stem) if folder.is_dir() else {}
    if check_files and not folder.is_dir():
        raise ValueError(f"{root}: no train/ (or images/) folder next to {labels_csv.name}")
    parts = [_eyepacs_table(labels_csv, folder, index, check_files)]
    solution, test_folder = root / "retinopathy_solution.csv", root / "test"
    has_test = solution.is_file() and test_folder.is_dir()
    if has_test:
        test_index = index_files(((n, p) for n, p in walk(test_folder) if image_suffix(n)), key=stem)
        parts.append(_eyepacs_table(solution, test_folder, test_index, check_files))
    df = pd.concat(parts, ignore_index=True)
    if df.empty:
        raise no_images(root, f"{labels_csv.name} has no rows")
    official = np.repeat(["train", "test"][: len(parts)], [len(p) for p in parts]) if has_test else None
    return frame(df["image"], df["patient"], label=df["label"], classes=DR_GRADES_5, official_split=official,
                 origin=df[ORIGIN], problem=df[PROBLEM], skip_bad=skip_bad, eye=df["eye"])
