"""tools/make_demo_data.py: native layouts, real column names, determinism, content by class."""
import gzip
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xlrd
from helpers import ROOT, load_make_demo_data, run_script
from PIL import Image

demo = load_make_demo_data()

SCALE = 0.1   # ~250 small images in all, a few seconds


def generate(out, *extra):
    demo.main(demo.get_args_parser().parse_args(["--out", str(out), "--scale", str(SCALE), *extra]))


def tree_hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    generate(out, "--workers", "0")
    return out


def read_xls(path):
    sheet = xlrd.open_workbook(str(path)).sheet_by_index(0)
    header = sheet.row_values(0)
    return header, [dict(zip(header, sheet.row_values(i))) for i in range(1, sheet.nrows)], sheet


def plan_only(key, tmp_path, scale=1.0, seed=0):
    """Run one data set's planner (metadata files, job list) without drawing any image."""
    root = tmp_path / key
    root.mkdir()
    planner = demo.Planner(root, seed, key)
    demo.PLANNERS[key](root, np.random.default_rng((seed, demo.DATASET_KEYS.index(key), 0)), planner, scale)
    return root, planner.jobs


# ----------------------------------------------------------------------------------------------
# Layouts and columns

def test_all_datasets_written_and_no_temporary_folders(demo_root):
    assert sorted(p.name for p in demo_root.iterdir()) == sorted(demo.DATASET_KEYS)


def test_every_data_set_says_it_is_generated_demo_data(demo_root):
    """DEMO_DATA.json in each data set: what prepare_data.py copies into the manifest, so the report can say
    where the data came from (no date in it: the files stay byte-identical for a seed)."""
    for key in demo.DATASET_KEYS:
        record = json.loads((demo_root / key / "DEMO_DATA.json").read_text())
        assert record["generated"] is True and record["generator"] == "tools/make_demo_data.py"
        assert (record["dataset"], record["seed"], record["scale"]) == (key, 0, SCALE)
        assert record["contents"] and record["kit_version"] and "not images of patients" in record["note"]
    chestxray14 = json.loads((demo_root / "chestxray14" / "DEMO_DATA.json").read_text())
    assert chestxray14["image_size"] == "256x256 px" and "images of" in chestxray14["contents"]
    assert re.fullmatch(r"2\d\d-[23]\d\dx2\d\d-[23]\d\d px",
                        json.loads((demo_root / "shenzhen" / "DEMO_DATA.json").read_text())["image_size"])


@pytest.mark.parametrize("key,patterns", [
    ("chestxray14", [r"Data_Entry_2017_v2020\.csv", r"train_val_list\.txt", r"test_list\.txt",
                     r"images_001/images/\d{8}_\d{3}\.png"]),
    ("breakhis", [r"BreaKHis_v1/histology_slides/breast/benign/SOB/adenosis/SOB_B_A-14-\d+[A-Z]*/40X/"
                  r"SOB_B_A-14-\d+[A-Z]*-40-\d{3}\.png",
                  r"BreaKHis_v1/histology_slides/breast/malignant/SOB/papillary_carcinoma/SOB_M_PC-14-\d+[A-Z]*/400X/"
                  r"SOB_M_PC-14-\d+[A-Z]*-400-\d{3}\.png"]),
    ("eyepacs", [r"trainLabels\.csv", r"retinopathy_solution\.csv", r"train/\d+_left\.jpeg", r"test/\d+_right\.jpeg"]),
    ("shenzhen", [r"ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0\.png", r"ChinaSet_AllFiles/CXR_png/CHNCXR_\d{4}_1\.png",
                  r"ChinaSet_AllFiles/ClinicalReadings/CHNCXR_0001_0\.txt"]),
    ("covid19_radiography", [r"COVID-19_Radiography_Dataset/Viral Pneumonia/images/Viral Pneumonia-1\.png",
                             r"COVID-19_Radiography_Dataset/Lung_Opacity/masks/Lung_Opacity-1\.png",
                             r"COVID-19_Radiography_Dataset/COVID/images/COVID-\d+\.png"]),
    ("kather2016", [rf"Kather_texture_2016_image_tiles_5000/{folder}/[0-9A-F]+_CRC-Prim-HE-\d\d_\d{{3}}"
                    rf"\.tif_Row_\d+_Col_\d+\.tif" for folder in demo.KATHER_FOLDERS]),
    ("messidor", [rf"Base{b}/Annotation_Base{b}\.xls" for b in demo.MESSIDOR_BASES]
     + [r"Base34/20\d{6}_\d{5}_0400_PP\.tif", r"Base11/20\d{6}_\d{5}_0100_PP\.tif"]),
    ("deepdrid", [r"regular_fundus_images/regular-fundus-training/regular-fundus-training\.csv",
                  r"regular_fundus_images/regular-fundus-validation/regular-fundus-validation\.csv",
                  r"regular_fundus_images/regular-fundus-training/Images/1/1_l1\.jpg",
                  r"regular_fundus_images/regular-fundus-validation/Images/\d+/\d+_r2\.jpg"]),
])
def test_native_paths(demo_root, key, patterns):
    files = [str(p.relative_to(demo_root / key)) for p in (demo_root / key).rglob("*") if p.is_file()]
    for pattern in patterns:
        assert any(re.fullmatch(pattern, f) for f in files), f"{key}: nothing matches {pattern}"


def test_breakhis_names_agree_with_folders(demo_root):
    for path in (demo_root / "breakhis").rglob("*.png"):
        slide_dir, mag_dir = path.parent.parent.name, path.parent.name
        letter, code = demo.BREAKHIS_TYPES[path.parents[2].name]
        assert slide_dir.startswith(f"SOB_{letter}_{code}-14-")
        assert path.name == f"{slide_dir}-{mag_dir[:-1]}-{path.stem.rsplit('-', 1)[1]}.png"
        assert path.parents[4].name == ("benign" if letter == "B" else "malignant")


def test_chestxray14_csv_matches_real_header_and_lists(demo_root, shared_data):
    real = shared_data / "chestxray14" / "Data_Entry_2017_v2020.csv.gz"
    ours = demo_root / "chestxray14" / "Data_Entry_2017_v2020.csv"
    assert list(pd.read_csv(ours, nrows=0).columns) == list(pd.read_csv(real, nrows=0).columns)
    with gzip.open(real, "rt") as f:
        assert ours.read_text().splitlines()[0] == f.readline().rstrip("\n")   # unquoted, like the real one
    table = pd.read_csv(ours)
    assert table["Image Index"].str.fullmatch(r"\d{8}_\d{3}\.png").all()
    assert (table["Image Index"].str[:8].astype(int) == table["Patient ID"]).all()
    assert (table["Image Index"].str[9:12].astype(int) == table["Follow-up #"]).all()
    labels = set(table["Finding Labels"].str.split("|").explode())
    assert labels <= set(demo.CXR14_FINDINGS) | {"No Finding"}
    on_disk = {p.name for p in (demo_root / "chestxray14").glob("images_*/images/*.png")}
    assert on_disk == set(table["Image Index"])
    train_val = (demo_root / "chestxray14" / "train_val_list.txt").read_text().split()
    test = (demo_root / "chestxray14" / "test_list.txt").read_text().split()
    assert sorted(train_val + test) == sorted(table["Image Index"]) and test
    assert not {n[:8] for n in train_val} & {n[:8] for n in test}   # split by patient


def test_chestxray14_default_scale_labels(tmp_path):
    root, jobs = plan_only("chestxray14", tmp_path)
    table = pd.read_csv(root / "Data_Entry_2017_v2020.csv")
    counts = table["Finding Labels"].str.split("|").explode().value_counts()
    assert set(counts.index) == set(demo.CXR14_FINDINGS) | {"No Finding"}
    assert counts.min() >= 5
    assert (table["Finding Labels"].str.contains("|", regex=False)).any()          # multi-label rows
    assert table.groupby("Patient ID").size().max() > 1                          # follow-ups
    assert 200 <= len(table) == len(jobs) <= 300 and table["Patient ID"].nunique() == 80


def test_eyepacs_csvs(demo_root, shared_data):
    root = demo_root / "eyepacs"
    real_header = (shared_data / "eyepacs" / "trainLabels.csv").read_text().splitlines()[0]
    assert (root / "trainLabels.csv").read_text().splitlines()[0] == real_header
    train = pd.read_csv(root / "trainLabels.csv")
    test = pd.read_csv(root / "retinopathy_solution.csv")
    assert list(test.columns) == ["image", "level", "Usage"] and set(test["Usage"]) <= {"Public", "Private"}
    for table, folder in ((train, "train"), (test, "test")):
        assert table["image"].str.fullmatch(r"\d+_(left|right)").all()
        assert {p.stem for p in (root / folder).glob("*.jpeg")} == set(table["image"])
        assert (table["image"].str.split("_").str[0].value_counts() == 2).all()     # both eyes per patient
    assert not set(train["image"].str.split("_").str[0]) & set(test["image"].str.split("_").str[0])
    assert set(train["level"]) == {0, 1, 2, 3, 4}


def test_messidor_xls_columns_and_values(demo_root, shared_data):
    real = pd.read_excel(shared_data / "messidor" / "grades.xlsx")
    real_columns = [c for c in real.columns if not c.startswith("Unnamed") and c != "training/test"]
    assert real_columns == list(demo.MESSIDOR_COLUMNS)
    for base in demo.MESSIDOR_BASES:
        folder = demo_root / "messidor" / f"Base{base}"
        header, rows, sheet = read_xls(folder / f"Annotation_Base{base}.xls")
        assert header == real_columns
        assert {row["Image name"] for row in rows} == {p.name for p in folder.glob("*.tif")}
        assert all(sheet.cell_type(i, 2) == xlrd.XL_CELL_NUMBER for i in range(1, sheet.nrows))   # floats
        assert {row["Ophthalmologic department"] for row in rows} <= set(real["Ophthalmologic department"].dropna())
        assert all(row["Retinopathy grade"] in (0.0, 1.0, 2.0, 3.0) for row in rows)
        assert all(row["Image name"].endswith(f"_{demo.MESSIDOR_DEPARTMENTS[base[0]][1]}_PP.tif") for row in rows)


def test_deepdrid_csvs(demo_root, shared_data):
    real_header = (shared_data / "deepdrid" / "regular-fundus-training_excerpt.csv").read_text().splitlines()[0]
    for split in ("training", "validation"):
        folder = demo_root / "deepdrid" / "regular_fundus_images" / f"regular-fundus-{split}"
        csv_path = folder / f"regular-fundus-{split}.csv"
        assert csv_path.read_text().splitlines()[0] == real_header
        table = pd.read_csv(csv_path)
        for row in table.itertuples():
            assert row.image_path == f"\\regular-fundus-{split}\\{row.patient_id}\\{row.image_id}.jpg"
            assert (folder / "Images" / str(row.patient_id) / f"{row.image_id}.jpg").is_file()
            own, other = ("left_eye_DR_Level", "right_eye_DR_Level") if "_l" in row.image_id else \
                ("right_eye_DR_Level", "left_eye_DR_Level")
            assert not pd.isna(getattr(row, own)) and pd.isna(getattr(row, other)), row.image_id
        levels = table["left_eye_DR_Level"].fillna(table["right_eye_DR_Level"])
        assert (table.groupby("patient_id")["patient_DR_Level"].first()
                == levels.groupby(table["patient_id"]).max()).all()
        assert (table.groupby("patient_id")["image_id"].apply(sorted).map(
            lambda ids: [i.split("_")[1] for i in ids]) .map(lambda s: s == ["l1", "l2", "r1", "r2"])).all()


def test_default_scale_class_counts(tmp_path):
    _, jobs = plan_only("breakhis", tmp_path)
    slides = {Path(job[0][0]).parents[1].name for job in jobs}
    assert len(jobs) >= 180 and len(slides) >= 16
    for folder, (letter, code) in demo.BREAKHIS_TYPES.items():
        assert sum(s.startswith(f"SOB_{letter}_{code}-") for s in slides) >= 2
    assert {Path(job[0][0]).parent.name for job in jobs} == {"40X", "100X", "200X", "400X"}
    root, _ = plan_only("eyepacs", tmp_path)
    assert pd.read_csv(root / "trainLabels.csv")["level"].value_counts().min() >= 15
    assert set(pd.read_csv(root / "retinopathy_solution.csv")["level"]) == {0, 1, 2, 3, 4}
    root, _ = plan_only("messidor", tmp_path)
    grades = [row["Retinopathy grade"] for xls in root.rglob("*.xls") for row in read_xls(xls)[1]]
    assert len(grades) == 120 and min(np.bincount(np.array(grades, int), minlength=4)) >= 15
    root, jobs = plan_only("deepdrid", tmp_path)
    train = pd.read_csv(root / "regular_fundus_images/regular-fundus-training/regular-fundus-training.csv")
    assert train["patient_id"].nunique() == 30 and len(train) == 120
    assert set(train["left_eye_DR_Level"].fillna(train["right_eye_DR_Level"]).astype(int)) == {0, 1, 2, 3, 4}


# ----------------------------------------------------------------------------------------------
# Image formats

@pytest.mark.parametrize("key,glob,size,mode,fmt", [
    ("chestxray14", "images_*/images/*.png", demo.SIZE_CXR14, "L", "PNG"),
    ("covid19_radiography", "*/*/images/*.png", demo.SIZE_COVID, "L", "PNG"),
    ("covid19_radiography", "*/*/masks/*.png", demo.SIZE_COVID_MASK, "L", "PNG"),
    ("breakhis", "**/*.png", demo.SIZE_BREAKHIS, "RGB", "PNG"),
    ("kather2016", "*/*/*.tif", demo.SIZE_KATHER, "RGB", "TIFF"),
    ("eyepacs", "*/*.jpeg", demo.SIZE_EYEPACS, "RGB", "JPEG"),
    ("messidor", "*/*.tif", demo.SIZE_MESSIDOR, "RGB", "TIFF"),
    ("deepdrid", "**/*.jpg", demo.SIZE_DEEPDRID, "RGB", "JPEG"),
])
def test_image_sizes_and_modes(demo_root, key, glob, size, mode, fmt):
    files = sorted((demo_root / key).glob(glob))
    assert files
    for path in files[:20]:
        with Image.open(path) as image:
            assert (image.size, image.mode, image.format) == (size, mode, fmt), path


def test_shenzhen_sizes_vary(demo_root):
    sizes = set()
    for path in (demo_root / "shenzhen").rglob("*.png"):
        with Image.open(path) as image:
            assert image.mode == "L" and all(256 <= s <= 300 for s in image.size)
            sizes.add(image.size)
    assert len(sizes) > 1


def test_eyepacs_circle_clipped_top_and_bottom(demo_root):
    image = np.asarray(Image.open(next((demo_root / "eyepacs" / "train").glob("*.jpeg"))))
    assert image[0, image.shape[1] // 2].max() > 40 and image[-1, image.shape[1] // 2].max() > 40
    assert image[image.shape[0] // 2, :5].max() < 30 and image[image.shape[0] // 2, -5:].max() < 30


# ----------------------------------------------------------------------------------------------
# Determinism, atomic writing, overwrite

@pytest.mark.slow  # draws the demo again in 2 worker processes
def test_same_seed_same_bytes_whatever_workers(demo_root, tmp_path):
    generate(tmp_path, "--workers", "2")
    assert tree_hashes(tmp_path) == tree_hashes(demo_root)


def test_other_seed_differs(demo_root, tmp_path):
    generate(tmp_path, "--seed", "1", "--datasets", "messidor", "shenzhen", "--workers", "0")
    ours, other = tree_hashes(demo_root / "messidor"), tree_hashes(tmp_path / "messidor")
    assert ours != other
    assert tree_hashes(demo_root / "shenzhen") != tree_hashes(tmp_path / "shenzhen")


def test_subset_refuses_overwrite_then_replaces(tmp_path, capsys):
    generate(tmp_path, "--datasets", "kather2016", "--workers", "0")
    assert "kather2016: " in capsys.readouterr().out
    before = tree_hashes(tmp_path / "kather2016")
    with pytest.raises(SystemExit, match="not empty"):
        generate(tmp_path, "--datasets", "kather2016", "--workers", "0")
    (tmp_path / "kather2016" / "stray.txt").write_text("old")
    generate(tmp_path, "--datasets", "kather2016", "--workers", "0", "--overwrite")
    assert tree_hashes(tmp_path / "kather2016") == before   # stray file gone, same content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kather2016"]


def test_killed_run_leaves_no_complete_looking_folder(tmp_path, monkeypatch):
    calls = []

    def failing_job(job):
        calls.append(job)
        if len(calls) == 5:
            raise KeyboardInterrupt
        real_run_job(job)

    real_run_job = demo.run_job
    monkeypatch.setattr(demo, "run_job", failing_job)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path, "--datasets", "shenzhen", "--workers", "0")
    assert not (tmp_path / "shenzhen").exists() and (tmp_path / "shenzhen.tmp").is_dir()
    monkeypatch.setattr(demo, "run_job", real_run_job)
    generate(tmp_path, "--datasets", "shenzhen", "--workers", "0")   # the stale .tmp is cleared
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shenzhen"]


# ----------------------------------------------------------------------------------------------
# Class-dependent content

def dark_red_fraction(path):
    rgb = np.asarray(Image.open(path).convert("RGB").resize((96, 64)), np.float32) / 255
    r, g = rgb[..., 0], rgb[..., 1]
    return float(((r > 0.12) & (r < 0.5) & (g < 0.12)).mean())


def test_fundus_lesions_grow_with_grade(demo_root):
    table = pd.read_csv(demo_root / "eyepacs" / "trainLabels.csv")
    red = table["image"].map(lambda n: dark_red_fraction(demo_root / "eyepacs" / "train" / f"{n}.jpeg"))
    assert red[table["level"] >= 3].mean() > 1.5 * red[table["level"] == 0].mean()


def nuclei_fraction(path):
    rgb = np.asarray(Image.open(path).convert("RGB"), np.float32)
    return float(((rgb.mean(-1) < 120) & (rgb[..., 2] > rgb[..., 1])).mean())   # dark purple pixels


def test_histology_classes_differ(demo_root):
    files = list((demo_root / "breakhis").rglob("*.png"))
    benign = np.mean([nuclei_fraction(p) for p in files if "/benign/" in str(p)])
    malignant = np.mean([nuclei_fraction(p) for p in files if "/malignant/" in str(p)])
    assert malignant > 2 * benign
    kather = demo_root / "kather2016" / "Kather_texture_2016_image_tiles_5000"
    lympho = np.mean([nuclei_fraction(p) for p in (kather / "04_LYMPHO").glob("*.tif")])
    adipose = np.mean([nuclei_fraction(p) for p in (kather / "07_ADIPOSE").glob("*.tif")])
    empty = np.mean([np.asarray(Image.open(p)).mean() for p in (kather / "08_EMPTY").glob("*.tif")])
    assert lympho > 0.2 > adipose and empty > 225


def test_chest_findings_visible(demo_root):
    def upper_lung_brightness(path):   # TB: upper-zone opacities
        image = np.asarray(Image.open(path).convert("L").resize((64, 64)), np.float32)
        return image[14:28, 8:56].mean()

    files = sorted((demo_root / "shenzhen").rglob("*.png"))
    tb = np.mean([upper_lung_brightness(p) for p in files if p.stem.endswith("_1")])
    normal = np.mean([upper_lung_brightness(p) for p in files if p.stem.endswith("_0")])
    assert tb > normal + 3
    rng = np.random.default_rng(0)
    plain = demo.render_cxr(rng, 128, 128)[0].astype(float)
    effusion = demo.render_cxr(np.random.default_rng(0), 128, 128, findings=("Effusion",))[0].astype(float)
    assert np.abs(plain - effusion).mean() > 2


def test_unknown_finding_and_tissue_fail_loudly():
    with pytest.raises(ValueError, match="unknown chest finding"):
        demo.render_cxr(np.random.default_rng(0), 32, 32, findings=("Flu",))
    with pytest.raises(ValueError, match="unknown histology tissue"):
        demo.render_histology(np.random.default_rng(0), 32, 32, tissue="BONE")


def test_runs_as_a_script_from_tools(tmp_path):
    """The workflow runs it as `python tools/make_demo_data.py`: the same files as in this process."""
    done = run_script("tools/make_demo_data.py", "--out", tmp_path / "a", "--datasets", "shenzhen", "--scale",
                      str(SCALE), "--workers", "0", cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "shenzhen: " in done.stdout
    generate(tmp_path / "b", "--datasets", "shenzhen", "--workers", "0")
    assert tree_hashes(tmp_path / "a") == tree_hashes(tmp_path / "b")


def test_covid_borrows_two_chestxray14_radiographs_and_holds_one_twin(demo_root):
    """Like the real database: a COVID and a Normal image are ChestX-ray14 radiographs resized to 299 px,
    and one COVID picture is there twice under two names (what check_overlap.py and prepare_data.py find)."""
    base = demo_root / "covid19_radiography" / "COVID-19_Radiography_Dataset"
    covid = sorted((base / "COVID" / "images").glob("*.png"), key=lambda p: int(p.stem.split("-")[1]))
    normal = sorted((base / "Normal" / "images").glob("*.png"), key=lambda p: int(p.stem.split("-")[1]))
    assert len(covid) == len(normal) + 1
    twins = [(a, b) for i, a in enumerate(covid) for b in covid[i + 1:] if a.read_bytes() == b.read_bytes()]
    assert [(a.name, b.name) for a, b in twins] == [(f"COVID-{len(normal) - 2}.png", f"COVID-{len(normal) + 1}.png")]
    cxr14 = {p: np.asarray(Image.open(p).resize(demo.SIZE_COVID), dtype=float)
             for p in (demo_root / "chestxray14").glob("images_*/images/*.png")}
    for borrowed in (covid[len(normal) - 1], normal[-1]):
        pixels = np.asarray(Image.open(borrowed), dtype=float)
        closest = min(np.abs(pixels - other).mean() for other in cxr14.values())
        assert closest < 3, borrowed  # the same radiograph, resized
    drawn = np.asarray(Image.open(normal[0]), dtype=float)
    assert min(np.abs(drawn - other).mean() for other in cxr14.values()) > 10
