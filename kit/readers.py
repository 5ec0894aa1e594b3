"""Readers of the datasets' native layouts: one function per dataset, a registry, and image checks.

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

``check_images`` adds the problems of images that are missing, empty or not images (a header
check); ``bad_rows`` lists the rows with a problem. Splitting and writing the manifest is
``manifests.py``'s job.

    from kit.readers import read_dataset
    df, classes = read_dataset("shenzhen", "DATA/shenzhen")
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from . import files

# Longest first so "x.nii.gz" is not taken for ".gz"; matched case-insensitively.
IMAGE_EXTENSIONS = (".nii.gz", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii")
_SKIP_DIRS = {"__MACOSX"}  # resource-fork folders that macOS zips carry along
# Reader column naming the metadata file and row each label came from ("" where the file name
# is the label); used in error messages and the skipped list, not written to the manifest.
ORIGIN = "origin"
# Reader column saying why a row cannot be used ("" when it can): an unknown label value, a bad
# name, and (after check_images) a missing, empty or unreadable file. Readers raise on the first
# such row unless called with skip_bad=True; prepare_data.py --skip-bad lists and drops them.
PROBLEM = "problem"

CHESTXRAY14_CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema",
                       "Fibrosis", "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening",
                       "Pneumonia", "Pneumothorax", "No Finding")
BREAKHIS_CLASSES = ("benign", "malignant")
BREAKHIS_SUBTYPES = {  # file-name code -> (class, subtype folder name)
    "A": ("benign", "adenosis"), "F": ("benign", "fibroadenoma"), "PT": ("benign", "phyllodes_tumor"),
    "TA": ("benign", "tubular_adenoma"), "DC": ("malignant", "ductal_carcinoma"),
    "LC": ("malignant", "lobular_carcinoma"), "MC": ("malignant", "mucinous_carcinoma"),
    "PC": ("malignant", "papillary_carcinoma"),
}
BREAKHIS_MAGNIFICATIONS = (40, 100, 200, 400)
DR_GRADES_5 = tuple(f"grade_{g}" for g in range(5))   # EyePACS, DeepDRiD: ICDR grades 0-4
DR_GRADES_4 = tuple(f"grade_{g}" for g in range(4))   # Messidor: retinopathy grade 0-3
SHENZHEN_CLASSES = ("normal", "tuberculosis")
COVID19_CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
KATHER2016_CLASSES = ("TUMOR", "STROMA", "COMPLEX", "LYMPHO", "DEBRIS", "MUCOSA", "ADIPOSE", "EMPTY")


# --------------------------------------------------------------------------- file helpers

def _root(root) -> Path:
    """Absolute path of a dataset folder (symlinks kept), or a clear error."""
    path = Path(os.path.abspath(os.path.expanduser(str(root))))
    if not path.is_dir():
        raise ValueError(f"{path}: dataset folder not found")
    return path


def image_suffix(name: str) -> str | None:
    """The image extension of a file name (lower case, ``.nii.gz`` whole), or None."""
    lower = name.lower()
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext) and len(lower) > len(ext):
            return ext
    return None


def _stem(name: str) -> str:
    ext = image_suffix(name)
    return name[: -len(ext)] if ext else os.path.splitext(name)[0]


def _walk(folder: Path) -> Iterator[tuple[str, str]]:
    """(file name, path) of every file under `folder`, sorted, skipping hidden and macOS junk."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if not name.startswith("."):
                yield name, os.path.join(dirpath, name)


def _scan(folder: Path) -> Iterator[tuple[str, str]]:
    """(file name, path) of the files directly in `folder` (one os.scandir, no per-file stat)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.startswith(".") and entry.is_file():
                yield entry.name, entry.path


def _index(pairs: Iterable[tuple[str, str]], *, key=lambda name: name) -> dict[str, str]:
    """key(file name) -> path; the same key twice is ambiguous and an error naming both files."""
    index: dict[str, str] = {}
    for name, path in pairs:
        k = key(name)
        if k in index:
            raise ValueError(f"{path}: same image as {index[k]} (two copies of {k!r}; keep one)")
        index[k] = path
    return index


def _images_in(folder: Path, *, recursive: bool) -> list[str]:
    """Sorted paths of the image files in `folder` (by extension, see IMAGE_EXTENSIONS)."""
    pairs = _walk(folder) if recursive else sorted(_scan(folder))
    return [path for name, path in pairs if image_suffix(name)]


def _read_names(path: Path) -> set[str]:
    """The non-empty lines of a list file (one image name a line)."""
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _missing_error(source, rows: pd.DataFrame, row_numbers, what: str) -> ValueError:
    """One line: how many listed images are missing and the first one (row number + path)."""
    first = rows.iloc[0]
    return ValueError(f"{source}: {len(rows)} listed image(s) not found, first: row {row_numbers[0]} "
                      f"{first['image']} ({what})")


def _note(problem: np.ndarray, mask, describe: Callable[[int], str]) -> None:
    """Give each row in `mask` that has no problem yet the problem describe(row position)."""
    for i in np.flatnonzero(np.asarray(mask, dtype=bool) & (problem == "")):
        problem[i] = describe(i)


def _no_problems(n: int) -> np.ndarray:
    return np.full(n, "", dtype=object)


def _origin(path, row_numbers) -> list[str]:
    """Where each row's label came from: ``<metadata file>: row <n>``, for error messages."""
    return [f"{path}: row {n}" for n in row_numbers]


def _frame(image, patient, *, label=None, labels=None, classes=None, official_split=None, origin=None,
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
    columns[PROBLEM] = _no_problems(n) if problem is None else list(problem)
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
    for image, rows in df[df["image"].duplicated(keep=False)].groupby("image", sort=False):
        names = rows["label_name"] if "label_name" in rows.columns else rows[label]
        for i, position in enumerate(df.index.get_indexer(rows.index)):
            def fact(j):
                split = f" ({rows['official_split'].iloc[j] or 'no'} split)" if "official_split" in facts else ""
                return f"{names.iloc[j]}{split}"

            others = [f"{fact(j)} at {rows[ORIGIN].iloc[j] or 'another row'}" for j in range(len(rows)) if j != i]
            if problem[position] == "":
                problem[position] = f"listed more than once with different labels: {fact(i)} here, {'; '.join(others)}"
    df[PROBLEM] = problem
    df.attrs["duplicates_dropped"] = int(identical.sum())
    return df


def _no_images(root: Path, what: str) -> ValueError:
    return ValueError(f"{root}: no images found ({what})")


# --------------------------------------------------------------------------- readers

def read_chestxray14(root, *, check_files: bool = True, skip_bad: bool = False) -> pd.DataFrame:
    """NIH ChestX-ray14: ``Data_Entry_2017_v2020.csv`` (or ``Data_Entry_2017.csv``, ``.gz`` too),
    images in ``images/`` or ``images_001/images/`` ... ``images_012/images/``, optional
    ``train_val_list.txt`` / ``test_list.txt`` (the official, patient-level test split).

    With ``check_files=False`` the metadata alone is read (images that are not there get the
    path ``<root>/images/<name>``), which is how the full 112,120-row table is tested.
    """
    root = _root(root)
    names = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
    candidates = [root / f"{n}{gz}" for n in names for gz in ("", ".gz")]
    table = next((p for p in candidates if p.is_file()), None)
    if table is None:
        raise ValueError(f"{root}: no {' or '.join(names)} (.gz) found")

    # The header line `OriginalImage[Width,Height]` is unquoted, so data rows have more fields
    # than the header names; read by position after locating the columns in the header.
    try:
        header = pd.read_csv(table, nrows=0).columns.tolist()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{table}: cannot read as CSV ({err})") from err
    wanted = ("Image Index", "Finding Labels", "Patient ID")
    header = [str(h).strip() for h in header]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ValueError(f"{table}: missing column(s) {missing}; found {header}")
    positions = [header.index(c) for c in wanted]
    meta = files.read_table(table, header=None, skiprows=1, usecols=positions, dtype=str,
                       keep_default_na=False)
    meta.columns = [wanted[positions.index(p)] for p in meta.columns]
    meta = meta.apply(lambda column: column.str.strip())
    row_number = meta.index.to_numpy() + 2  # 1-based line in the file, after the header
    if meta.empty:
        raise _no_images(root, f"{table.name} has no rows")
    problem = _no_problems(len(meta))
    for column in ("Image Index", "Patient ID"):
        _note(problem, meta[column].to_numpy() == "", lambda i: f"empty {column!r}")

    # Labels: validate and canonicalise each distinct combination once (~800 of them).
    order = {name: i for i, name in enumerate(CHESTXRAY14_CLASSES)}
    canonical: dict[str, str] = {}
    for combo in meta["Finding Labels"].unique():
        found = [s.strip() for s in combo.split("|") if s.strip()]
        unknown = [s for s in found if s not in order]
        if unknown or not found:
            text = (f"unknown label {unknown[0]!r}" if unknown else "empty 'Finding Labels'") + \
                f"; expected {'|'.join(CHESTXRAY14_CLASSES)}"
            _note(problem, meta["Finding Labels"].to_numpy() == combo, lambda i: text)
        canonical[combo] = "|".join(sorted(set(found) & set(order), key=order.__getitem__))
    labels = meta["Finding Labels"].map(canonical)

    # Images: one os.scandir per folder, never a stat per listed file.
    folders = [root / "images"] + sorted(p for p in root.glob("images_*/images") if p.is_dir())
    folders = [f for f in folders if f.is_dir()]
    index = _index(pair for folder in folders for pair in _scan(folder))
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
            raise _missing_error(table, rows, row_number[absent],
                                 f"looked in {', '.join(str(f) for f in folders)}")

    # Official split (patient-level): test_list.txt -> test, train_val_list.txt -> train (val is
    # carved from it by make_splits); rows in neither list stay unassigned ("").
    official = None
    test_list, train_list = root / "test_list.txt", root / "train_val_list.txt"
    if test_list.is_file():
        is_test = meta["Image Index"].isin(_read_names(test_list)).to_numpy()
        is_train = (meta["Image Index"].isin(_read_names(train_list)).to_numpy() if train_list.is_file()
                    else ~is_test)
        official = np.where(is_test, "test", np.where(is_train, "train", ""))
    return _frame(image, meta["Patient ID"], labels=labels, official_split=official,
                  origin=_origin(table, row_number), problem=problem, skip_bad=skip_bad)


_BREAKHIS_NAME = re.compile(r"^SOB_(?P<letter>[BM])_(?P<code>[A-Z]+)-(?P<yy>\d+)-(?P<slide>[0-9A-Za-z]+)"
                            r"-(?P<mag>\d+)-(?P<seq>\d+)\.png$", re.IGNORECASE)


def _breakhis_fields(name: str) -> tuple[dict, str]:
    """(label, subtype, slide, magnification of a BreakHis file name, problem or "")."""
    match = _BREAKHIS_NAME.match(name)
    fields = {"label": 0, "label_name": BREAKHIS_CLASSES[0], "subtype": "", "slide": name, "magnification": 0}
    if not match:
        return fields, "not a BreakHis name SOB_<B|M>_<TYPE>-<yy>-<slide>-<mag>-<seq>.png"
    code, letter = match["code"].upper(), match["letter"].upper()
    if code not in BREAKHIS_SUBTYPES:
        return fields, f"unknown BreakHis tumour type {code!r} (expected {sorted(BREAKHIS_SUBTYPES)})"
    label_name, subtype = BREAKHIS_SUBTYPES[code]
    if label_name[0].upper() != letter:
        return fields, f"type {code} is {label_name} but the name says {letter}"
    magnification = int(match["mag"])
    if magnification not in BREAKHIS_MAGNIFICATIONS:
        return fields, f"magnification {magnification} not in {BREAKHIS_MAGNIFICATIONS}"
    return {"label": BREAKHIS_CLASSES.index(label_name), "label_name": label_name, "subtype": subtype,
            "slide": f"{match['yy']}-{match['slide']}", "magnification": magnification}, ""


def parse_breakhis_name(name: str, path=None) -> dict:
    """``SOB_B_A-14-22549AB-40-001.png`` -> label, subtype, slide (= patient), magnification."""
    fields, problem = _breakhis_fields(name)
    if problem:
        raise ValueError(f"{path or name}: {problem}")
    return fields


def read_breakhis(root, *, check_files: bool = True, skip_bad: bool = False) -> pd.DataFrame:
    """BreakHis: every ``SOB_*.png`` under root (any depth; the native tree is
    ``BreaKHis_v1/histology_slides/breast/<class>/SOB/<type>/<slide>/<mag>X/``).
    Patient = slide (``<yy>-<slide>``, e.g. ``14-22549AB``); label from the B/M letter."""
    root = _root(root)
    found = [(n, p) for n, p in _walk(root) if n.upper().startswith("SOB_") and n.lower().endswith(".png")]
    _index(found)  # the same file name twice (e.g. two extracted copies) is an error
    if not found:
        raise _no_images(root, "no SOB_*.png files at any depth")
    rows, problem = zip(*(_breakhis_fields(n) for n, _ in found))
    return _frame([p for _, p in found], [r["slide"] for r in rows], label=[r["label"] for r in rows],
                  classes=BREAKHIS_CLASSES, problem=problem, skip_bad=skip_bad, subtype=[r["subtype"] for r in rows],
                  slide=[r["slide"] for r in rows], magnification=[r["magnification"] for r in rows])


def _grades(values: pd.Series, n_grades: int, column: str, problem: np.ndarray) -> np.ndarray:
    """Integer grades 0..n-1 from ints, int-like floats (3.0) or strings; any other value is
    noted in `problem` (and gets grade 0 there)."""
    numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(numeric) | (numeric != np.round(numeric)) | (numeric < 0) | (numeric > n_grades - 1)

    def describe(i: int) -> str:
        value = values.iloc[i]
        shown = "(empty)" if pd.isna(value) or str(value).strip() == "" else repr(str(value))
        return f"{column} {shown} is not a grade 0..{n_grades - 1}"

    _note(problem, bad, describe)
    return np.where(bad, 0, numeric).astype(np.int64)


_EYEPACS_NAME = re.compile(r"^(?P<patient>\d+)_(?P<eye>left|right)$")


def _eyepacs_table(path: Path, folder: Path, index: dict[str, str], check_files: bool) -> pd.DataFrame:
    table = files.read_table(path, dtype=str, keep_default_na=False)
    table.columns = [str(c).strip() for c in table.columns]
    files.require_columns(table, ("image", "level"), path)
    row_number = table.index.to_numpy() + 2
    names = table["image"].str.strip()
    problem = _no_problems(len(table))
    parts = names.str.extract(_EYEPACS_NAME).fillna("")
    _note(problem, parts["patient"].to_numpy() == "",
          lambda i: f"image {names.iloc[i]!r} is not <patient>_<left|right>")
    level = _grades(table["level"], 5, "level", problem)
    image = pd.Series([index.get(n) or str(folder / f"{n}.jpeg") for n in names])
    if check_files:
        absent = ~names.isin(index.keys()).to_numpy() & (problem == "")
        if absent.any():
            raise _missing_error(path, pd.DataFrame({"image": image[absent]}), row_number[absent],
                                 f"looked in {folder}")
    return pd.DataFrame({"image": image, "label": level, "patient": parts["patient"], "eye": parts["eye"],
                         ORIGIN: _origin(path, row_number), PROBLEM: problem})


def read_eyepacs(root, *, check_files: bool = True, skip_bad: bool = False) -> pd.DataFrame:
    """EyePACS (Kaggle DR 2015): ``trainLabels.csv`` (``image,level``) + ``train/<image>.jpeg``
    (``images/`` accepted too); with ``retinopathy_solution.csv`` and a ``test/`` folder, those
    rows form the official test split. Patient = number before ``_left``/``_right``."""
    root = _root(root)
    labels_csv = next((root / n for n in ("trainLabels.csv", "trainLabels.csv.zip") if (root / n).is_file()), None)
    if labels_csv is None:
        raise ValueError(f"{root}: no trainLabels.csv found")
    folder = next((root / n for n in ("train", "images") if (root / n).is_dir()), root / "train")
    # Indexed by stem: the Kaggle images are .jpeg, a user's resized copy may be .png.
    index = _index(((n, p) for n, p in _walk(folder) if image_suffix(n)), key=_stem) if folder.is_dir() else {}
    if check_files and not folder.is_dir():
        raise ValueError(f"{root}: no train/ (or images/) folder next to {labels_csv.name}")
    parts = [_eyepacs_table(labels_csv, folder, index, check_files)]
    solution, test_folder = root / "retinopathy_solution.csv", root / "test"
    has_test = solution.is_file() and test_folder.is_dir()
    if has_test:
        test_index = _index(((n, p) for n, p in _walk(test_folder) if image_suffix(n)), key=_stem)
        parts.append(_eyepacs_table(solution, test_folder, test_index, check_files))
    df = pd.concat(parts, ignore_index=True)
    if df.empty:
        raise _no_images(root, f"{labels_csv.name} has no rows")
    official = np.repeat(["train", "test"][: len(parts)], [len(p) for p in parts]) if has_test else None
    return _frame(df["image"], df["patient"], label=df["label"], classes=DR_GRADES_5, official_split=official,
                  origin=df[ORIGIN], problem=df[PROBLEM], skip_bad=skip_bad, eye=df["eye"])


_SHENZHEN_NAME = re.compile(r"^CHNCXR_(?P<id>\d{4})_(?P<label>[01])\.png$", re.IGNORECASE)


def read_shenzhen(root, *, check_files: bool = True, skip_bad: bool = False) -> pd.DataFrame:
    """Shenzhen (NLM-China) TB set: ``CHNCXR_<nnnn>_<0|1>.png`` (native place
    ``ChinaSet_AllFiles/CXR_png/``; found at any depth). Last digit = label (0 normal, 1 TB)."""
    root = _root(root)
    found = [(n, p, m) for n, p in _walk(root) if (m := _SHENZHEN_NAME.match(n))]
    _index((n, p) for n, p, _ in found)
    if not found:
        raise _no_images(root, "no CHNCXR_<nnnn>_<0|1>.png at any depth")
    labels = [int(m["label"]) for _, _, m in found]
    return _frame([p for _, p, _ in found], [f"CHNCXR_{m['id']}" for _, _, m in found], label=labels,
                  classes=SHENZHEN_CLASSES)


def _canonical_folder(name: str, classes: Iterable[str], aliases: dict[str, str] | None = None) -> str | None:
    """Match a class folder name case-, space-, underscore- and hyphen-insensitively."""
    def norm(text: str) -> str:
        return re.sub(r"[\s_\-]+", "", text).lower()

    table = {norm(c): c for c in classes}
    table.update({norm(k): v for k, v in (aliases or {}).items()})
    return table.get(norm(name))


def _class_folders(root: Path, base_names: Iterable[str], match: Callable[[str], str | None],
                   what: str) -> tuple[Path, dict[str, Path]]:
    """Find the folder holding the class sub-folders: root/<base name>, root, or a single
    sub-folder of root. Returns (base, {class: folder})."""
    candidates = [root / b for b in base_names] + [root] + sorted(p for p in root.iterdir() if p.is_dir())
    for base in candidates:
        if not base.is_dir():
            continue
        folders: dict[str, Path] = {}
        for sub in sorted(p for p in base.iterdir() if p.is_dir()):
            cls = match(sub.name)
            if cls is not None:
                if cls in folders:
                    raise ValueError(f"{sub}: second folder for class {cls!r} (first: {folders[cls]})")
                folders[cls] = sub
        if folders:
            return base, folders
    raise ValueError(f"{root}: no class folders found ({what})")


def read_covid19_radiography(root, *, check_files: bool = True, skip_bad: bool = False) -> pd.DataFrame:
    """COVID-19 Radiography Database: ``COVID-19_Radiography_Dataset/<Class>/images/*.png``
    (newer; ``masks/`` and metadata files ignored) or ``<Class>/*.png`` (older), with or without
    the ``COVID-19_Radiography_Dataset/`` level. The four classes are always the canonical ones;
    a class that is not there is just absent. Patient = image id."""
    root = _root(root)
    aliases = {"COVID-19": "COVID", "Lung Opacity": "Lung_Opacity"}
    _, folders = _class_folders(root, ("COVID-19_Radiography_Dataset", "COVID-19 Radiography Database"),
                                lambda n: _canonical_folder(n, COVID19_CLASSES, aliases),
                                f"expected some of {list(COVID19_CLASSES)}")
    images, labels = [], []
    for cls, folder in sorted(folders.items(), key=lambda kv: COVID19_CLASSES.index(kv[0])):
        inner = folder / "images"
        paths = _images_in(inner if inner.is_dir() else folder, recursive=False)
        if not paths:
            raise ValueError(f"{folder}: class folder holds no images")
        images += paths
        labels += [COVID19_CLASSES.index(cls)] * len(paths)
    return _frame(images, [_stem(os.path.basename(p)) for p in images], label=labels, classes=COVID19_CLASSES)


def read_kather2016(root, *, check_files: bool = True, skip_bad: bool = False) -> pd.DataFrame:
    """Kather 2016 colorectal texture tiles: ``Kather_texture_2016_image_tiles_5000/01_TUMOR`` ...
    ``08_EMPTY/*.tif`` (or the numbered folders directly under root). Patient = image id."""
    root = _root(root)

    def match(name: str) -> str | None:
        m = re.match(r"^\d+_(.+)$", name)
        return _canonical_folder(m[1], KATHER2016_CLASSES) if m else None

    _, folders = _class_folders(root, ("Kather_texture_2016_image_tiles_5000",), match,
                                "expected 01_TUMOR ... 08_EMPTY")
    images, labels = [], []
    for cls, folder in sorted(folders.items(), key=lambda kv: KATHER2016_CLASSES.index(kv[0])):
        paths = _images_in(folder, recursive=True)
        if not paths:
            raise ValueError(f"{folder}: class folder holds no images")
        images += paths
        labels += [KATHER2016_CLASSES.index(cls)] * len(paths)
    return _frame(images, [_stem(os.path.basename(p)) for p in images], label=labels,
                  classes=KATHER2016_CLASSES)


def parse_messidor_sheet(path) -> pd.DataFrame:
    """One Messidor annotation sheet (``Annotation_Base<nn>.xls``/``.xlsx``) -> rows with
    ``image_name``, ``grade`` (int 0-3), ``macular_edema_risk`` (int 0-2), ``row`` (sheet row)
    and ``problem`` (why the row cannot be used: an empty name or a value that is no grade; "").

    Column names are stripped (the real header is ``Risk of macular edema `` with a trailing
    space), unnamed empty columns and blank rows are dropped, float grades (3.0) become ints."""
    path = Path(path)
    engine = "xlrd" if path.suffix.lower() == ".xls" else "openpyxl"
    try:
        sheet = pd.read_excel(path, sheet_name=0, engine=engine)
    except Exception as err:  # xlrd/openpyxl raise their own types for corrupt files
        raise ValueError(f"{path}: cannot read the annotation sheet ({err})") from err
    sheet.columns = [str(c).strip() for c in sheet.columns]
    sheet = sheet.loc[:, [not (c.startswith("Unnamed") and sheet[c].isna().all()) for c in sheet.columns]]
    files.require_columns(sheet, ("Image name", "Retinopathy grade", "Risk of macular edema"), path)
    row_number = sheet.index.to_numpy() + 2  # spreadsheet row (header is row 1)
    keep = ~sheet.isna().all(axis=1).to_numpy()
    sheet, row_number = sheet[keep].reset_index(drop=True), row_number[keep]
    names = sheet["Image name"].fillna("").astype(str).str.strip()
    problem = _no_problems(len(sheet))
    _note(problem, names.to_numpy() == "", lambda i: "empty 'Image name'")
    return pd.DataFrame({
        "image_name": names,
        "grade": _grades(sheet["Retinopathy grade"], 4, "Retinopathy grade", problem),
        "macular_edema_risk": _grades(sheet["Risk of macular edema"], 3, "Risk of macular edema", problem),
        "row": row_number,
        PROBLEM: problem,
    })


def read_messidor(root, *, check_files: bool = True, skip_bad: bool = False) -> pd.DataFrame:
    """Messidor: ``Base11`` ... ``Base34`` folders of ``.tif`` images, each with
    ``Annotation_Base<nn>.xls`` (``.xlsx`` too); images are resolved next to their sheet.
    Patient = image id (Messidor has no patient ids)."""
    root = _root(root)
    sheets = [Path(p) for n, p in _walk(root)
              if re.match(r"^Annotation_Base.*\.xlsx?$", n, re.IGNORECASE)]
    if not sheets:
        raise ValueError(f"{root}: no Base*/Annotation_Base*.xls(x) annotation sheets found")
    parts = []
    for sheet in sheets:
        rows = parse_messidor_sheet(sheet)
        rows["image"] = [str(sheet.parent / n) for n in rows["image_name"]]
        rows["base"] = re.sub(r"^Annotation_", "", sheet.stem, flags=re.IGNORECASE)
        rows[ORIGIN] = _origin(sheet, rows["row"])
        if check_files:
            present = {n for n, _ in _scan(sheet.parent)}
            absent = ~rows["image_name"].isin(present).to_numpy() & (rows[PROBLEM] == "").to_numpy()
            if absent.any():
                raise _missing_error(sheet, rows[absent], rows["row"].to_numpy()[absent],
                                     f"expected next to the sheet in {sheet.parent}")
        parts.append(rows)
    df = pd.concat(parts, ignore_index=True)
    if df.empty:
        raise _no_images(root, "the annotation sheets list no images")
    # An image listed twice (the real sheets have a few repeats) counts once if the grades agree;
    # with different grades every copy is a problem.
    problem = df[PROBLEM].to_numpy().copy()
    repeated = df[df.duplicated("image", keep=False) & (problem == "")]
    for image, rows in repeated.groupby("image", sort=False):
        if rows[["grade", "macular_edema_risk"]].nunique().max() > 1:
            text = f"listed {len(rows)} times with different grades (rows {rows['row'].tolist()} of " \
                   f"{rows['base'].tolist()})"
            _note(problem, df.index.isin(rows.index), lambda i: text)
    df = df.assign(**{PROBLEM: problem})[~(df.duplicated("image") & (problem == ""))].reset_index(drop=True)
    return _frame(df["image"], [_stem(n) for n in df["image_name"]], label=df["grade"], classes=DR_GRADES_4,
                  origin=df[ORIGIN], problem=df[PROBLEM], skip_bad=skip_bad, base=df["base"],
                  macular_edema_risk=df["macular_edema_risk"])


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
    problem = _no_problems(len(table))
    _note(problem, eye.isna().to_numpy(), lambda i: f"image_id {image_id.iloc[i]!r} has no _l/_r eye tag")
    left, right, patient = (pd.to_numeric(table[c], errors="coerce").to_numpy(dtype=np.float64)
                            for c in ("left_eye_DR_Level", "right_eye_DR_Level", "patient_DR_Level"))
    is_left = (eye == "l").to_numpy()
    own, other = np.where(is_left, left, right), np.where(is_left, right, left)
    level = np.where(~np.isnan(own), own, np.where(~np.isnan(other), other, patient))
    label = _grades(pd.Series(level), 5, "DR level", problem)
    return pd.DataFrame({"image_id": image_id, "patient": table["patient_id"].astype(str).str.strip(),
                         "eye": np.where(is_left, "left", "right"), "label": label, "row": row_number,
                         PROBLEM: problem})


def read_deepdrid(root, *, check_files: bool = True, skip_bad: bool = False) -> pd.DataFrame:
    """DeepDRiD regular fundus images: ``regular_fundus_images/regular-fundus-training/*.csv``
    and ``regular-fundus-validation/*.csv`` (found at any depth); ``image_path`` (Windows paths)
    is ignored and ``<image_id>.jpg`` is looked up anywhere under the split folder.
    official_split = train (training) / val (validation); patient = patient_id."""
    root = _root(root)
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
        rows[ORIGIN] = _origin(csvs[0], rows["row"])
        index = _index(((n, p) for n, p in _walk(folder) if n.lower().endswith(".jpg")), key=_stem)
        rows["image"] = [index.get(i) or str(folder / "Images" / p / f"{i}.jpg")
                         for i, p in zip(rows["image_id"], rows["patient"])]
        if check_files:
            absent = ~rows["image_id"].isin(index.keys()).to_numpy() & (rows[PROBLEM] == "").to_numpy()
            if absent.any():
                raise _missing_error(csvs[0], rows[absent], rows["row"].to_numpy()[absent],
                                     f"no <image_id>.jpg under {folder}")
        parts.append(rows)
        official += [split] * len(rows)
    if not parts:
        raise ValueError(f"{root}: no regular-fundus-training/ or regular-fundus-validation/ folder found")
    df = pd.concat(parts, ignore_index=True)
    if df.empty:
        raise _no_images(root, "the DeepDRiD CSVs list no images")
    return _frame(df["image"], df["patient"], label=df["label"], classes=DR_GRADES_5, official_split=official,
                  origin=df[ORIGIN], problem=df[PROBLEM], skip_bad=skip_bad, eye=df["eye"])


def folder_classes(root) -> list[str]:
    """Class names of a generic ``<root>/<class>/<image>`` folder: sorted sub-folder names."""
    root = _root(root)
    classes = sorted(p.name for p in root.iterdir()
                     if p.is_dir() and not p.name.startswith(".") and p.name not in _SKIP_DIRS)
    if not classes:
        raise ValueError(f"{root}: no class sub-folders (expected <root>/<class>/<image>)")
    return classes


def read_folder(root, *, check_files: bool = True, skip_bad: bool = False, patient_regex: str | None = None
                ) -> pd.DataFrame:
    """A user's own data set ``<root>/<class>/<image>`` (images at any depth below the class
    folder; extensions png/jpg/jpeg/tif/tiff/bmp/dcm/nii/nii.gz). Classes = sorted sub-folder names.

    Patients: a sub-folder level under the class folder is the patient (``<class>/<patient>/...``;
    the same name under two classes is one patient), so a patient's images stay in one split; an
    image directly in its class folder is a patient of its own. ``patient_regex`` takes the patient
    id from the file name instead (its first group, else the whole match; a name it does not
    match is a bad row). ``df.attrs["patients_from"]`` says which rule was used."""
    root = _root(root)
    classes = folder_classes(root)
    images, labels = [], []
    for i, cls in enumerate(classes):
        paths = _images_in(root / cls, recursive=True)
        if not paths:
            raise ValueError(f"{root / cls}: class folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        images += paths
        labels += [i] * len(paths)
    problem = _no_problems(len(images))
    if patient_regex:
        pattern = re.compile(patient_regex)
        found = [pattern.search(_stem(Path(path).name)) for path in images]
        patient = [(m.group(1) if m.re.groups else m.group(0)) if m else "" for m in found]
        _note(problem, [m is None for m in found], lambda i: f"file name does not match --patient-regex {patient_regex!r}")
        rule = f"--patient-regex {patient_regex!r} on the file name"
    else:
        below = [Path(os.path.relpath(path, root)).parts for path in images]  # (class, [patient, ...], file)
        patient = [parts[1] if len(parts) > 2 else _stem("/".join(parts)) for parts in below]
        nested = sum(len(parts) > 2 for parts in below)
        rule = ("the sub-folder below the class folder" if nested == len(images) else
                "each image its own patient" if not nested else
                f"the sub-folder below the class folder ({nested} images), else the image itself")
    df = _frame(images, patient, label=labels, classes=classes, problem=problem, skip_bad=skip_bad)
    df.attrs["patients_from"] = rule
    return df


_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "test": "test", "testing": "test", "": ""}
TASKS = ("multiclass", "multilabel", "ordinal")


def _read_any_table(path: Path) -> pd.DataFrame:
    """A CSV, TSV or Excel table as text, one line naming the file when it cannot be read."""
    suffix = path.suffix.lower()
    if suffix in (".xls", ".xlsx"):
        try:
            return pd.read_excel(path, sheet_name=0, dtype=str, engine="xlrd" if suffix == ".xls" else "openpyxl")
        except Exception as err:  # xlrd/openpyxl raise their own types for a damaged workbook
            raise ValueError(f"{path}: cannot read as an Excel sheet ({' '.join(str(err).split())})") from None
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
    if not path.is_file():
        raise ValueError(f"{path}: table not found (--dataset csv takes the CSV, TSV or Excel file as --root)")
    if task not in TASKS:
        raise ValueError(f"--task {task!r}: choose from {', '.join(TASKS)}")
    if (label_col is None) == (not label_cols):
        raise ValueError("--dataset csv needs either --label-col (one label per image) or --label-cols (0/1 columns)")
    if (task == "multilabel") != bool(label_cols):
        raise ValueError("--label-cols goes with --task multilabel, --label-col with multiclass or ordinal")
    table = _read_any_table(path).fillna("")
    if table.empty:
        raise ValueError(f"{path}: the table has no rows")
    wanted = [image_col, *(label_cols or [label_col]), *(c for c in (patient_col, split_col) if c)]
    files.require_columns(table, wanted, path)
    table = table.apply(lambda column: column.astype(str).str.strip())
    problem = _no_problems(len(table))
    origin = _origin(path, table.index.to_numpy() + 2)
    _note(problem, table[image_col] == "", lambda i: f"empty {image_col!r}")
    image = [p if not p or os.path.isabs(p) else os.path.normpath(path.parent / p) for p in table[image_col]]

    if label_cols:  # multilabel: 0/1 per class column
        values = table[label_cols].apply(lambda column: column.str.lower())
        ones = values.isin(["1", "1.0", "true", "yes"])
        bad = ~(ones | values.isin(["0", "0.0", "false", "no"]))
        _note(problem, bad.any(axis=1), lambda i: f"{bad.columns[bad.iloc[i].to_numpy()][0]!r} is "
                                                   f"{table.iloc[i][bad.columns[bad.iloc[i].to_numpy()][0]]!r}, not 0 or 1")
        classes = list(label_cols)
        labels = ["|".join(c for c, on in zip(classes, row) if on) for row in ones.to_numpy()]
        label_kwargs = {"labels": labels}
        counts = {c: int(ones[c][problem == ""].sum()) for c in classes}
    else:
        raw = table[label_col]
        _note(problem, raw == "", lambda i: f"empty {label_col!r}")
        if task == "ordinal":
            number = pd.to_numeric(raw, errors="coerce")
            _note(problem, number.isna() | (number != number.round()),
                  lambda i: f"{label_col!r} is {raw.iloc[i]!r}, not an integer grade")
            grades = number[problem == ""].astype(int)
            if grades.empty:
                raise ValueError(f"{path}: no row has an integer grade in {label_col!r}")
            classes = [str(g) for g in range(grades.min(), grades.max() + 1)]
            names = [str(int(v)) if ok == "" else "" for v, ok in zip(number.fillna(0), problem)]
        else:
            classes = sorted(set(raw[problem == ""]), key=lambda v: (not v.lstrip("-").isdigit(), int(v) if
                                                                     v.lstrip("-").isdigit() else 0, v))
            names = list(raw)
        index = {c: i for i, c in enumerate(classes)}
        label_kwargs = {"label": [index.get(n, 0) for n in names], "classes": classes}
        counts = {c: int(sum(n == c for n, ok in zip(names, problem) if ok == "")) for c in classes}

    patient = table[patient_col] if patient_col else [os.path.relpath(p, path.parent) if p else "" for p in image]
    if patient_col:
        _note(problem, table[patient_col] == "", lambda i: f"empty {patient_col!r}")
    official = None
    if split_col:
        split = table[split_col].str.lower()
        _note(problem, ~split.isin(list(_SPLIT_NAMES)),
              lambda i: f"{split_col!r} is {table[split_col].iloc[i]!r}, not train, val or test")
        official = [_SPLIT_NAMES.get(v, "") for v in split]
    df = _frame(image, patient, official_split=official, origin=origin, problem=problem, skip_bad=skip_bad,
                **label_kwargs)  # bad rows first: they are the likelier cause of a rare class
    rare = {c: n for c, n in counts.items() if n < 2}
    if rare:
        listing = ", ".join(f"{c!r}: {n}" for c, n in rare.items())
        raise ValueError(f"{path}: every class needs at least 2 images (one for training, one for validation); "
                         f"{listing}")
    df.attrs["classes"] = classes
    df.attrs["patients_from"] = f"column {patient_col!r}" if patient_col else "each image its own patient"
    return df


# --------------------------------------------------------------------------- registry

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
    classes = df.attrs.get("classes") or (folder_classes(root) if key == "folder" else list(spec.classes))
    return df, list(classes)


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


