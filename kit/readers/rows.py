"""A reader's rows: the frame every reader returns, its bad rows, and the image checks.

A reader returns one row per image (``image``, ``label`` or ``labels``, ``patient``, optional
``official_split`` and extra columns) assembled by ``frame``, which also settles an image listed
twice (identical repeats dropped, contradicting ones bad). Two more columns are for messages and
are not written to the manifest: ``origin`` (the metadata file and row a label came from) and
``problem`` (why the row cannot be used, "" when it can). ``check_images`` adds the problems of
images that are missing, empty or not images (a header check); ``bad_rows`` lists the rows with a
problem and ``bad_rows_error`` says the first in one line.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import pandas as pd

# Reader column naming the metadata file and row each label came from ("" where the file name
# is the label); used in error messages and the skipped list, not written to the manifest.
ORIGIN = "origin"
# Reader column saying why a row cannot be used ("" when it can): an unknown label value, a bad
# name, and (after check_images) a missing, empty or unreadable file. Readers raise on the first
# such row unless called with skip_bad=True; prepare_data.py --skip-bad lists and drops them.
PROBLEM = "problem"

# The graded eye data sets' classes (their readers take the grades with `grades`).
DR_GRADES_5 = tuple(f"grade_{g}" for g in range(5))   # EyePACS, DeepDRiD: ICDR grades 0-4
DR_GRADES_4 = tuple(f"grade_{g}" for g in range(4))   # Messidor: retinopathy grade 0-3


def missing_error(source, rows: pd.DataFrame, row_numbers, what: str) -> ValueError:
    """One line: how many listed images are missing and the first one (row number + path)."""
    first = rows.iloc[0]
    return ValueError(f"{source}: {len(rows)} listed image(s) not found, first: row {row_numbers[0]} "
                      f"{first['image']} ({what})")


def note(problem: np.ndarray, mask, describe: Callable[[int], str]) -> None:
    """Give each row in `mask` that has no problem yet the problem describe(row position)."""
    for i in np.flatnonzero(np.asarray(mask, dtype=bool) & (problem == "")):
        problem[i] = describe(i)


def no_problems(n: int) -> np.ndarray:
    return np.full(n, "", dtype=object)


def origins(path, row_numbers) -> list[str]:
    """Where each row's label came from: ``<metadata file>: row <n>``, for error messages."""
    return [f"{path}: row {n}" for n in row_numbers]


def frame(image, patient, *, label=None, labels=None, classes=None, official_split=None, origin=None,
          problem=None, skip_bad: bool = False, **extras) -> pd.DataFrame:
    """Assemble a reader's frame in manifest column order (``origin`` and ``problem`` last: they
    are not written to the manifest). A row with a problem is an error unless skip_bad."""
    columns: dict[str, object] = {"image": list(image)}
    if labels is not None:
        columns["labels"] = list(labels)
    else:
        label = np.asarray(label, dtype=np.int64)
        columns["label"] = label
    columns["patient"] = [str(p) for p in patient]
    if official_split is not None:
        columns["official_split"] = list(official_split)
    if labels is None:
        columns["label_name"] = [classes[i] for i in label]
    columns.update({k: list(v) for k, v in extras.items()})
    n = len(columns["image"])
    columns[ORIGIN] = [""] * n if origin is None else list(origin)
    columns[PROBLEM] = no_problems(n) if problem is None else list(problem)
    df = pd.DataFrame(columns)
    for name in ("image", "patient", "labels", "official_split", "label_name", ORIGIN, PROBLEM):
        if name in df.columns:
            df[name] = df[name].astype(str)
    df = _resolve_repeats(df)
    if not skip_bad and (df[PROBLEM] != "").any():
        raise bad_rows_error(bad_rows(df), len(df))
    return df


def _resolve_repeats(df: pd.DataFrame) -> pd.DataFrame:
    """Every reader treats an image listed more than once alike: identical repeats (same label(s),
    patient and official split) are dropped, keeping the first, and counted in
    ``df.attrs["duplicates_dropped"]``; repeats that disagree are bad rows, each naming the other
    row, never a silent choice between two labels."""
    label = "labels" if "labels" in df.columns else "label"
    facts = [c for c in (label, "patient", "official_split") if c in df.columns]
    repeated = df["image"].duplicated(keep=False).to_numpy()
    if not repeated.any():
        df.attrs["duplicates_dropped"] = 0
        return df
    identical = df.duplicated(subset=["image", *facts], keep="first").to_numpy()
    df = df[~identical].copy()
    problem = df[PROBLEM].to_numpy().copy()
    what = {label: "labels", "patient": "patients", "official_split": "splits"}
    for image, rows in df[df["image"].duplicated(keep=False)].groupby("image", sort=False):
        names = rows["label_name"] if "label_name" in rows.columns else rows[label]
        differ = " and ".join(what[c] for c in facts if rows[c].nunique() > 1)  # what the repeats disagree on
        for i, position in enumerate(df.index.get_indexer(rows.index)):
            def fact(j):
                split = f" ({rows['official_split'].iloc[j] or 'no'} split)" if "official_split" in facts else ""
                patient = f" (patient {rows['patient'].iloc[j]})" if "patients" in differ else ""
                return f"{names.iloc[j]}{patient}{split}"

            others = [f"{fact(j)} at {rows[ORIGIN].iloc[j] or 'another row'}" for j in range(len(rows)) if j != i]
            if problem[position] == "":
                problem[position] = f"listed more than once with different {differ}: {fact(i)} here, {'; '.join(others)}"
    df[PROBLEM] = problem
    df.attrs["duplicates_dropped"] = int(identical.sum())
    return df


def grades(values: pd.Series, n_grades: int, column: str, problem: np.ndarray) -> np.ndarray:
    """Integer grades 0..n-1 from ints, int-like floats (3.0) or strings; any other value is
    noted in `problem` (and gets grade 0 there)."""
    numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(numeric) | (numeric != np.round(numeric)) | (numeric < 0) | (numeric > n_grades - 1)

    def describe(i: int) -> str:
        value = values.iloc[i]
        shown = "(empty)" if pd.isna(value) or str(value).strip() == "" else repr(str(value))
        return f"{column} {shown} is not a grade 0..{n_grades - 1}"

    note(problem, bad, describe)
    return np.where(bad, 0, numeric).astype(np.int64)


# --------------------------------------------------------------------------- image checks

# Leading bytes of each image format (what `file` and PIL's identify look at); a file with none
# of them is no image MONAI can load, whatever its extension says.
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+",
               b"BM", b"\x1f\x8b")  # PNG, JPEG, TIFF, BigTIFF, BMP, gzip (.nii.gz)
_HEADER_BYTES = 132  # DICOM's "DICM" sits at bytes 128-131, after the preamble


def image_problem(path) -> str | None:
    """Why `path` is not a loadable image (not found, zero bytes, unknown header), or None.

    Reads the first 132 bytes only: a cheap check of the header, not a decode. Accepted: PNG,
    JPEG, TIFF, BMP, DICOM (``DICM`` after the preamble, or a preamble-less file starting with
    a group-0008 tag), NIfTI-1/2 (header size 348/540) and gzip (``.nii.gz``)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEADER_BYTES)
    except FileNotFoundError:
        return "not found"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if not head:
        return "zero-byte file"
    if head.startswith(_SIGNATURES) or head[128:132] == b"DICM" or head[:2] == b"\x08\x00":
        return None
    if len(head) >= 4 and {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")} & {348, 540}:
        return None
    return "not an image (header not PNG, JPEG, TIFF, BMP, DICOM or NIfTI)"


def check_images(df: pd.DataFrame, *, threads: int = 8) -> pd.DataFrame:
    """A copy of a reader's frame whose ``problem`` column also names the images that are
    missing, empty or no image (image_problem), for the rows that had no problem yet. Opens
    each file once for its first bytes, from a few threads (the work is I/O): ~112k in seconds."""
    problem = (df[PROBLEM] if PROBLEM in df.columns else pd.Series("", index=df.index)).to_numpy().copy()
    todo = np.flatnonzero(problem == "")
    paths = df["image"].astype(str).to_numpy()[todo]
    chunks = [paths[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for i, found in enumerate(pool.map(lambda chunk: [image_problem(p) or "" for p in chunk], chunks)):
            problem[todo[i::threads]] = found
    return df.assign(**{PROBLEM: problem})


def bad_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of a reader's frame that have a problem: ``image``, ``origin``, ``reason`` (the
    columns of the ``<key>_skipped.csv`` list; a training run's ``skipped.csv`` also says ``reason``)."""
    origin = df[ORIGIN] if ORIGIN in df.columns else pd.Series("", index=df.index)
    bad = (df[PROBLEM] != "").to_numpy()
    return pd.DataFrame({"image": df["image"], ORIGIN: origin, "reason": df[PROBLEM]})[bad]


def bad_rows_error(bad: pd.DataFrame, n_rows: int) -> ValueError:
    """One line naming the first of the bad_rows: its metadata file and row (where the label
    came from, if any), the image and the reason, with the count."""
    first = bad.iloc[0]
    where = f"{first[ORIGIN]}: " if first[ORIGIN] else ""
    hint = " (metadata only? use --no-check-files)" if len(bad) == n_rows and first["reason"] == "not found" else ""
    return ValueError(f"{where}{first['image']}: {first['reason']} ({len(bad)} of {n_rows} rows bad{hint}; "
                      f"--skip-bad leaves them out and lists them)")
