"""Your own data set as a labelled table, CSV, TSV or Excel (``--dataset csv``): its reader."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .. import files
from .rows import frame, no_problems, note, origins


_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "test": "test", "testing": "test", "": ""}
TASKS = ("multiclass", "multilabel", "ordinal")
MAX_GRADES = 100  # an ordinal scale's grades from lowest to highest (every one a class)
# Label values that mean "no label": pandas' own missing-value spellings (read_csv turns them into NaN, so a class
# of that name would come back as a missing value), in any case. A row with one is a bad row, never a class.
MISSING = frozenset({"nan", "-nan", "na", "n/a", "#n/a", "#n/a n/a", "#na", "<na>", "null", "none", "nat",
                     "-1.#ind", "-1.#qnan", "1.#ind", "1.#qnan"})


def _read_any_table(path: Path) -> pd.DataFrame:
    """A CSV, TSV or Excel table as text, one line naming the file when it cannot be read."""
    suffix = path.suffix.lower()
    if suffix in (".xls", ".xlsx"):
        return files.read_sheet(path, dtype=str)
    return files.read_table(path, sep="\t" if suffix in (".tsv", ".tab") else ",", dtype=str, keep_default_na=False)


def read_table(root, *, check_files: bool = True, skip_bad: bool = False, image_col: str = "image",
               label_col: str | None = None, label_cols: list[str] | None = None, patient_col: str | None = None,
               split_col: str | None = None, task: str = "multiclass") -> pd.DataFrame:
    """Any labelled image table (``--dataset csv``): ``root`` is the CSV, TSV or Excel file, one row
    per image. ``image_col`` holds the path (relative paths are taken from the table's folder);
    ``label_col`` one label per image: class names (multiclass) or integer grades (ordinal: the
    classes are every grade from the lowest to the highest); or ``label_cols`` several 0/1 columns
    (multilabel: the columns are the classes). ``patient_col`` (default: each image its own
    patient) and ``split_col`` (train/val/test, respected like an official split; empty = to be
    split) are optional. Every class needs at least 2 images. ``df.attrs["classes"]`` holds the
    classes in index order."""
    path = Path(os.path.abspath(os.path.expanduser(str(root))))
    _check_options(path, task, label_col, label_cols)
    table = _read_any_table(path).fillna("")
    if table.empty:
        raise ValueError(f"{path}: the table has no rows")
    wanted = [image_col, *(label_cols or [label_col]), *(c for c in (patient_col, split_col) if c)]
    files.require_columns(table, wanted, path)
    table = table.apply(lambda column: column.astype(str).str.strip())
    problem = no_problems(len(table))  # a row's first problem, noted in place: "" = none
    origin = origins(path, table.index.to_numpy() + 2)
    note(problem, table[image_col] == "", lambda i: f"empty {image_col!r}")
    for column in label_cols or [label_col]:  # NaN, NA, null, ...: a missing label, not a class
        missing = table[column].str.lower().isin(MISSING)
        note(problem, missing, lambda i, c=column: f"missing label: {c!r} is {table[c].iloc[i]!r}")
    image = [p if not p or os.path.isabs(p) else os.path.normpath(path.parent / p) for p in table[image_col]]
    if label_cols:
        classes, label_kwargs, counts = _flag_labels(table, label_cols, problem)
    else:
        classes, label_kwargs, counts = _column_labels(path, table, label_col, task, problem)

    patient = table[patient_col] if patient_col else [os.path.relpath(p, path.parent) if p else "" for p in image]
    if patient_col:
        note(problem, table[patient_col] == "", lambda i: f"empty {patient_col!r}")
    official = None
    if split_col:
        split = table[split_col].str.lower()
        note(problem, ~split.isin(list(_SPLIT_NAMES)),
             lambda i: f"{split_col!r} is {table[split_col].iloc[i]!r}, not train, val or test")
        official = [_SPLIT_NAMES.get(v, "") for v in split]
    df = frame(image, patient, official_split=official, origin=origin, problem=problem, skip_bad=skip_bad,
               **label_kwargs)  # bad rows first: they are the likelier cause of a rare class
    rare = {c: n for c, n in counts.items() if n < 2}
    if rare:
        listing = ", ".join(f"{c!r}: {n}" for c, n in rare.items())
        raise ValueError(f"{path}: every class needs at least 2 images (one for training, one for validation); "
                         f"{listing}")
    df.attrs["classes"] = classes
    df.attrs["patients_from"] = f"column {patient_col!r}" if patient_col else "each image its own patient"
    return df


def _check_options(path: Path, task: str, label_col, label_cols) -> None:
    """The table exists and the label options fit the task, before anything is read."""
    if not path.is_file():
        raise ValueError(f"{path}: table not found (--dataset csv takes the CSV, TSV or Excel file as --root)")
    if task not in TASKS:
        raise ValueError(f"--task {task!r}: choose from {', '.join(TASKS)}")
    if (label_col is None) == (not label_cols):
        raise ValueError("--dataset csv needs either --label-col (one label per image) or --label-cols (0/1 columns)")
    if (task == "multilabel") != bool(label_cols):
        raise ValueError("--label-cols goes with --task multilabel, --label-col with multiclass or ordinal")
    joined = [c for c in label_cols or [] if "|" in c]
    if joined:
        raise ValueError(f"--label-cols {joined[0]!r}: a class name cannot hold '|' (a manifest joins a multi-label "
                         f"row's classes with it); rename the column")


def _flag_labels(table: pd.DataFrame, label_cols: list, problem) -> tuple[list, dict, dict]:
    """Multilabel, a 0/1 column per class: (classes, frame()'s label keywords, good rows per class); a value
    that is not 0 or 1 is noted as the row's problem."""
    values = table[label_cols].apply(lambda column: column.str.lower())
    ones = values.isin(["1", "1.0", "true", "yes"])
    bad = ~(ones | values.isin(["0", "0.0", "false", "no"]))
    note(problem, bad.any(axis=1), lambda i: f"{bad.columns[bad.iloc[i].to_numpy()][0]!r} is "
                                               f"{table.iloc[i][bad.columns[bad.iloc[i].to_numpy()][0]]!r}, not 0 or 1")
    classes = list(label_cols)
    labels = ["|".join(c for c, on in zip(classes, row) if on) for row in ones.to_numpy()]
    return classes, {"labels": labels}, {c: int(ones[c][problem == ""].sum()) for c in classes}


def _column_labels(path: Path, table: pd.DataFrame, label_col: str, task: str, problem) -> tuple[list, dict, dict]:
    """One label per row in `label_col`, a class name (multiclass: classes sorted, numbers by value) or an
    integer grade (ordinal): (classes, frame()'s label keywords, good rows per class)."""
    raw = table[label_col]
    note(problem, raw == "", lambda i: f"empty {label_col!r}")
    if task == "ordinal":
        classes, names = _grades(path, raw, label_col, problem)
    else:
        classes = sorted(set(raw[problem == ""]), key=lambda v: (not v.lstrip("-").isdigit(), int(v) if
                                                                 v.lstrip("-").isdigit() else 0, v))
        names = list(raw)
    index = {c: i for i, c in enumerate(classes)}
    counts = {c: int(sum(n == c for n, ok in zip(names, problem) if ok == "")) for c in classes}
    return classes, {"label": [index.get(n, 0) for n in names], "classes": classes}, counts


def _grades(path: Path, raw: pd.Series, label_col: str, problem) -> tuple[list, list]:
    """Ordinal labels: (every grade from the lowest to the highest as a class, each row's grade as text, "" for a
    bad row). A grade far from the others (a typo?) that would make more than MAX_GRADES classes is refused."""
    number = pd.to_numeric(raw, errors="coerce")
    note(problem, number.isna() | (number != number.round()),
         lambda i: f"{label_col!r} is {raw.iloc[i]!r}, not an integer grade")
    grades = number[problem == ""].astype(int)
    if grades.empty:
        raise ValueError(f"{path}: no row has an integer grade in {label_col!r}")
    low, high = int(grades.min()), int(grades.max())
    if high - low + 1 > MAX_GRADES:  # every grade in between becomes a class: name the far-out one
        outlier = high if high - grades.median() >= grades.median() - low else low
        row = int(grades.index[grades == outlier][0]) + 2
        raise ValueError(f"{path}: row {row}: {label_col!r} is {outlier}, so the grades would run from {low} "
                         f"to {high} ({high - low + 1} classes; an ordinal task takes at most {MAX_GRADES}): "
                         f"a typo?")
    classes = [str(g) for g in range(low, high + 1)]
    return classes, [str(int(v)) if ok == "" else "" for v, ok in zip(number.fillna(0), problem)]
