"""Messidor fundus photographs, a target (efi, retinopathy grades 0-3): its reader and its annotation sheets."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .. import files
from .layout import dataset_root, no_images, scan, stem, walk
from .rows import DR_GRADES_4, ORIGIN, PROBLEM, frame, grades, missing_error, no_problems, note, origins


def parse_messidor_sheet(path) -> pd.DataFrame:
    """One Messidor annotation sheet (``Annotation_Base<nn>.xls``/``.xlsx``) -> rows with
    ``image_name``, ``grade`` (int 0-3), ``macular_edema_risk`` (int 0-2), ``row`` (sheet row)
    and ``problem`` (why the row cannot be used: an empty name or a value that is no grade; "").

    Column names are stripped (the real header is ``Risk of macular edema `` with a trailing
    space), unnamed empty columns and blank rows are dropped, float grades (3.0) become ints."""
    path = Path(path)
    sheet = files.read_sheet(path)
    sheet.columns = [str(c).strip() for c in sheet.columns]
    sheet = sheet.loc[:, [not (c.startswith("Unnamed") and sheet[c].isna().all()) for c in sheet.columns]]
    files.require_columns(sheet, ("Image name", "Retinopathy grade", "Risk of macular edema"), path)
    row_number = sheet.index.to_numpy() + 2  # spreadsheet row (header is row 1)
    keep = ~sheet.isna().all(axis=1).to_numpy()
    sheet, row_number = sheet[keep].reset_index(drop=True), row_number[keep]
    names = sheet["Image name"].fillna("").astype(str).str.strip()
    problem = no_problems(len(sheet))
    note(problem, names.to_numpy() == "", lambda i: "empty 'Image name'")
    return pd.DataFrame({
        "image_name": names,
        "grade": grades(sheet["Retinopathy grade"], 4, "Retinopathy grade", problem),
        "macular_edema_risk": grades(sheet["Risk of macular edema"], 3, "Risk of macular edema", problem),
        "row": row_number,
        PROBLEM: problem,
    })


def read_messidor(root, *, check_files: bool = True, skip_bad: bool = False) -> pd.DataFrame:
    """Messidor: ``Base11`` ... ``Base34`` folders of ``.tif`` images, each with
    ``Annotation_Base<nn>.xls`` (``.xlsx`` too); images are resolved next to their sheet.
    Patient = image id (Messidor has no patient ids)."""
    root = dataset_root(root)
    sheets = [Path(p) for n, p in walk(root)
              if re.match(r"^Annotation_Base.*\.xlsx?$", n, re.IGNORECASE)]
    if not sheets:
        raise ValueError(f"{root}: no Base*/Annotation_Base*.xls(x) annotation sheets found")
    parts = []
    for sheet in sheets:
        rows = parse_messidor_sheet(sheet)
        rows["image"] = [str(sheet.parent / n) for n in rows["image_name"]]
        rows["base"] = re.sub(r"^Annotation_", "", sheet.stem, flags=re.IGNORECASE)
        rows[ORIGIN] = origins(sheet, rows["row"])
        if check_files:
            present = {n for n, _ in scan(sheet.parent)}
            absent = ~rows["image_name"].isin(present).to_numpy() & (rows[PROBLEM] == "").to_numpy()
            if absent.any():
                raise missing_error(sheet, rows[absent], rows["row"].to_numpy()[absent],
                                    f"expected next to the sheet in {sheet.parent}")
        parts.append(rows)
    df = pd.concat(parts, ignore_index=True)
    if df.empty:
        raise no_images(root, "the annotation sheets list no images")
    # An image listed twice (the real sheets have a few repeats) counts once if the grades agree;
    # with different grades every copy is a problem.
    problem = df[PROBLEM].to_numpy().copy()
    repeated = df[df.duplicated("image", keep=False) & (problem == "")]
    for image, rows in repeated.groupby("image", sort=False):
        if rows[["grade", "macular_edema_risk"]].nunique().max() > 1:
            text = f"listed {len(rows)} times with different grades (rows {rows['row'].tolist()} of " \
                   f"{rows['base'].tolist()})"
            note(problem, df.index.isin(rows.index), lambda i: text)
    df = df.assign(**{PROBLEM: problem})[~(df.duplicated("image") & (problem == ""))].reset_index(drop=True)
    return frame(df["image"], [stem(n) for n in df["image_name"]], label=df["grade"], classes=DR_GRADES_4,
                 origin=df[ORIGIN], problem=df[PROBLEM], skip_bad=skip_bad, base=df["base"],
                 macular_edema_risk=df["macular_edema_risk"])
