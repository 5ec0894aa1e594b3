"""Readers on native trees built from the real files in ../shared/data (symlinks), completed with
generated images under native names where the real excerpt lacks a class or a layout variant."""
import gzip
import os
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest

import datasets
import prepare_data
from test_datasets import link, write_image, write_xls


# --------------------------------------------------------------------------- chestxray14

def real_rows(shared_data: Path, names) -> list[str]:
    """The header and the lines of `names` in the real 112,120-row metadata, as they are."""
    with gzip.open(shared_data / "chestxray14" / "Data_Entry_2017_v2020.csv.gz", "rt") as handle:
        lines = handle.read().splitlines()
    return [lines[0]] + [line for line in lines[1:] if line.split(",", 1)[0] in names]


def test_chestxray14_real_images(shared_data, tmp_path):
    names = ("00000001_000.png", "00027426_000.png")
    root = tmp_path / "chestxray14"
    root.mkdir()
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(real_rows(shared_data, names)) + "\n")
    for name in names:
        link(shared_data / "chestxray14" / "images" / name, root / "images_001" / "images" / name)
    df = datasets.read_chestxray14(root)  # checks the files
    got = {Path(p).name: (labels, patient) for p, labels, patient in zip(df["image"], df["labels"], df["patient"])}
    assert got == {"00000001_000.png": ("Cardiomegaly", "1"), "00027426_000.png": ("No Finding", "27426")}
    assert datasets.bad_rows(datasets.check_images(df)).empty
    assert df["origin"].str.endswith(("row 2", "row 3")).all()


def test_chestxray14_older_csv_and_mixed_folders(tmp_path):
    # Data_Entry_2017.csv (the first release) ends every line with a comma; images spread over
    # images/ and images_00n/images/; only test_list.txt shipped (train = everything else)
    root = tmp_path / "chestxray14"
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
             "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"]
    rows = [("00000001_000.png", "Hernia", 1, "images"), ("00000001_001.png", "Hernia|Mass", 1, "images_002/images"),
            ("00000002_000.png", "No Finding", 2, "images_012/images"), ("00000003_000.png", "Edema", 3, "images")]
    for name, labels, patient, folder in rows:
        lines.append(f"{name},{labels},0,{patient},060Y,F,AP,2048,2500,0.168,0.168,")
        write_image(root / folder / name)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (root / "test_list.txt").write_text("00000002_000.png\n")
    df = datasets.read_chestxray14(root)
    assert [str(Path(p).relative_to(root)) for p in df["image"]] == [f"{r[3]}/{r[0]}" for r in rows]
    assert df["labels"].tolist() == ["Hernia", "Hernia|Mass", "No Finding", "Edema"]
    assert df["official_split"].tolist() == ["train", "train", "test", "train"]
    (root / "images_002" / "images" / "00000001_001.png").unlink()
    with pytest.raises(ValueError, match=r"Data_Entry_2017\.csv: 1 listed image.*row 3 .*00000001_001\.png"):
        datasets.read_chestxray14(root)


def test_chestxray14_full_metadata_official_split(shared_data, tmp_path):
    # the real 112,120 rows with a patient-level official test list (as NIH's test_list.txt is)
    root = tmp_path / "chestxray14"
    link(shared_data / "chestxray14" / "Data_Entry_2017_v2020.csv.gz", root / "Data_Entry_2017_v2020.csv.gz")
    full = datasets.read_chestxray14(root, check_files=False)
    names = full["image"].map(os.path.basename)
    is_test = full["patient"].astype(int) % 5 == 0
    (root / "test_list.txt").write_text("\n".join(names[is_test]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(names[~is_test]) + "\n")
    out = tmp_path / "manifests"
    prepare_data.main(prepare_data.get_args_parser().parse_args(
        ["--dataset", "chestxray14", "--root", str(root), "--out", str(out), "--no-check-files", "--val-frac", "0.1"]))
    df, meta = datasets.load_manifest(out / "chestxray14.csv")
    assert len(df) == 112_120
    assert (df["split"] == "test").tolist() == is_test.tolist()  # the official test split, exactly
    assert df.groupby("patient")["split"].nunique().max() == 1  # no patient in two splits
    val_share = (df["split"] == "val").sum() / (~is_test).sum()
    assert abs(val_share - 0.1) < 0.01
    indicator = df["labels"].str.get_dummies(sep="|")
    whole = indicator.mean()
    for split in ("train", "val", "test"):
        assert (indicator[df["split"] == split].mean() - whole).abs().max() < 0.03, split


# --------------------------------------------------------------------------- covid19_radiography

def test_covid19_real_files_plus_generated_classes(shared_data, tmp_path):
    # the 50 real images (older flat layout: COVID/, Normal/) and the two classes the excerpt
    # lacks, generated under their native names
    base = tmp_path / "covid19_radiography" / "COVID-19_Radiography_Dataset"
    for cls in ("COVID", "Normal"):
        for src in (shared_data / "covid19_radiography" / cls).glob("*.png"):
            link(src, base / cls / src.name)
    for cls, n in (("Lung_Opacity", 3), ("Viral Pneumonia", 2)):
        for i in range(1, n + 1):
            write_image(base / cls / f"{cls}-{i}.png", size=(32, 32))
    df = datasets.read_covid19_radiography(tmp_path / "covid19_radiography")
    assert len(df) == 55
    expected = {f"{cls}-{i}": datasets.COVID19_CLASSES.index(cls) for cls, n in
                (("COVID", 25), ("Normal", 25), ("Lung_Opacity", 3), ("Viral Pneumonia", 2)) for i in range(1, n + 1)}
    assert dict(zip(df["patient"], df["label"])) == expected
    assert datasets.bad_rows(datasets.check_images(df)).empty


# --------------------------------------------------------------------------- messidor

def test_messidor_real_sheet_in_a_native_tree(shared_data, tmp_path):
    # the real annotation sheet as Base11's .xlsx, the same rows as Base12's .xls, generated .tif
    book = openpyxl.load_workbook(shared_data / "messidor" / "grades.xlsx", read_only=True)
    header, *rows = [row for row in book.worksheets[0].iter_rows(values_only=True)]
    assert "Risk of macular edema " in header and None in header  # the quirks the reader handles
    rows = [r for r in rows if any(v is not None for v in r)]
    name_col, grade_col, risk_col = (header.index(c) for c in ("Image name", "Retinopathy grade",
                                                                "Risk of macular edema "))
    expected = {r[name_col]: (int(r[grade_col]), int(r[risk_col])) for r in rows}
    assert len(expected) == 32

    root = tmp_path / "messidor"
    link(shared_data / "messidor" / "grades.xlsx", root / "Base11" / "Annotation_Base11.xlsx")
    # the original .xls sheets store the grades as floats (3.0)
    renamed = [(f"x{r[name_col]}", r[1], float(r[grade_col]), float(r[risk_col])) for r in rows]
    write_xls(root / "Base12" / "Annotation_Base12.xls", [header[c] for c in (0, 1, 2, 3)], renamed)
    for name in expected:
        write_image(root / "Base11" / name, mode="RGB", size=(32, 32))
        write_image(root / "Base12" / f"x{name}", mode="RGB", size=(32, 32))
    df = datasets.read_messidor(root)
    assert len(df) == 64
    got = {Path(p).name: (label, risk) for p, label, risk in zip(df["image"], df["label"], df["macular_edema_risk"])}
    assert got == {**expected, **{f"x{n}": v for n, v in expected.items()}}
    assert df.loc[df["base"] == "Base11", "origin"].str.contains(r"Annotation_Base11\.xlsx: row \d+$").all()


# --------------------------------------------------------------------------- breakhis, deepdrid

def test_breakhis_manifest_keeps_subtype_slide_magnification(shared_data, tmp_path):
    from test_datasets import BREAKHIS_EXPECTED, breakhis_tree
    root = breakhis_tree(shared_data, tmp_path / "breakhis")
    out = tmp_path / "manifests"
    prepare_data.main(prepare_data.get_args_parser().parse_args(
        ["--dataset", "breakhis", "--root", str(root), "--out", str(out), "--val-frac", "0.2", "--test-frac", "0.2"]))
    df, _ = datasets.load_manifest(out / "breakhis.csv")
    assert list(df.columns) == ["image", "label", "patient", "split", "label_name", "subtype", "slide", "magnification"]
    got = {Path(r.image).name: (r.label_name, r.subtype, r.slide, r.magnification) for r in df.itertuples()}
    assert got == BREAKHIS_EXPECTED
    assert df.groupby("slide")["split"].nunique().max() == 1  # the 4 images of slide 14-25197 stay together


def test_deepdrid_origin_names_the_csv_row(shared_data, tmp_path):
    table = pd.read_csv(shared_data / "deepdrid" / "regular-fundus-training_excerpt.csv", dtype=str)
    folder = tmp_path / "deepdrid" / "regular_fundus_images" / "regular-fundus-training"
    folder.mkdir(parents=True)
    csv_path = folder / "regular-fundus-training.csv"
    table.to_csv(csv_path, index=False)
    for pid, image_id in zip(table["patient_id"], table["image_id"]):
        write_image(folder / "Images" / pid / f"{image_id}.jpg", mode="RGB", size=(4, 4))
    df = datasets.read_deepdrid(tmp_path / "deepdrid")
    by_id = df.set_index(df["image"].map(lambda p: Path(p).stem))
    row_56_r3 = int(np.flatnonzero(table["image_id"] == "56_r3")[0]) + 2
    assert by_id.loc["56_r3", "origin"] == f"{csv_path}: row {row_56_r3}"
    assert (by_id.loc["56_r3", "label"], by_id.loc["56_r3", "eye"]) == (1, "right")
    (folder / "Images" / "56" / "56_r3.jpg").write_bytes(b"")
    bad = datasets.bad_rows(datasets.check_images(df))
    assert bad["origin"].tolist() == [f"{csv_path}: row {row_56_r3}"] and bad["reason"].tolist() == ["zero-byte file"]
