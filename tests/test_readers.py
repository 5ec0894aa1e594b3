"""Readers on the real sample files (../shared/data) and on generated native trees; splits;
manifest loading and the 22-label aggregate."""
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import datasets


def write_image(path: Path, *, mode: str = "L", size=(8, 8), value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value // 2, 200)).save(path)
    return path


def link(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)
    return dst


# --------------------------------------------------------------------------- chestxray14

def test_chestxray14_full_metadata(shared_data, capsys):
    root = shared_data / "chestxray14"
    start = time.perf_counter()
    df = datasets.read_chestxray14(root, check_files=False)
    read_s = time.perf_counter() - start
    split = datasets.make_splits(df, val_frac=0.15, test_frac=0.15, seed=0)
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
    assert set(names) == set(datasets.CHESTXRAY14_CLASSES)
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
        datasets.read_chestxray14(shared_data / "chestxray14", check_files=True)


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
    df = datasets.read_chestxray14(root)
    assert len(df) == len(rows)
    assert all(Path(p).is_file() and "images_001/images" in p for p in df["image"])
    first = df.iloc[0]
    assert first["labels"] == "Atelectasis|Effusion"  # canonical class order
    assert set(df.loc[df["official_split"] == "test", "image"].map(os.path.basename)) == set(test_names)
    split = datasets.make_splits(df, val_frac=0.2, test_frac=0.3, seed=1)
    assert (split.loc[split["official_split"] == "test", "split"] == "test").all()
    assert (split.loc[split["official_split"] == "train", "split"] != "test").all()
    assert (split["split"] == "val").any()


def test_chestxray14_unknown_label(tmp_path):
    root = write_chestxray14(tmp_path / "cxr", [("00000001_000.png", "Effusion", 1),
                                                 ("00000002_000.png", "Pneumonia|COVID", 2)])
    message = r"Data_Entry_2017_v2020\.csv: row 3: .*/00000002_000\.png: unknown label 'COVID'; expected .*\(1 of 2"
    with pytest.raises(ValueError, match=message):
        datasets.read_chestxray14(root)
    df = datasets.read_chestxray14(root, skip_bad=True)  # kept, flagged, for prepare_data to list
    assert df["problem"].str[:21].tolist() == ["", "unknown label 'COVID'"]


# --------------------------------------------------------------------------- breakhis

BREAKHIS_EXPECTED = {  # file -> (label, subtype, slide, magnification)
    "SOB_B_A-14-22549AB-40-001.png": ("benign", "adenosis", "14-22549AB", 40),
    "SOB_B_F-14-25197-40-023.png": ("benign", "fibroadenoma", "14-25197", 40),
    "SOB_B_F-14-25197-100-001.png": ("benign", "fibroadenoma", "14-25197", 100),
    "SOB_B_F-14-25197-200-032.png": ("benign", "fibroadenoma", "14-25197", 200),
    "SOB_B_F-14-25197-400-033.png": ("benign", "fibroadenoma", "14-25197", 400),
    "SOB_B_F-14-9133-40-001.png": ("benign", "fibroadenoma", "14-9133", 40),
    "SOB_B_PT-14-21998AB-40-001.png": ("benign", "phyllodes_tumor", "14-21998AB", 40),
    "SOB_B_TA-14-3411F-40-001.png": ("benign", "tubular_adenoma", "14-3411F", 40),
    "SOB_M_DC-14-2523-40-010.png": ("malignant", "ductal_carcinoma", "14-2523", 40),
    "SOB_M_LC-14-12204-40-001.png": ("malignant", "lobular_carcinoma", "14-12204", 40),
    "SOB_M_MC-14-10147-40-001.png": ("malignant", "mucinous_carcinoma", "14-10147", 40),
    "SOB_M_PC-14-9146-40-001.png": ("malignant", "papillary_carcinoma", "14-9146", 40),
}


def breakhis_tree(shared_data: Path, root: Path) -> Path:
    """The 12 real PNGs in the native BreaKHis_v1 folder structure (symlinks)."""
    for src in sorted((shared_data / "breakhis").glob("SOB_*.png")):
        cls = "benign" if src.name[4] == "B" else "malignant"
        stem = src.stem.split("-")
        slide_folder, mag = "-".join(stem[:3]), stem[3]
        _, subtype, _, _ = BREAKHIS_EXPECTED[src.name]
        link(src, root / "BreaKHis_v1/histology_slides/breast" / cls / "SOB" / subtype / slide_folder
             / f"{mag}X" / src.name)
    return root


def test_breakhis_real_files(shared_data, tmp_path):
    root = breakhis_tree(shared_data, tmp_path / "breakhis")
    df = datasets.read_breakhis(root)
    assert len(df) == 12
    got = {os.path.basename(r.image): (r.label_name, r.subtype, r.slide, r.magnification) for r in df.itertuples()}
    assert got == BREAKHIS_EXPECTED
    assert (df["patient"] == df["slide"]).all()
    assert df["label"].tolist() == [datasets.BREAKHIS_CLASSES.index(n) for n in df["label_name"]]
    assert (df["label_name"] == "malignant").sum() == 4
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["image"])


def test_breakhis_bad_name(tmp_path):
    write_image(tmp_path / "b" / "SOB_B_XX-14-1-40-001.png")
    with pytest.raises(ValueError, match="SOB_B_XX-14-1-40-001.png: unknown BreakHis tumour type 'XX'"):
        datasets.read_breakhis(tmp_path / "b")
    write_image(tmp_path / "b" / "SOB_M_DC-14-2523-40-010.png")
    df = datasets.read_breakhis(tmp_path / "b", skip_bad=True)
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
    df = datasets.read_eyepacs(eyepacs_tree(shared_data, tmp_path / "eyepacs"))
    assert len(df) == 10
    got = {Path(p).stem: label for p, label in zip(df["image"], df["label"])}
    assert got == EYEPACS_GRADES
    assert sorted(df["patient"].unique()) == ["10", "13", "15", "16", "17"]
    assert df.loc[df["image"].str.endswith("/15_right.jpeg"), "label_name"].item() == "grade_2"
    assert "official_split" not in df.columns


def test_eyepacs_full_label_file(shared_data):
    root = shared_data / "eyepacs"  # trainLabels.csv + images/ (the fallback folder name)
    df = datasets.read_eyepacs(root, check_files=False)
    assert len(df) == 35_126
    assert np.bincount(df["label"]).tolist() == [25_810, 2_443, 5_292, 873, 708]
    assert df.loc[df["image"].str.endswith("/16_left.jpeg"), "image"].item() == str(root / "images" / "16_left.jpeg")
    with pytest.raises(ValueError, match=r"trainLabels\.csv: 35116 listed image.*row 12 .*19_left\.jpeg"):
        datasets.read_eyepacs(root)


def test_eyepacs_official_test_and_bad_level(shared_data, tmp_path):
    root = eyepacs_tree(shared_data, tmp_path / "eyepacs")
    write_image(root / "test" / "1_left.jpeg", mode="RGB")
    write_image(root / "test" / "1_right.jpeg", mode="RGB")
    (root / "retinopathy_solution.csv").write_text("image,level,Usage\n1_left,0,Private\n1_right,3,Public\n")
    df = datasets.read_eyepacs(root)
    assert df["official_split"].value_counts().to_dict() == {"train": 10, "test": 2}
    assert df.loc[df["official_split"] == "test", "label"].tolist() == [0, 3]
    (root / "retinopathy_solution.csv").write_text("image,level,Usage\n1_left,7,Private\n")
    with pytest.raises(ValueError, match=r"retinopathy_solution\.csv: row 2: .*/test/1_left\.jpeg: level '7' is not "
                                         r"a grade 0\.\.4 \(1 of 11 rows bad"):
        datasets.read_eyepacs(root)
    (root / "retinopathy_solution.csv").write_text("image,level,Usage\n1_left,7,Private\n1-right,2,Public\n")
    df = datasets.read_eyepacs(root, skip_bad=True, check_files=False)
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
    df = datasets.read_shenzhen(root)
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
    df = datasets.read_covid19_radiography(tmp_path / "covid19_radiography")
    spec = datasets.DATASETS["covid19_radiography"]
    assert list(spec.classes) == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    counts = df["label_name"].value_counts().reindex(spec.classes, fill_value=0)
    assert counts.tolist() == [25, 0, 25, 0]
    assert df.loc[df["label_name"] == "Normal", "label"].unique().tolist() == [2]
    assert "COVID-21" in set(df["patient"])
    # the layout without the COVID-19_Radiography_Dataset level reads the same
    direct = datasets.read_covid19_radiography(base)
    assert direct["label"].tolist() == df["label"].tolist()


def test_covid19_newer_layout_and_empty_class(tmp_path):
    base = tmp_path / "covid" / "COVID-19_Radiography_Dataset"
    for cls in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"):
        for i in range(1, 4):
            write_image(base / cls / "images" / f"{cls}-{i}.png")
            write_image(base / cls / "masks" / f"{cls}-{i}.png", value=255)
    df = datasets.read_covid19_radiography(tmp_path / "covid")
    assert len(df) == 12 and sorted(df["label"].unique()) == [0, 1, 2, 3]
    assert not df["image"].str.contains("/masks/").any()
    assert df.loc[df["label"] == 3, "image"].str.contains("Viral Pneumonia/images/").all()
    for mask in (base / "Normal" / "images").iterdir():
        mask.unlink()
    with pytest.raises(ValueError, match="Normal: class folder holds no images"):
        datasets.read_covid19_radiography(tmp_path / "covid")


def test_kather2016_generated_tree(tmp_path):
    base = tmp_path / "kather2016" / "Kather_texture_2016_image_tiles_5000"
    for number, cls in enumerate(datasets.KATHER2016_CLASSES, 1):
        for i in range(2):
            write_image(base / f"{number:02d}_{cls}" / f"{i}A{number}_CRC-Prim-HE-0{i}.tif_Row_1_Col_1.tif", mode="RGB")
    df = datasets.read_kather2016(tmp_path / "kather2016")
    assert len(df) == 16
    assert df["label"].tolist() == [i for i in range(8) for _ in range(2)]
    assert df["label_name"].iloc[-1] == "EMPTY"
    assert df["patient"].iloc[0] == "0A1_CRC-Prim-HE-00.tif_Row_1_Col_1"


# --------------------------------------------------------------------------- messidor

def test_messidor_real_sheet(shared_data):
    rows = datasets.parse_messidor_sheet(shared_data / "messidor" / "grades.xlsx")
    assert len(rows) == 32  # blank separator rows and the unnamed empty column dropped
    assert list(rows.columns) == ["image_name", "grade", "macular_edema_risk", "row", "problem"]
    assert (rows["problem"] == "").all()
    assert rows["grade"].dtype == np.int64 and rows["macular_edema_risk"].dtype == np.int64
    first = rows.set_index("image_name").loc["20051020_57566_0100_PP.tif"]
    assert (first["grade"], first["macular_edema_risk"], first["row"]) == (3, 1, 4)
    assert rows.set_index("image_name").loc["20060407_44304_0200_PP.tif", "macular_edema_risk"] == 2
    assert np.bincount(rows["grade"]).tolist() == [16, 7, 6, 3]


def write_xls(path: Path, header, rows) -> None:
    import xlwt
    book = xlwt.Workbook()
    sheet = book.add_sheet("Feuil1")
    for j, name in enumerate(header):
        sheet.write(0, j, name)
    for i, row in enumerate(rows, 1):
        for j, value in enumerate(row):
            sheet.write(i, j, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(str(path))


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
    df = datasets.read_messidor(root)
    assert len(df) == 5
    assert df["label"].tolist() == [0, 1, 2, 3, 2]
    assert df["base"].tolist() == ["Base11"] * 4 + ["Base12"]
    assert df["macular_edema_risk"].tolist() == [0, 0, 0, 0, 1]
    assert df["patient"].iloc[0] == "20051019_38550_0100_PP"
    # a repeated row with the same grades counts once; with other grades it is an error
    write_xls(root / "Base11" / "Annotation_Base11.xls", header, base11 + [base11[1]])
    assert len(datasets.read_messidor(root)) == 5
    write_xls(root / "Base11" / "Annotation_Base11.xls", header, base11 + [base11[1][:2] + (3.0, 0.0)])
    with pytest.raises(ValueError, match=r"Annotation_Base11\.xls: row 3: .*38551_0100_PP\.tif: listed 2 times with "
                                         r"different grades \(rows \[3, 6\]"):
        datasets.read_messidor(root)
    flagged = datasets.read_messidor(root, skip_bad=True)  # both copies flagged, for --skip-bad to list
    assert len(flagged) == 6 and (flagged["problem"] != "").sum() == 2
    header[2] = "Retinopathy Grade (0-3)"
    write_xls(root / "Base11" / "Annotation_Base11.xls", header, base11)
    with pytest.raises(ValueError, match=r"Annotation_Base11\.xls: missing column\(s\) \['Retinopathy grade'\]"):
        datasets.read_messidor(root, skip_bad=True)
    header[2] = "Retinopathy grade"
    write_xls(root / "Base11" / "Annotation_Base11.xls", header, base11)
    (root / "Base11" / base11[2][0]).unlink()
    with pytest.raises(ValueError, match=r"Annotation_Base11\.xls: 1 listed image.*row 4 .*38552_0100_PP\.tif"):
        datasets.read_messidor(root)


# --------------------------------------------------------------------------- deepdrid

def test_deepdrid_excerpt_labels(shared_data):
    table = pd.read_csv(shared_data / "deepdrid" / "regular-fundus-training_excerpt.csv", dtype=str)
    rows = datasets.label_deepdrid_rows(table).set_index("image_id")
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
    assert datasets.label_deepdrid_rows(table)["label"].tolist() == [1, 3, 4, 2]


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
    df = datasets.read_deepdrid(root)
    assert len(df) == 48
    assert df["official_split"].value_counts().to_dict() == {"train": 40, "val": 8}
    assert df.loc[df["image"].str.endswith("/156_r3.jpg"), "label"].item() == 1
    split = datasets.make_splits(df, val_frac=0.15, test_frac=0.2, seed=0)
    assert (split.loc[split["official_split"] == "val", "split"] == "val").all()
    assert set(split.loc[split["official_split"] == "train", "split"]) == {"train", "test"}
    os.remove(df["image"].iloc[3])
    with pytest.raises(ValueError, match=r"regular-fundus-training\.csv: 1 listed image.*row 5 .*/1_r2\.jpg"):
        datasets.read_deepdrid(root)


# --------------------------------------------------------------------------- folder

def test_folder_reader(tmp_path):
    root = tmp_path / "mine"
    write_image(root / "sick" / "a.png")
    write_image(root / "sick" / "nested" / "b.jpg", mode="RGB")
    write_image(root / "healthy" / "c.tiff")
    (root / "healthy" / "d.nii.gz").write_bytes(b"\x1f\x8b")
    (root / "healthy" / "notes.txt").write_text("ignored")
    df = datasets.read_folder(root)
    assert datasets.folder_classes(root) == ["healthy", "sick"]
    assert df["label_name"].tolist() == ["healthy", "healthy", "sick", "sick"]
    assert df["patient"].tolist() == ["healthy/c", "healthy/d", "sick/a", "sick/nested/b"]
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: class folder holds no images"):
        datasets.read_folder(root)


def test_missing_root_and_no_images(tmp_path):
    with pytest.raises(ValueError, match="nowhere: dataset folder not found"):
        datasets.read_shenzhen(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no images found"):
        datasets.read_shenzhen(tmp_path / "empty")


# --------------------------------------------------------------------------- splits

def synthetic(n_patients=200, images_per_patient=3, n_classes=4, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = np.repeat(rng.choice(n_classes, size=n_patients, p=[0.55, 0.25, 0.15, 0.05][:n_classes]
                                 if n_classes == 4 else None), images_per_patient)
    patient = np.repeat([f"p{i:04d}" for i in range(n_patients)], images_per_patient)
    return pd.DataFrame({"image": [f"/x/{i}.png" for i in range(len(label))], "label": label, "patient": patient})


def test_splits_patient_level_stratified_seeded():
    df = synthetic()
    a = datasets.make_splits(df, val_frac=0.15, test_frac=0.15, seed=0)
    assert a.groupby("patient")["split"].nunique().max() == 1
    share = a["split"].value_counts(normalize=True)
    assert abs(share["val"] - 0.15) < 0.03 and abs(share["test"] - 0.15) < 0.03
    table = pd.crosstab(a["label"], a["split"], normalize="columns")
    whole = df["label"].value_counts(normalize=True).sort_index()
    assert (table.sub(whole, axis=0).abs() < 0.05).all().all()
    assert (pd.crosstab(a["label"], a["split"]) > 0).all().all()
    assert a["split"].tolist() == datasets.make_splits(df, val_frac=0.15, test_frac=0.15, seed=0)["split"].tolist()
    assert a["split"].tolist() != datasets.make_splits(df, val_frac=0.15, test_frac=0.15, seed=1)["split"].tolist()
    shuffled = datasets.make_splits(df.sample(frac=1, random_state=3), val_frac=0.15, test_frac=0.15, seed=0)
    assert shuffled.sort_index()["split"].tolist() == a["split"].tolist()  # row order does not matter
    assert list(a.columns[:4]) == ["image", "label", "patient", "split"]


def test_splits_demo_size_every_class_everywhere():
    # demo sets: ~15-30 images per class, one image per patient
    for seed in range(5):
        df = pd.DataFrame({"image": [f"{i}.png" for i in range(60)], "label": [i % 4 for i in range(60)],
                           "patient": [f"id{i}" for i in range(60)]})
        split = datasets.make_splits(df, val_frac=0.15, test_frac=0.15, seed=seed)
        assert (pd.crosstab(split["label"], split["split"]) >= 1).all().all()
        # eyes of one patient with different grades; a rare grade only in mixed patients
        eyes = pd.DataFrame({"image": [f"{i}" for i in range(40)], "patient": [f"p{i // 2}" for i in range(40)],
                             "label": [0, 1] * 5 + [0, 0] * 10 + [2, 2] * 5})
        split = datasets.make_splits(eyes, val_frac=0.2, test_frac=0.2, seed=seed)
        assert (pd.crosstab(split["label"], split["split"]) >= 1).all().all()
        assert split.groupby("patient")["split"].nunique().max() == 1


def test_splits_multilabel_rare_label():
    labels = ["No Finding"] * 120 + ["Effusion"] * 40 + ["Effusion|Hernia"] * 6 + ["Hernia"] * 3 + [""] * 6
    df = pd.DataFrame({"image": range(len(labels)), "labels": labels, "patient": [f"p{i}" for i in range(len(labels))]})
    split = datasets.make_splits(df, val_frac=0.15, test_frac=0.15, seed=0)
    for name in ("train", "val", "test"):
        present = set(split.loc[split["split"] == name, "labels"].str.split("|").explode())
        assert {"No Finding", "Effusion", "Hernia"} <= present, name


def test_splits_multilabel_without_any_label():
    df = pd.DataFrame({"image": range(20), "labels": [""] * 20, "patient": [f"p{i}" for i in range(20)]})
    split = datasets.make_splits(df, val_frac=0.2, test_frac=0.2, seed=0)
    assert split["split"].value_counts().to_dict() == {"train": 12, "val": 4, "test": 4}


def test_splits_official():
    df = synthetic(n_patients=100, images_per_patient=2)
    patient_number = df["patient"].str[1:].astype(int)
    # official test only -> val carved from the official train rows
    official = np.where(patient_number < 20, "test", "train")
    split = datasets.make_splits(df.assign(official_split=official), val_frac=0.25, test_frac=0.15, seed=0)
    assert (split.loc[official == "test", "split"] == "test").all()
    carved = split.loc[official == "train", "split"].value_counts(normalize=True)
    assert set(carved.index) == {"train", "val"} and abs(carved["val"] - 0.25) < 0.05
    # official val only -> test carved from train
    official = np.where(patient_number < 20, "val", "train")
    split = datasets.make_splits(df.assign(official_split=official), val_frac=0.25, test_frac=0.15, seed=0)
    assert (split.loc[official == "val", "split"] == "val").all()
    assert set(split.loc[official == "train", "split"]) == {"train", "test"}
    # both official -> kept as they are; unassigned rows are carved
    official = np.where(patient_number < 20, "val", np.where(patient_number < 40, "test", "train"))
    split = datasets.make_splits(df.assign(official_split=official), val_frac=0.25, test_frac=0.15, seed=0)
    assert split["split"].tolist() == official.tolist()
    official = np.where(patient_number < 20, "test", "")
    split = datasets.make_splits(df.assign(official_split=official), val_frac=0.2, test_frac=0.15, seed=0)
    assert set(split.loc[official == "", "split"]) == {"train", "val"}


def test_split_fraction_errors():
    df = synthetic(n_patients=10)
    for val, test in ((-0.1, 0.1), (0.1, 1.0), (0.5, 0.5)):
        with pytest.raises(ValueError, match="must be"):
            datasets.make_splits(df, val_frac=val, test_frac=test, seed=0)


def test_nested_fraction_nested_patient_level_stratified_seeded():
    df = datasets.make_splits(synthetic(n_patients=400, images_per_patient=2), seed=0)
    train_patients = lambda part: set(part.loc[part["split"] == "train", "patient"])
    subsets = {f: datasets.nested_fraction(df, f, seed=5) for f in (0.05, 0.1, 0.25, 0.5, 1.0)}
    for small, large in ((0.05, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 1.0)):
        assert train_patients(subsets[small]) < train_patients(subsets[large])  # nested, strictly
    assert subsets[1.0].equals(df)
    all_train = df[df["split"] == "train"]
    per_class = all_train.groupby("label")["patient"].nunique()
    for fraction, part in subsets.items():
        held_out = part[part["split"] != "train"]
        assert held_out.equals(df[df["split"] != "train"])  # val/test untouched
        train = part[part["split"] == "train"]
        # whole patients: a kept patient keeps all its train images
        assert train.groupby("patient").size().eq(all_train.groupby("patient").size()[train["patient"].unique()]).all()
        # stratified: ceil(fraction x patients) of every class
        kept = train.groupby("label")["patient"].nunique().reindex(per_class.index, fill_value=0)
        assert kept.tolist() == [int(np.ceil(fraction * n)) for n in per_class], fraction
    assert train_patients(datasets.nested_fraction(df, 0.25, seed=5)) == train_patients(subsets[0.25])
    assert train_patients(datasets.nested_fraction(df, 0.25, seed=6)) != train_patients(subsets[0.25])
    shuffled = datasets.nested_fraction(df.sample(frac=1, random_state=1), 0.25, seed=5)
    assert train_patients(shuffled) == train_patients(subsets[0.25])  # row order does not matter
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
            datasets.nested_fraction(df, bad, seed=0)
    with pytest.raises(ValueError, match="needs a 'split' column"):
        datasets.nested_fraction(df.drop(columns="split"), 0.5, seed=0)


def test_nested_fraction_multilabel_keeps_rare_label():
    labels = ["No Finding"] * 200 + ["Effusion"] * 60 + ["Effusion|Hernia"] * 3
    df = pd.DataFrame({"image": range(len(labels)), "labels": labels, "patient": [f"p{i}" for i in range(len(labels))],
                       "split": "train"})
    part = datasets.nested_fraction(df, 0.1, seed=0)
    assert part["labels"].value_counts().to_dict() == {"No Finding": 20, "Effusion": 6, "Effusion|Hernia": 1}


def test_cap_per_class():
    df = synthetic(n_patients=300, images_per_patient=2)
    df.loc[df["patient"] == "p0000", "label"] = [0, 3]  # a patient with two classes (two eyes)
    capped = datasets.cap_per_class(df, 40, seed=0)
    counts = capped["label"].value_counts()
    assert counts.max() <= 40 and counts.min() >= 38 and sorted(counts.index) == [0, 1, 2, 3]
    assert capped.groupby("patient").size().eq(2).all()  # whole patients
    assert capped.equals(datasets.cap_per_class(df, 40, seed=0))
    assert not capped.equals(datasets.cap_per_class(df, 40, seed=1))
    shuffled = datasets.cap_per_class(df.sample(frac=1, random_state=2), 40, seed=0)
    assert set(shuffled["patient"]) == set(capped["patient"])
    assert datasets.cap_per_class(df, 10_000, seed=0).equals(df)
    # multi-label: every label counts; the rare one is kept although its images carry a full label
    labels = ["Effusion"] * 100 + ["Effusion|Hernia"] * 3 + ["No Finding"] * 50
    multi = pd.DataFrame({"image": range(len(labels)), "labels": labels, "patient": [f"p{i}" for i in range(len(labels))]})
    names = datasets.cap_per_class(multi, 10, seed=0)["labels"].str.split("|").explode().value_counts()
    assert names.to_dict() == {"Effusion": 10, "No Finding": 10, "Hernia": 3}
    with pytest.raises(ValueError, match="must be >= 1"):
        datasets.cap_per_class(df, 0, seed=0)


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
        assert datasets.image_problem(tmp_path / name) is None, name
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "page.jpeg").write_text("<html>404 Not Found</html>")
    (tmp_path / "folder.png").mkdir()
    assert datasets.image_problem(tmp_path / "empty.png") == "zero-byte file"
    assert datasets.image_problem(tmp_path / "page.jpeg").startswith("not an image (header not PNG")
    assert datasets.image_problem(tmp_path / "folder.png").startswith("cannot be read (")
    assert datasets.image_problem(tmp_path / "gone.png") == "not found"


def test_find_bad_images_names_origin(shared_data, tmp_path):
    root = eyepacs_tree(shared_data, tmp_path / "eyepacs")
    df = datasets.read_eyepacs(root)
    labels_csv = root / "trainLabels.csv"
    assert df["origin"].tolist() == [f"{labels_csv}: row {i}" for i in range(2, 12)]
    assert datasets.bad_rows(datasets.check_images(df)).empty
    (root / "train" / "15_left.jpeg").unlink()
    (root / "train" / "15_left.jpeg").write_bytes(b"")
    os.remove(root / "train" / "17_right.jpeg")
    bad = datasets.bad_rows(datasets.check_images(df))
    rows = {Path(p).name: (o, r) for p, o, r in zip(bad["image"], bad["origin"], bad["reason"])}
    assert rows == {"15_left.jpeg": (f"{labels_csv}: row 6", "zero-byte file"),
                    "17_right.jpeg": (f"{labels_csv}: row 11", "not found")}
    assert bad.index.tolist() == [4, 9]
    message = str(datasets.bad_rows_error(bad, len(df)))
    assert message.startswith(f"{labels_csv}: row 6: {root / 'train' / '15_left.jpeg'}: zero-byte file (2 of 10")


# --------------------------------------------------------------------------- manifests

def write_manifest(folder: Path, key: str, df: pd.DataFrame, **meta) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / f"{key}.csv", index=False)
    (folder / f"{key}.json").write_text(json.dumps({"key": key, **meta}))
    return folder / f"{key}.csv"


def test_load_manifest_checks(tmp_path):
    good = pd.DataFrame({"image": ["/a.png", "/b.png"], "label": [0, 1], "patient": ["007", "NA"],
                         "split": ["train", "val"]})
    path = write_manifest(tmp_path, "shenzhen", good, domain="cxr", task="multiclass",
                          classes=["normal", "tuberculosis"])
    df, meta = datasets.load_manifest(path)
    assert df["patient"].tolist() == ["007", "NA"] and df["label"].dtype == np.int64
    assert meta["classes"] == ["normal", "tuberculosis"]
    write_manifest(tmp_path, "shenzhen", good.assign(label=[0, 2]), domain="cxr", task="multiclass",
                   classes=["normal", "tuberculosis"])
    with pytest.raises(ValueError, match=r"shenzhen\.csv: row 3: label '2' is not a class index 0\.\.1"):
        datasets.load_manifest(path)
    write_manifest(tmp_path, "shenzhen", good.drop(columns="split"), domain="cxr", task="multiclass",
                   classes=["normal", "tuberculosis"])
    with pytest.raises(ValueError, match=r"shenzhen\.csv: missing column\(s\) \['split'\]"):
        datasets.load_manifest(path)
    (tmp_path / "shenzhen.json").unlink()
    with pytest.raises(ValueError, match=r"shenzhen\.json: manifest sidecar not found"):
        datasets.load_manifest(path)


def test_aggregate_manifests(tmp_path):
    cxr = write_manifest(tmp_path, "chestxray14", pd.DataFrame({
        "image": ["/c1.png", "/c2.png", "/c3.png"], "labels": ["Effusion|Mass", "No Finding", ""],
        "patient": ["1", "1", "2"], "split": ["train", "train", "test"]}),
        domain="cxr", task="multilabel", classes=list(datasets.CHESTXRAY14_CLASSES))
    bh = write_manifest(tmp_path, "breakhis", pd.DataFrame({
        "image": ["/b1.png", "/b2.png"], "label": [1, 0], "patient": ["14-2523", "1"], "split": ["val", "train"],
        "magnification": [40, 100]}), domain="hwsi", task="multiclass", classes=list(datasets.BREAKHIS_CLASSES))
    ep = write_manifest(tmp_path, "eyepacs", pd.DataFrame({
        "image": ["/e1.jpeg"], "label": [3], "patient": ["1"], "split": ["test"]}),
        domain="efi", task="multiclass", classes=list(datasets.DR_GRADES_5))
    df, meta = datasets.aggregate_manifests([cxr, bh, ep])
    assert (meta["key"], meta["domain"], meta["task"]) == ("all", "mixed", "multilabel")
    assert len(meta["classes"]) == 22
    assert meta["classes"][:2] == ["chestxray14/Atelectasis", "chestxray14/Cardiomegaly"]
    assert meta["classes"][15:17] == ["breakhis/benign", "breakhis/malignant"]
    assert meta["classes"][-1] == "eyepacs/grade_4"
    assert list(df.columns) == ["image", "labels", "patient", "split", "domain", "source"]
    assert df["labels"].tolist() == ["chestxray14/Effusion|chestxray14/Mass", "chestxray14/No Finding", "",
                                     "breakhis/malignant", "breakhis/benign", "eyepacs/grade_3"]
    assert df["patient"].tolist() == ["chestxray14/1", "chestxray14/1", "chestxray14/2", "breakhis/14-2523",
                                      "breakhis/1", "eyepacs/1"]
    assert df["domain"].tolist() == ["cxr"] * 3 + ["hwsi"] * 2 + ["efi"]
    assert df["split"].tolist() == ["train", "train", "test", "val", "train", "test"]
    assert meta["counts"]["test"]["eyepacs/grade_3"] == 1
    # per source, the labels a masked loss keeps for its rows (--label-mask)
    assert list(meta["label_groups"]) == ["chestxray14", "breakhis", "eyepacs"]
    assert meta["label_groups"]["breakhis"] == ["breakhis/benign", "breakhis/malignant"]
    assert sum(meta["label_groups"].values(), []) == meta["classes"]
    assert df["source"].tolist() == ["chestxray14"] * 3 + ["breakhis"] * 2 + ["eyepacs"]
    with pytest.raises(ValueError, match="appears twice"):
        datasets.aggregate_manifests([cxr, cxr])


def test_registry():
    assert list(datasets.DATASETS) == ["chestxray14", "breakhis", "eyepacs", "shenzhen", "covid19_radiography",
                                       "kather2016", "messidor", "deepdrid", "folder"]
    weights = {k for k, s in datasets.DATASETS.items() if s.class_weights == "balanced"}
    assert weights == {"eyepacs", "messidor", "deepdrid"}
    assert sum(len(datasets.DATASETS[k].classes) for k in ("chestxray14", "breakhis", "eyepacs")) == 22
    assert {s.headline_metric for k, s in datasets.DATASETS.items() if k in ("messidor", "deepdrid")} == {"kappa"}
