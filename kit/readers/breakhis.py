"""BreakHis breast histology, a source (hwsi, benign or malignant): its reader; the label is in the file name."""
from __future__ import annotations

import re

import pandas as pd

from .layout import dataset_root, index_files, no_images, walk
from .rows import frame


BREAKHIS_CLASSES = ("benign", "malignant")
BREAKHIS_SUBTYPES = {  # file-name code -> (class, subtype folder name)
    "A": ("benign", "adenosis"), "F": ("benign", "fibroadenoma"), "PT": ("benign", "phyllodes_tumor"),
    "TA": ("benign", "tubular_adenoma"), "DC": ("malignant", "ductal_carcinoma"),
    "LC": ("malignant", "lobular_carcinoma"), "MC": ("malignant", "mucinous_carcinoma"),
    "PC": ("malignant", "papillary_carcinoma"),
}
BREAKHIS_MAGNIFICATIONS = (40, 100, 200, 400)

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
    root = dataset_root(root)
    found = [(n, p) for n, p in walk(root) if n.upper().startswith("SOB_") and n.lower().endswith(".png")]
    index_files(found)  # the same file name twice (e.g. two extracted copies) is an error
    if not found:
        raise no_images(root, "no SOB_*.png files at any depth")
    rows, problem = zip(*(_breakhis_fields(n) for n, _ in found))
    return frame([p for _, p in found], [r["slide"] for r in rows], label=[r["label"] for r in rows],
                 classes=BREAKHIS_CLASSES, problem=problem, skip_bad=skip_bad, subtype=[r["subtype"] for r in rows],
                 slide=[r["slide"] for r in rows], magnification=[r["magnification"] for r in rows])
