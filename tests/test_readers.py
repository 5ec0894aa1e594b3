"""kit.readers: each dataset's native layout -> rows, on the real sample files (the shared_data
fixture; native trees built from them with symlinks) and on generated native trees; image checks;
the registry."""
import gzip
import os
import time
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest
from helpers import (
    BREAKHIS_EXPECTED,
    breakhis_tree,
    eyepacs_labels_tree,
    link,
    write_image,
    write_xls,
)
from PIL import Image

from kit import manifests, readers

# --------------------------------------------------------------------------- chestxray14

def real_rows(shared_data: Path, names) -> list[str]:
    """The header and the lines of `names` in the real 112,120-row metadata, as they are."""
    with gzip.open(shared_data / "chestxray14" / "Data_Entry_2017_v2020.csv.gz", "rt") as handle:
        lines = handle.read().splitlines()
    return [lines[0]] + [line for line in lines[1:] if line.split(",", 1)[0] in names]


def test_chestxray14_full_metadata(shared_data, capsys):
    root = shared_data / "chestxray14"
    start = time.perf_counter()
    df = readers.read_chestxray14(root, check_files=False)
    read_s = time.perf_counter() - start
    split = manifests.make_splits(df, val_frac=0.15, test_frac=0.15, seed=0)
    total_s = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nchestxray14 112k metadata: read {read_s:.2f} s, read + split {total_s:.2f} s")

    assert len(df) == 112_120 and df["patient"].nunique() == 30_805
    assert list(df.columns[:3]) == ["image", "labels", "patient"]
    by_name = df.set_index(df["image"].map(os.path.basename))
    assert by_name.loc["00000001_000.png", "labels"] == "Cardiomegaly"
    assert by_name.loc["00027426_000.png", "labels"] == "No Finding"
    assert by_name.loc["00000001_001.png", "labels"] == "Cardiomegaly|Emphysema"
    assert by_name.loc["00000001_000.png", "image"] == str(root / "images" / "00000001_000.png")
    assert by_name.loc["00000001_000.png", "patient"] == "1"
    names = df["labels"].str.split("|").explode()
    assert set(names) == set(readers.CHESTXRAY14_CLASSES)
    assert (names == "No Finding").sum() == 60_361 and (names == "Hernia").sum() == 227

    # patient-level, stratified: per-split class prevalence within 2 points of the whole
    assert split.groupby("patient")["split"].nunique().max() == 1
    fractions = split["split"].value_counts(normalize=True)
    assert abs(fractions["val"] - 0.15) < 0.01 and abs(fractions["test"] - 0.15) < 0.01
    indicator = split["labels"].str.get_dummies(sep="|")
    whole = indicator.mean()
    for name in ("train", "val", "test"):
        part = indicator[split["split"] == name].mean()
        assert (part - whole).abs().max() < 0.02, name


def test_chestxray14_missing_images_named(shared_data):
    with pytest.raises(ValueError, match=r"Data_Entry_2017_v2020\.csv\.gz: 112118 listed image.*00000001_001\.png"):
        readers.read_chestxray14(shared_data / "chestxray14", check_files=True)


def write_chestxray14(root: Path, rows, *, folder="images", lists=None) -> Path:
    """A small native tree: the real header (unquoted odd columns) + grey PNGs."""
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
             "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"]
    for name, labels, patient in rows:
        lines.append(f"{name},{labels},0,{patient},50,M,PA,2500,2048,0.143,0.143")
        write_image(root / folder / name)
    root.mkdir(parents=True, exist_ok=True)
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    for list_name, names in (lists or {}).items():
        (root / list_name).write_text("\n".join(names) + "\n")
    return root


def test_chestxray14_native_tree_official_split(tmp_path):
    rows = [(f"{p:08d}_{f:03d}.png", labels, p) for p, labels in
            enumerate(["Effusion|Atelectasis", "No Finding", "Mass", "Hernia", "No Finding", "Nodule"] * 4, 1)
            for f in range(2)]
    test_names = [r[0] for r in rows if r[2] % 4 == 0]
    root = write_chestxray14(tmp_path / "chestxray14", rows, folder="images_001/images",
                             lists={"test_list.txt": test_names,
                                    "train_val_list.txt": [r[0] for r in rows if r[0] not in test_names]})
    df = readers.read_chestxray14(root)
    assert len(df) == len(rows)
    assert all(Path(p).is_file() and "images_001/images" in p for p in df["image"])
    first = df.iloc[0]
    assert first["labels"] == "Atelectasis|Effusion"  # canonical class order
    assert set(df.loc[df["official_split"] == "test", "image"].map(os.path.basename)) == set(test_names)
    split = manifests.make_splits(df, val_frac=0.2, test_frac=0.3, seed=1)
    assert (split.loc[split["official_split"] == "test", "split"] == "test").all()
    assert (split.loc[split["official_split"] == "train", "split"] != "test").all()
    assert (split["split"] == "val").any()


def test_chestxray14_unknown_label(tmp_path):
    root = write_chestxray14(tmp_path / "cxr", [("00000001_000.png", "Effusion", 1),
                                                 ("00000002_000.png", "Pneumonia|COVID", 2)])
    message = r"Data_Entry_2017_v2020\.csv: row 3: .*/00000002_000\.png: unknown label 'COVID'; expected .*\(1 of 2"
    with pytest.raises(ValueError, match=message):
        readers.read_chestxray14(root)
    df = readers.read_chestxray14(root, skip_bad=True)  # kept, flagged, for prepare_data to list
    assert df["problem"].str[:21].tolist() == ["", "unknown label 'COVID'"]


def test_chestxray14_real_images(shared_data, tmp_path):
    names = ("00000001_000.png", "00027426_000.png")
    root = tmp_path / "chestxray14"
    root.mkdir()
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(real_rows(shared_data, names)) + "\n")
    for name in names:
        link(shared_data / "chestxray14" / "images" / name, root / "images_001" / "images" / name)
    df = readers.read_chestxray14(root)  # checks the files
    got = {Path(p).name: (labels, patient) for p, labels, patient in zip(df["image"], df["labels"], df["patient"])}
    assert got == {"00000001_000.png": ("Cardiomegaly", "1"), "00027426_000.png": ("No Finding", "27426")}
    assert readers.bad_rows(readers.check_images(df)).empty
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
    df = readers.read_chestxray14(root)
    assert [str(Path(p).relative_to(root)) for p in df["image"]] == [f"{r[3]}/{r[0]}" for r in rows]
    assert df["labels"].tolist() == ["Hernia", "Hernia|Mass", "No Finding", "Edema"]
    assert df["official_split"].tolist() == ["train", "train", "test", "train"]
    (root / "images_002" / "images" / "00000001_001.png").unlink()
    with pytest.raises(ValueError, match=r"Data_Entry_2017\.csv: 1 listed image.*row 3 .*00000001_001\.png"):
        readers.read_chestxray14(root)


# --------------------------------------------------------------------------- breakhis

def test_breakhis_real_files(shared_data, tmp_path):
    root = breakhis_tree(shared_data, tmp_path / "breakhis")
    df = readers.read_breakhis(root)
    assert len(df) == 12
    got = {os.path.basename(r.image): (r.label_name, r.subtype, r.slide, r.magnification) for r in df.itertuples()}
    assert got == BREAKHIS_EXPECTED
    assert (df["patient"] == df["slide"]).all()
    assert df["label"].tolist() == [readers.BREAKHIS_CLASSES.index(n) for n in df["label_name"]]
    assert (df["label_name"] == "malignant").sum() == 4
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["image"])


def test_breakhis_bad_name(tmp_path):
    write_image(tmp_path / "b" / "SOB_B_XX-14-1-40-001.png")
    with pytest.raises(ValueError, match="SOB_B_XX-14-1-40-001.png: unknown BreakHis tumour type 'XX'"):
        readers.read_breakhis(tmp_path / "b")
    write_image(tmp_path / "b" / "SOB_M_DC-14-2523-40-010.png")
    df = readers.read_breakhis(tmp_path / "b", skip_bad=True)
    assert df["problem"].tolist() == ["unknown BreakHis tumour type 'XX' (expected ['A', 'DC', 'F', 'LC', 'MC', "
                                      "'PC', 'PT', 'TA'])", ""]
    assert df["slide"].iloc[1] == "14-2523"


# --------------------------------------------------------------------------- eyepacs

EYEPACS_GRADES = {"10_left": 0, "10_right": 0, "13_left": 0, "13_right": 0, "15_left": 1, "15_right": 2,
                  "16_left": 4, "16_right": 4, "17_left": 0, "17_right": 1}


def eyepacs_tree(shared_data: Path, root: Path) -> Path:
    """train/ with the 10 real JPEGs and a trainLabels.csv holding their rows of the real file."""
    root.mkdir(parents=True)
    labels = pd.read_csv(shared_data / "eyepacs" / "trainLabels.csv")
    labels[labels["image"].isin(list(EYEPACS_GRADES))].to_csv(root / "trainLabels.csv", index=False)
    for src in (shared_data / "eyepacs" / "images").glob("*.jpeg"):
        link(src, root / "train" / src.name)
    return root


def test_eyepacs_real_images(shared_data, tmp_path):
    df = readers.read_eyepacs(eyepacs_tree(shared_data, tmp_path / "eyepacs"))
    assert len(df) == 10
    got = {Path(p).stem: label for p, label in zip(df["image"], df["label"])}
    assert got == EYEPACS_GRADES
    assert sorted(df["patient"].unique()) == ["10", "13", "15", "16", "17"]
    assert df.loc[df["image"].str.endswith("/15_right.jpeg"), "label_name"].item() == "grade_2"
    assert "official_split" not in df.columns


def test_eyepacs_full_label_file(shared_data):
    root = shared_data / "eyepacs"  # trainLabels.csv + images/ (the fallback folder name)
    df = readers.read_eyepacs(root, check_files=False)
    assert len(df) == 35_126
    assert np.bincount(df["label"]).tolist() == [25_810, 2_443, 5_292, 873, 708]
    assert df.loc[df["image"].str.endswith("/16_left.jpeg"), "image"].item() == str(root / "images" / "16_left.jpeg")
    with pytest.raises(ValueError, match=r"trainLabels\.csv: 35116 listed image.*row 12 .*19_left\.jpeg"):
        readers.read_eyepacs(root)


def test_eyepacs_official_test_and_bad_level(shared_data, tmp_path):
    root = eyepacs_tree(shared_data, tmp_path / "eyepacs")
    write_image(root / "test" / "1_left.jpeg", mode="RGB")
    write_image(root / "test" / "1_right.jpeg", mode="RGB")
    (root / "retinopathy_solution.csv").write_text("image,level,Usage\n1_left,0,Private\n1_right,3,Public\n")
    df = readers.read_eyepacs(root)
    assert df["official_split"].value_counts().to_dict() == {"train": 10, "test": 2}
    assert df.loc[df["official_split"] == "test", "label"].tolist() == [0, 3]
    (root / "retinopathy_solution.csv").write_text("image,level,Usage\n1_left,7,Private\n")
    with pytest.raises(ValueError, match=r"retinopathy_solution\.csv: row 2: .*/test/1_left\.jpeg: level '7' is not "
                                         r"a grade 0\.\.4 \(1 of 11 rows bad"):
        readers.read_eyepacs(root)
    (root / "retinopathy_solution.csv").write_text("image,level,Usage\n1_left,7,Private\n1-right,2,Public\n")
    df = readers.read_eyepacs(root, skip_bad=True, check_files=False)
    assert df["problem"].tolist()[-2:] == ["level '7' is not a grade 0..4",
                                           "image '1-right' is not <patient>_<left|right>"]


# --------------------------------------------------------------------------- shenzhen, covid19, kather2016

def test_shenzhen_generated_tree(tmp_path):
    root = tmp_path / "shenzhen"
    for i in range(1, 9):
        write_image(root / "ChinaSet_AllFiles" / "CXR_png" / f"CHNCXR_{i:04d}_{i % 2}.png")
        (root / "ChinaSet_AllFiles" / "ClinicalReadings").mkdir(parents=True, exist_ok=True)
        (root / "ChinaSet_AllFiles" / "ClinicalReadings" / f"CHNCXR_{i:04d}_{i % 2}.txt").write_text("normal\n")
    write_image(root / "masks" / "CHNCXR_0001_0_mask.png")  # not an image of the set
    df = readers.read_shenzhen(root)
    assert len(df) == 8
    assert df["patient"].tolist() == [f"CHNCXR_{i:04d}" for i in range(1, 9)]
    assert df["label"].tolist() == [i % 2 for i in range(1, 9)]
    assert df["label_name"].tolist()[:2] == ["tuberculosis", "normal"]


def test_covid19_older_layout_real_images(shared_data, tmp_path):
    base = tmp_path / "covid19_radiography" / "COVID-19_Radiography_Dataset"
    for cls in ("COVID", "Normal"):
        for src in (shared_data / "covid19_radiography" / cls).glob("*.png"):
            link(src, base / cls / src.name)
    (base / "COVID.metadata.xlsx").write_bytes(b"not read")
    df = readers.read_covid19_radiography(tmp_path / "covid19_radiography")
    spec = readers.DATASETS["covid19_radiography"]
    assert list(spec.classes) == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    counts = df["label_name"].value_counts().reindex(spec.classes, fill_value=0)
    assert counts.tolist() == [25, 0, 25, 0]
    assert df.loc[df["label_name"] == "Normal", "label"].unique().tolist() == [2]
    assert "COVID-21" in set(df["patient"])
    # the layout without the COVID-19_Radiography_Dataset level reads the same
    direct = readers.read_covid19_radiography(base)
    assert direct["label"].tolist() == df["label"].tolist()


def test_covid19_newer_layout_and_empty_class(tmp_path):
    base = tmp_path / "covid" / "COVID-19_Radiography_Dataset"
    for cls in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"):
        for i in range(1, 4):
            write_image(base / cls / "images" / f"{cls}-{i}.png")
            write_image(base / cls / "masks" / f"{cls}-{i}.png", value=255)
    df = readers.read_covid19_radiography(tmp_path / "covid")
    assert len(df) == 12 and sorted(df["label"].unique()) == [0, 1, 2, 3]
    assert not df["image"].str.contains("/masks/").any()
    assert df.loc[df["label"] == 3, "image"].str.contains("Viral Pneumonia/images/").all()
    for mask in (base / "Normal" / "images").iterdir():
        mask.unlink()
    with pytest.raises(ValueError, match="Normal: class folder holds no images"):
        readers.read_covid19_radiography(tmp_path / "covid")


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
    df = readers.read_covid19_radiography(tmp_path / "covid19_radiography")
    assert len(df) == 55
    expected = {f"{cls}-{i}": readers.COVID19_CLASSES.index(cls) for cls, n in
                (("COVID", 25), ("Normal", 25), ("Lung_Opacity", 3), ("Viral Pneumonia", 2)) for i in range(1, n + 1)}
    assert dict(zip(df["patient"], df["label"])) == expected
    assert readers.bad_rows(readers.check_images(df)).empty


def test_kather2016_generated_tree(tmp_path):
    base = tmp_path / "kather2016" / "Kather_texture_2016_image_tiles_5000"
    for number, cls in enumerate(readers.KATHER2016_CLASSES, 1):
        for i in range(2):
            write_image(base / f"{number:02d}_{cls}" / f"{i}A{number}_CRC-Prim-HE-0{i}.tif_Row_1_Col_1.tif", mode="RGB")
    df = readers.read_kather2016(tmp_path / "kather2016")
    assert len(df) == 16
    assert df["label"].tolist() == [i for i in range(8) for _ in range(2)]
    assert df["label_name"].iloc[-1] == "EMPTY"
    assert df["patient"].iloc[0] == "0A1_CRC-Prim-HE-00.tif_Row_1_Col_1"


# --------------------------------------------------------------------------- messidor

def test_messidor_real_sheet(shared_data):
    rows = readers.parse_messidor_sheet(shared_data / "messidor" / "grades.xlsx")
    assert len(rows) == 32  # blank separator rows and the unnamed empty column dropped
    assert list(rows.columns) == ["image_name", "grade", "macular_edema_risk", "row", "problem"]
    assert (rows["problem"] == "").all()
    assert rows["grade"].dtype == np.int64 and rows["macular_edema_risk"].dtype == np.int64
    first = rows.set_index("image_name").loc["20051020_57566_0100_PP.tif"]
    assert (first["grade"], first["macular_edema_risk"], first["row"]) == (3, 1, 4)
    assert rows.set_index("image_name").loc["20060407_44304_0200_PP.tif", "macular_edema_risk"] == 2
    assert np.bincount(rows["grade"]).tolist() == [16, 7, 6, 3]


def test_messidor_generated_tree(tmp_path):
    root = tmp_path / "messidor"
    header = ["Image name", "Ophthalmologic department", "Retinopathy grade", "Risk of macular edema "]
    base11 = [(f"20051019_3855{i}_0100_PP.tif", "Service Ophtalmologie Lariboisière", float(i % 4), 0.0)
              for i in range(4)]
    write_xls(root / "Base11" / "Annotation_Base11.xls", header, base11)
    base12 = pd.DataFrame([("20051020_43808_0200_PP.tif", "CHU de St Etienne", 2.0, 1.0)], columns=header)
    (root / "Base12").mkdir()
    base12.to_excel(root / "Base12" / "Annotation_Base12.xlsx", index=False)
    for base, rows in (("Base11", base11), ("Base12", base12.itertuples(index=False))):
        for row in rows:
            write_image(root / base / row[0], mode="RGB")
    df = readers.read_messidor(root)
    assert len(df) == 5
    assert df["label"].tolist() == [0, 1, 2, 3, 2]
    assert df["base"].tolist() == ["Base11"] * 4 + ["Base12"]
    assert df["macular_edema_risk"].tolist() == [0, 0, 0, 0, 1]
    assert df["patient"].iloc[0] == "20051019_38550_0100_PP"
    # a repeated row with the same grades counts once; with other grades it is an error
    write_xls(root / "Base11" / "Annotation_Base11.xls", header, base11 + [base11[1]])
    assert len(readers.read_messidor(root)) == 5
    write_xls(root / "Base11" / "Annotation_Base11.xls", header, base11 + [base11[1][:2] + (3.0, 0.0)])
    with pytest.raises(ValueError, match=r"Annotation_Base11\.xls: row 3: .*38551_0100_PP\.tif: listed 2 times with "
                                         r"different grades \(rows \[3, 6\]"):
        readers.read_messidor(root)
    flagged = readers.read_messidor(root, skip_bad=True)  # both copies flagged, for --skip-bad to list
    assert len(flagged) == 6 and (flagged["problem"] != "").sum() == 2
    header[2] = "Retinopathy Grade (0-3)"
    write_xls(root / "Base11" / "Annotation_Base11.xls", header, base11)
    with pytest.raises(ValueError, match=r"Annotation_Base11\.xls: missing column\(s\) \['Retinopathy grade'\]"):
        readers.read_messidor(root, skip_bad=True)
    header[2] = "Retinopathy grade"
    write_xls(root / "Base11" / "Annotation_Base11.xls", header, base11)
    (root / "Base11" / base11[2][0]).unlink()
    with pytest.raises(ValueError, match=r"Annotation_Base11\.xls: 1 listed image.*row 4 .*38552_0100_PP\.tif"):
        readers.read_messidor(root)


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
    df = readers.read_messidor(root)
    assert len(df) == 64
    got = {Path(p).name: (label, risk) for p, label, risk in zip(df["image"], df["label"], df["macular_edema_risk"])}
    assert got == {**expected, **{f"x{n}": v for n, v in expected.items()}}
    assert df.loc[df["base"] == "Base11", "origin"].str.contains(r"Annotation_Base11\.xlsx: row \d+$").all()


# --------------------------------------------------------------------------- deepdrid

def test_deepdrid_excerpt_labels(shared_data):
    table = pd.read_csv(shared_data / "deepdrid" / "regular-fundus-training_excerpt.csv", dtype=str)
    rows = readers.label_deepdrid_rows(table).set_index("image_id")
    assert len(rows) == 48
    assert (rows.loc["56_r3", "label"], rows.loc["56_r3", "eye"]) == (1, "right")  # fills the left column
    assert rows.loc["56_l3", "label"] == 0  # fills the right column, patient level 1
    # each eye keeps its own level where the patient level differs
    assert rows.loc[["3_r1", "3_r2"], "label"].tolist() == [0, 0]  # patient level 1
    assert rows.loc[["4_l1", "6_r1", "57_l2"], "label"].tolist() == [3, 2, 3]  # patient level 4
    assert rows.loc[["4_r1", "57_r1"], "label"].tolist() == [4, 4]
    assert rows["patient"].nunique() == 12
    assert rows["label"].dtype == np.int64
    # own eye column, else the one filled eye column, else the patient level
    table = pd.DataFrame({"patient_id": ["9"] * 4, "image_id": ["9_l1", "9_r1", "9_l2", "9_r2"],
                          "left_eye_DR_Level": ["1", "3", None, None], "right_eye_DR_Level": ["2", None, "4", None],
                          "patient_DR_Level": ["0", "0", "0", "2"]})
    assert readers.label_deepdrid_rows(table)["label"].tolist() == [1, 3, 4, 2]


def test_deepdrid_generated_tree(shared_data, tmp_path):
    root = tmp_path / "deepdrid"
    table = pd.read_csv(shared_data / "deepdrid" / "regular-fundus-training_excerpt.csv", dtype=str)
    later = table["patient_id"].isin(["56", "57"])  # validation: patients 156, 157 (renamed copies)
    folders = {"training": table[~later], "validation": table[later].assign(
        patient_id=lambda t: "1" + t["patient_id"], image_id=lambda t: "1" + t["image_id"])}
    for name, part in folders.items():
        folder = root / "regular_fundus_images" / f"regular-fundus-{name}"
        folder.mkdir(parents=True)
        part.to_csv(folder / f"regular-fundus-{name}.csv", index=False)
        for pid, image_id in zip(part["patient_id"], part["image_id"]):
            write_image(folder / "Images" / pid / f"{image_id}.jpg", mode="RGB", size=(4, 4))
    df = readers.read_deepdrid(root)
    assert len(df) == 48
    assert df["official_split"].value_counts().to_dict() == {"train": 40, "val": 8}
    assert df.loc[df["image"].str.endswith("/156_r3.jpg"), "label"].item() == 1
    split = manifests.make_splits(df, val_frac=0.15, test_frac=0.2, seed=0)
    assert (split.loc[split["official_split"] == "val", "split"] == "val").all()
    assert set(split.loc[split["official_split"] == "train", "split"]) == {"train", "test"}
    os.remove(df["image"].iloc[3])
    with pytest.raises(ValueError, match=r"regular-fundus-training\.csv: 1 listed image.*row 5 .*/1_r2\.jpg"):
        readers.read_deepdrid(root)


def test_deepdrid_origin_names_the_csv_row(shared_data, tmp_path):
    table = pd.read_csv(shared_data / "deepdrid" / "regular-fundus-training_excerpt.csv", dtype=str)
    folder = tmp_path / "deepdrid" / "regular_fundus_images" / "regular-fundus-training"
    folder.mkdir(parents=True)
    csv_path = folder / "regular-fundus-training.csv"
    table.to_csv(csv_path, index=False)
    for pid, image_id in zip(table["patient_id"], table["image_id"]):
        write_image(folder / "Images" / pid / f"{image_id}.jpg", mode="RGB", size=(4, 4))
    df = readers.read_deepdrid(tmp_path / "deepdrid")
    by_id = df.set_index(df["image"].map(lambda p: Path(p).stem))
    row_56_r3 = int(np.flatnonzero(table["image_id"] == "56_r3")[0]) + 2
    assert by_id.loc["56_r3", "origin"] == f"{csv_path}: row {row_56_r3}"
    assert (by_id.loc["56_r3", "label"], by_id.loc["56_r3", "eye"]) == (1, "right")
    (folder / "Images" / "56" / "56_r3.jpg").write_bytes(b"")
    bad = readers.bad_rows(readers.check_images(df))
    assert bad["origin"].tolist() == [f"{csv_path}: row {row_56_r3}"] and bad["reason"].tolist() == ["zero-byte file"]


# --------------------------------------------------------------------------- folder

def test_folder_reader(tmp_path):
    root = tmp_path / "mine"
    write_image(root / "sick" / "a.png")
    write_image(root / "sick" / "nested" / "b.jpg", mode="RGB")
    write_image(root / "healthy" / "c.tiff")
    (root / "healthy" / "d.nii.gz").write_bytes(b"\x1f\x8b")
    (root / "healthy" / "notes.txt").write_text("ignored")
    df = readers.read_folder(root)
    assert readers.folder_classes(root) == ["healthy", "sick"]
    assert df["label_name"].tolist() == ["healthy", "healthy", "sick", "sick"]
    # an image directly in its class folder is its own patient; a sub-folder under the class is the patient
    assert df["patient"].tolist() == ["healthy/c", "healthy/d", "sick/a", "nested"]
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: class folder holds no images"):
        readers.read_folder(root)


def test_missing_root_and_no_images(tmp_path):
    with pytest.raises(ValueError, match="nowhere: dataset folder not found"):
        readers.read_shenzhen(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no images found"):
        readers.read_shenzhen(tmp_path / "empty")


# --------------------------------------------------------------------------- image checks

def test_image_problem(tmp_path):
    good = {
        "a.png": lambda p: Image.new("L", (4, 4)).save(p),
        "a.jpeg": lambda p: Image.new("RGB", (4, 4)).save(p),
        "a.tif": lambda p: Image.new("RGB", (4, 4)).save(p),
        "a.bmp": lambda p: Image.new("RGB", (4, 4)).save(p),
        "a.dcm": lambda p: p.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 8),
        "a.nii": lambda p: p.write_bytes((348).to_bytes(4, "little") + b"\0" * 344),
        "a.nii.gz": lambda p: p.write_bytes(b"\x1f\x8b\x08\x00" + b"\0" * 20),
        "png_named.jpeg": lambda p: Image.new("L", (4, 4)).save(p, format="PNG"),
    }
    for name, write in good.items():
        write(tmp_path / name)
        assert readers.image_problem(tmp_path / name) is None, name
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "page.jpeg").write_text("<html>404 Not Found</html>")
    (tmp_path / "folder.png").mkdir()
    assert readers.image_problem(tmp_path / "empty.png") == "zero-byte file"
    assert readers.image_problem(tmp_path / "page.jpeg").startswith("not an image (header not PNG")
    assert readers.image_problem(tmp_path / "folder.png").startswith("cannot be read (")
    assert readers.image_problem(tmp_path / "gone.png") == "not found"


def test_find_bad_images_names_origin(shared_data, tmp_path):
    root = eyepacs_tree(shared_data, tmp_path / "eyepacs")
    df = readers.read_eyepacs(root)
    labels_csv = root / "trainLabels.csv"
    assert df["origin"].tolist() == [f"{labels_csv}: row {i}" for i in range(2, 12)]
    assert readers.bad_rows(readers.check_images(df)).empty
    (root / "train" / "15_left.jpeg").unlink()
    (root / "train" / "15_left.jpeg").write_bytes(b"")
    os.remove(root / "train" / "17_right.jpeg")
    bad = readers.bad_rows(readers.check_images(df))
    rows = {Path(p).name: (o, r) for p, o, r in zip(bad["image"], bad["origin"], bad["reason"])}
    assert rows == {"15_left.jpeg": (f"{labels_csv}: row 6", "zero-byte file"),
                    "17_right.jpeg": (f"{labels_csv}: row 11", "not found")}
    assert bad.index.tolist() == [4, 9]
    message = str(readers.bad_rows_error(bad, len(df)))
    assert message.startswith(f"{labels_csv}: row 6: {root / 'train' / '15_left.jpeg'}: zero-byte file (2 of 10")


# --------------------------------------------------------------------------- registry

def test_registry():
    assert list(readers.DATASETS) == ["chestxray14", "breakhis", "eyepacs", "shenzhen", "covid19_radiography",
                                       "kather2016", "messidor", "deepdrid", "folder", "csv"]
    weights = {k for k, s in readers.DATASETS.items() if s.class_weights == "balanced"}
    assert weights == {"eyepacs", "messidor", "deepdrid"}
    assert sum(len(readers.DATASETS[k].classes) for k in ("chestxray14", "breakhis", "eyepacs")) == 22
    assert {s.headline_metric for k, s in readers.DATASETS.items() if k in ("messidor", "deepdrid")} == {"kappa"}


def test_eyepacs_identical_repeats_dropped_contradictions_refused(tmp_path):
    from kit import readers
    eyepacs_labels_tree(tmp_path / "ep", ["646_left,1", "646_right,0", "10_left,0", "10_right,2", "10_left,0", "646_left,4"])
    with pytest.raises(ValueError) as err:
        readers.read_dataset("eyepacs", tmp_path / "ep")
    assert "646_left" in str(err.value) and "grade_1 here" in str(err.value) and "grade_4 at" in str(err.value)
    df, _ = readers.read_dataset("eyepacs", tmp_path / "ep", skip_bad=True)
    assert df.attrs["duplicates_dropped"] == 1
    assert len(df) == 5 and (df["problem"] != "").sum() == 2
