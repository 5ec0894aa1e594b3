"""prepare_data.py end to end on generated native trees and on the real sample files (the shared_data
fixture): files, columns, counts, official splits, atomic writes, errors."""
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from helpers import (
    BREAKHIS_EXPECTED,
    breakhis_tree,
    colour_folder,
    eyepacs_labels_tree,
    graded_table,
    link,
    one_line,
    picture,
    run_script,
)
from PIL import Image

import prepare_data
from kit import manifests, readers


def shenzhen_tree(root: Path, n: int = 40) -> Path:
    for i in range(1, n + 1):
        path = root / "ChinaSet_AllFiles" / "CXR_png" / f"CHNCXR_{i:04d}_{i % 2}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), 40 * (i % 2)).save(path)
    return root


def run(*argv: str) -> tuple[Path, Path]:
    args = prepare_data.get_args_parser().parse_args(list(argv))
    prepare_data.main(args)
    out = Path(args.out)
    key = args.name or args.dataset
    return out / f"{key}.csv", out / f"{key}.json"


def test_end_to_end_shenzhen(tmp_path, capsys):
    root = shenzhen_tree(tmp_path / "shenzhen")
    out = tmp_path / "manifests"
    csv_path, json_path = run("--dataset", "shenzhen", "--root", str(root), "--out", str(out),
                              "--val-frac", "0.2", "--test-frac", "0.2", "--seed", "3")
    printed = capsys.readouterr().out
    assert "tuberculosis" in printed and "(patients)" in printed
    # no .tmp left; cache/ holds the thumbnails of the twin check, kept for check_overlap.py
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith('.')) == ["cache", "shenzhen.csv",
                                                                                "shenzhen.json"]
    assert [p.name.split("_thumbs_")[0] for p in (out / "cache").iterdir()] == ["shenzhen"]

    df = pd.read_csv(csv_path)
    assert list(df.columns) == ["image", "label", "patient", "split", "label_name"]
    assert len(df) == 40 and all(Path(p).is_absolute() and Path(p).is_file() for p in df["image"])
    meta = json.loads(json_path.read_text())
    assert {"key", "domain", "task", "classes", "root", "seed", "val_frac", "test_frac", "counts",
            "headline_metric", "class_weights"} <= set(meta)
    assert (meta["key"], meta["domain"], meta["task"], meta["classes"]) == \
        ("shenzhen", "cxr", "multiclass", ["normal", "tuberculosis"])
    assert (meta["seed"], meta["val_frac"], meta["test_frac"], meta["root"]) == (3, 0.2, 0.2, str(root))
    assert (meta["headline_metric"], meta["class_weights"]) == ("accuracy", "none")
    for split in ("train", "val", "test"):
        part = df[df["split"] == split]
        assert meta["counts"][split] == {"normal": int((part["label"] == 0).sum()),
                                         "tuberculosis": int((part["label"] == 1).sum())}
        assert min(meta["counts"][split].values()) >= 1

    loaded, loaded_meta = manifests.load_manifest(csv_path)  # the training scripts' view
    assert loaded["split"].tolist() == df["split"].tolist() and loaded_meta == meta
    # same seed, same split
    again, _ = run("--dataset", "shenzhen", "--root", str(root), "--out", str(tmp_path / "again"),
                   "--val-frac", "0.2", "--test-frac", "0.2", "--seed", "3")
    assert pd.read_csv(again)["split"].tolist() == df["split"].tolist()


def test_folder_dataset_needs_domain_and_uses_name(tmp_path):
    root = tmp_path / "my_set"
    for cls in ("a", "b"):
        for i in range(10):
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4)).save(root / cls / f"{i}.png")
    with pytest.raises(SystemExit, match="needs --domain"):
        run("--dataset", "folder", "--root", str(root), "--out", str(tmp_path / "m"))
    csv_path, json_path = run("--dataset", "folder", "--root", str(root), "--out", str(tmp_path / "m"),
                              "--domain", "hwsi", "--name", "mine")
    meta = json.loads(json_path.read_text())
    assert (meta["key"], meta["domain"], meta["classes"]) == ("mine", "hwsi", ["a", "b"])
    assert pd.read_csv(csv_path)["label_name"].tolist() == ["a"] * 10 + ["b"] * 10


def eyepacs_tree(root: Path) -> Path:
    (root / "train").mkdir(parents=True)
    for name in (f"{p}_{eye}" for p in range(1, 7) for eye in ("left", "right")):
        Image.new("RGB", (4, 4)).save(root / "train" / f"{name}.jpeg")
    (root / "trainLabels.csv").write_text("image,level\n1_left,0\n1_right,1\n2_left,2\n2_right,0\n"
                                          "3_left,4\n3_right,3\n" + MORE_EYES)
    return root


MORE_EYES = "4_left,0\n4_right,1\n5_left,2\n5_right,0\n6_left,1\n6_right,0\n"  # enough for a split after skipping


def make_missing(path: Path) -> None:
    path.unlink()


def make_empty(path: Path) -> None:
    path.write_bytes(b"")


def make_not_an_image(path: Path) -> None:
    path.write_text("<html>Kaggle: please log in</html>")


@pytest.mark.parametrize("spoil, reason", [(make_missing, "not found"), (make_empty, "zero-byte file"),
                                           (make_not_an_image, r"not an image \(header")])
def test_bad_image_is_one_error_naming_file_and_row(tmp_path, spoil, reason):
    root = eyepacs_tree(tmp_path / "eyepacs")
    spoil(root / "train" / "2_right.jpeg")
    out = tmp_path / "manifests"
    message = rf"^error: {root}/trainLabels\.csv: row 5: {root}/train/2_right\.jpeg: {reason}.*\(1 of 12 rows bad"
    with pytest.raises(SystemExit, match=message):
        run("--dataset", "eyepacs", "--root", str(root), "--out", str(out))
    assert not out.exists() or not any(out.iterdir())


def test_skip_bad_counts_lists_and_leaves_out(tmp_path, capsys):
    root = eyepacs_tree(tmp_path / "eyepacs")
    make_missing(root / "train" / "1_right.jpeg")
    make_empty(root / "train" / "2_left.jpeg")
    make_not_an_image(root / "train" / "3_right.jpeg")
    out = tmp_path / "manifests"
    csv_path, json_path = run("--dataset", "eyepacs", "--root", str(root), "--out", str(out), "--skip-bad",
                              "--protocol", "held-out-test", "--val-frac", "0.4", "--test-frac", "0")
    assert "skipped 3 bad row(s)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith('.')) == ["cache", "eyepacs.csv", "eyepacs.json",
                                                                                "eyepacs_skipped.csv"]
    skipped = pd.read_csv(out / "eyepacs_skipped.csv")
    assert list(skipped.columns) == ["image", "origin", "reason"]
    assert [Path(p).name for p in skipped["image"]] == ["1_right.jpeg", "2_left.jpeg", "3_right.jpeg"]
    assert skipped["origin"].tolist() == [f"{root}/trainLabels.csv: row {r}" for r in (3, 4, 7)]
    assert skipped["reason"].str[:12].tolist() == ["not found", "zero-byte fi", "not an image"]
    df = pd.read_csv(csv_path)
    kept = ["1_left.jpeg", "2_right.jpeg", "3_left.jpeg"] + [f"{p}_{eye}.jpeg" for p in (4, 5, 6) for eye in ("left", "right")]
    assert [Path(p).name for p in df["image"]] == kept
    assert "origin" not in df.columns
    meta = json.loads(json_path.read_text())
    assert (meta["n_skipped"], meta["skip_bad"], meta["n_images"]) == (3, True, 9)
    # repaired: the next run lists nothing, and the old list goes
    for name in ("1_right", "2_left", "3_right"):
        Image.new("RGB", (4, 4)).save(root / "train" / f"{name}.jpeg")
    run("--dataset", "eyepacs", "--root", str(root), "--out", str(out), "--skip-bad", "--protocol", "held-out-test",
        "--val-frac", "0.4", "--test-frac", "0")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith('.')) == ["cache", "eyepacs.csv",
                                                                                "eyepacs.json"]
    # a data set labelled by file names: the file itself is named, no row
    shenzhen = shenzhen_tree(tmp_path / "shenzhen", n=12)
    bad_png = shenzhen / "ChinaSet_AllFiles" / "CXR_png" / "CHNCXR_0003_1.png"
    make_empty(bad_png)
    with pytest.raises(SystemExit, match=rf"^error: {bad_png}: zero-byte file \(1 of 12"):
        run("--dataset", "shenzhen", "--root", str(shenzhen), "--out", str(out))
    # --skip-bad never writes an empty manifest
    for png in bad_png.parent.iterdir():
        make_empty(png)
    with pytest.raises(SystemExit, match=r"zero-byte file \(12 of 12 rows bad"):
        run("--dataset", "shenzhen", "--root", str(shenzhen), "--out", str(out), "--skip-bad")
    assert not (out / "shenzhen.csv").exists()


def test_metadata_only_without_images_says_so(shared_data, tmp_path):
    # the real sample files hold 2 of the 112,120 images: the first missing one is named
    with pytest.raises(SystemExit, match=r"v2020\.csv\.gz: row 3: .*/images/00000001_001\.png: not found "
                                         r"\(112118 of 112120 rows bad;"):
        run("--dataset", "chestxray14", "--root", str(shared_data / "chestxray14"), "--out", str(tmp_path / "m"))
    root = tmp_path / "chestxray14"
    root.mkdir()
    (root / "Data_Entry_2017_v2020.csv.gz").symlink_to(shared_data / "chestxray14" / "Data_Entry_2017_v2020.csv.gz")
    with pytest.raises(SystemExit, match=r"row 2: .*00000001_000\.png: not found \(112120 of 112120 rows bad "
                                         r"\(metadata only\? use --no-check-files\)"):
        run("--dataset", "chestxray14", "--root", str(root), "--out", str(tmp_path / "m"))


def test_max_per_class_on_the_real_eyepacs_labels(shared_data, tmp_path, capsys):
    argv = ["--dataset", "eyepacs", "--root", str(shared_data / "eyepacs"), "--no-check-files",
            "--max-per-class", "60", "--seed", "2"]
    csv_path, json_path = run(*argv, "--out", str(tmp_path / "a"))
    printed = capsys.readouterr().out
    assert "--max-per-class 60: kept" in printed and "grade_4" in printed
    df = pd.read_csv(csv_path)
    counts = df["label"].value_counts().sort_index()
    assert counts.index.tolist() == [0, 1, 2, 3, 4] and counts.max() <= 60 and counts.min() >= 55
    full = pd.read_csv(shared_data / "eyepacs" / "trainLabels.csv")
    eyes = full["image"].str.split("_").str[0].value_counts()
    kept = df["patient"].astype(str).value_counts()
    assert (kept == eyes[kept.index]).all()  # whole patients: both eyes or neither
    assert df.groupby("patient")["split"].nunique().max() == 1
    assert json.loads(json_path.read_text())["max_per_class"] == 60
    again, _ = run(*argv, "--out", str(tmp_path / "b"))
    assert pd.read_csv(again).equals(df)
    with pytest.raises(SystemExit):  # refused by the parser, before anything is read
        run(*argv[:-4], "--max-per-class", "0", "--out", str(tmp_path / "c"))
    assert "argument --max-per-class: must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_count_table_shows_empty_classes(shared_data, tmp_path, capsys):
    base = tmp_path / "covid19_radiography" / "COVID-19_Radiography_Dataset"
    for cls in ("COVID", "Normal"):
        for src in (shared_data / "covid19_radiography" / cls).glob("*.png"):
            (base / cls).mkdir(parents=True, exist_ok=True)
            (base / cls / src.name).symlink_to(src)
    _, json_path = run("--dataset", "covid19_radiography", "--root", str(tmp_path / "covid19_radiography"),
                       "--out", str(tmp_path / "m"))
    table = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines() if line.startswith(("COVID", "Lung", "Normal", "Viral"))}
    assert rows["Lung_Opacity"] == ["0", "0", "0", "0"] and rows["Viral"] == ["Pneumonia", "0", "0", "0", "0"]
    assert rows["COVID"][-1] == "25" and rows["Normal"][-1] == "25"
    meta = json.loads(json_path.read_text())
    assert meta["classes"] == list(readers.COVID19_CLASSES)
    assert sum(meta["counts"][s]["Lung_Opacity"] for s in ("train", "val", "test")) == 0


def test_failed_run_keeps_the_previous_manifest(tmp_path):
    root = shenzhen_tree(tmp_path / "shenzhen", n=12)
    out = tmp_path / "manifests"
    csv_path, json_path = run("--dataset", "shenzhen", "--root", str(root), "--out", str(out))
    before = csv_path.read_bytes(), json_path.read_bytes()
    for png in (root / "ChinaSet_AllFiles" / "CXR_png").iterdir():
        png.unlink()
    with pytest.raises(SystemExit, match=r"shenzhen: no images found"):
        run("--dataset", "shenzhen", "--root", str(root), "--out", str(out))
    assert (csv_path.read_bytes(), json_path.read_bytes()) == before
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith('.')) == ["cache", "shenzhen.csv",
                                                                                "shenzhen.json"]


@pytest.mark.parametrize("argv, message", [
    (["--val-frac", "0.6", "--test-frac", "0.4"], "must be < 1"),
    (["--test-frac", "1.0"], r"test_frac = 1\.0: must be in \[0, 1\)"),
    (["--domain", "efi"], "shenzhen is a cxr data set"),
])
def test_argument_errors(tmp_path, argv, message):
    root = shenzhen_tree(tmp_path / "shenzhen", n=4)
    with pytest.raises(SystemExit, match=message):
        run("--dataset", "shenzhen", "--root", str(root), "--out", str(tmp_path / "m"), *argv)


def test_missing_root(tmp_path):
    with pytest.raises(SystemExit, match=r"nowhere: --root folder not found"):
        run("--dataset", "breakhis", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m"))


def test_a_data_set_or_the_caches_of_manifests_never_both(tmp_path):
    """--dataset/--root/--out prepare a data set; --manifest with --cache-size builds the caches of manifests
    written earlier and refuses, in one line naming them, the flags of the other."""
    def refused(*argv):
        with pytest.raises(SystemExit) as info:
            prepare_data.main(prepare_data.get_args_parser().parse_args(list(argv)))
        return str(info.value)

    assert refused("--dataset", "shenzhen", "--root", str(tmp_path)) == (
        "error: the following arguments are required: --out (or --manifest CSV [CSV ...] --cache-size N, to build "
        "the preprocessing caches of existing manifests)")
    manifest = str(tmp_path / "m" / "shenzhen.csv")
    assert refused("--manifest", manifest, "--cache-size", "224", "--dataset", "shenzhen", "--seed", "3") == (
        "error: --dataset, --seed: not an option of --manifest (which builds the preprocessing caches of existing "
        "manifests, nothing else)")
    assert refused("--manifest", manifest) == ("error: --manifest needs --cache-size, the training --image-size in "
                                                 "px (e.g. 224)")
    assert refused("--manifest", manifest, "--cache-size", "224") == (f"error: {manifest}: manifest not found (write "
                                                                    f"it with prepare_data.py)")
    assert not (tmp_path / "m").exists()


def test_chestxray14_metadata_only(shared_data, tmp_path):
    csv_path, json_path = run("--dataset", "chestxray14", "--root", str(shared_data / "chestxray14"),
                              "--out", str(tmp_path), "--no-check-files")
    df, meta = manifests.load_manifest(csv_path)
    assert len(df) == 112_120 and list(df.columns) == ["image", "labels", "patient", "split"]
    assert meta["task"] == "multilabel" and len(meta["classes"]) == 15 and meta["check_files"] is False
    assert sum(meta["counts"]["test"].values()) == sum(
        (df.loc[df["split"] == "test", "labels"].str.count(r"\|") + 1))


def test_skip_bad_unknown_label_values(tmp_path, capsys):
    root = eyepacs_tree(tmp_path / "eyepacs")
    (root / "trainLabels.csv").write_text("image,level\n1_left,0\n1_right,7\n2_left,2\n2_right,0\n"
                                          "3-left,4\n3_right,\n" + MORE_EYES)
    out = tmp_path / "manifests"
    with pytest.raises(SystemExit, match=rf"^error: {root}/trainLabels\.csv: row 3: .*1_right\.jpeg: level '7' is not "
                                         r"a grade 0\.\.4 \(3 of 12 rows bad"):
        run("--dataset", "eyepacs", "--root", str(root), "--out", str(out))
    assert not out.exists()
    csv_path, _ = run("--dataset", "eyepacs", "--root", str(root), "--out", str(out), "--skip-bad",
                      "--protocol", "held-out-test", "--val-frac", "0.4", "--test-frac", "0")
    assert "skipped 3 bad row(s)" in capsys.readouterr().out
    skipped = pd.read_csv(out / "eyepacs_skipped.csv")
    assert skipped["origin"].str.extract(r"row (\d+)$")[0].astype(int).tolist() == [3, 6, 7]
    assert skipped["reason"].tolist() == ["level '7' is not a grade 0..4", "image '3-left' is not <patient>_<left|right>",
                                          "level (empty) is not a grade 0..4"]
    assert pd.read_csv(csv_path)["label"].tolist() == [0, 2, 0] + [0, 1, 2, 0, 1, 0]


@pytest.mark.parametrize("dataset, write, message", [
    ("eyepacs", lambda root: (root / "trainLabels.csv").write_text("image,grade\n1_left,0\n"),
     r"trainLabels\.csv: missing column\(s\) \['level'\]; found \['image', 'grade'\]"),
    ("chestxray14", lambda root: (root / "Data_Entry_2017.csv").write_text("Image Index,Labels,Patient ID\nx.png,Mass,1\n"),
     r"Data_Entry_2017\.csv: missing column\(s\) \['Finding Labels'\]"),
    ("deepdrid", lambda root: (root / "regular-fundus-training").mkdir() or (
        root / "regular-fundus-training" / "regular-fundus-training.csv").write_text(
        "patient_id,image_id,left_eye_DR_level,right_eye_DR_Level,patient_DR_Level\n1,1_l1,0,,0\n"),
     r"regular-fundus-training\.csv: missing column\(s\) \['left_eye_DR_Level'\]"),
])
def test_renamed_column_is_one_error(tmp_path, dataset, write, message):
    root = tmp_path / dataset
    root.mkdir()
    write(root)
    with pytest.raises(SystemExit, match=f"^error: .*{message}"):
        run("--dataset", dataset, "--root", str(root), "--out", str(tmp_path / "m"), "--skip-bad")


# --------------------------------------------------------------------------- real sample files, official splits

@pytest.mark.slow  # splits the real 112,120 rows with prepare_data.py
def test_chestxray14_full_metadata_official_split(shared_data, tmp_path):
    # the real 112,120 rows with a patient-level official test list (as NIH's test_list.txt is)
    root = tmp_path / "chestxray14"
    link(shared_data / "chestxray14" / "Data_Entry_2017_v2020.csv.gz", root / "Data_Entry_2017_v2020.csv.gz")
    full = readers.read_chestxray14(root, check_files=False)
    names = full["image"].map(os.path.basename)
    is_test = full["patient"].astype(int) % 5 == 0
    (root / "test_list.txt").write_text("\n".join(names[is_test]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(names[~is_test]) + "\n")
    out = tmp_path / "manifests"
    prepare_data.main(prepare_data.get_args_parser().parse_args(
        ["--dataset", "chestxray14", "--root", str(root), "--out", str(out), "--no-check-files", "--val-frac", "0.1",
         "--protocol", "held-out-test"]))  # the official test list kept (the paper's protocol: tests/test_paper.py)
    df, meta = manifests.load_manifest(out / "chestxray14.csv")
    assert len(df) == 112_120
    assert (df["split"] == "test").tolist() == is_test.tolist()  # the official test split, exactly
    assert df.groupby("patient")["split"].nunique().max() == 1  # no patient in two splits
    val_share = (df["split"] == "val").sum() / (~is_test).sum()
    assert abs(val_share - 0.1) < 0.01
    indicator = df["labels"].str.get_dummies(sep="|")
    whole = indicator.mean()
    for split in ("train", "val", "test"):
        assert (indicator[df["split"] == split].mean() - whole).abs().max() < 0.03, split


def test_breakhis_manifest_keeps_subtype_slide_magnification(shared_data, tmp_path):
    root = breakhis_tree(shared_data, tmp_path / "breakhis")
    out = tmp_path / "manifests"
    prepare_data.main(prepare_data.get_args_parser().parse_args(
        ["--dataset", "breakhis", "--root", str(root), "--out", str(out), "--protocol", "held-out-test",
         "--val-frac", "0.2", "--test-frac", "0.2"]))
    df, _ = manifests.load_manifest(out / "breakhis.csv")
    assert list(df.columns) == ["image", "label", "patient", "split", "label_name", "subtype", "slide", "magnification"]
    got = {Path(r.image).name: (r.label_name, r.subtype, r.slide, r.magnification) for r in df.itertuples()}
    assert got == BREAKHIS_EXPECTED
    assert df.groupby("slide")["split"].nunique().max() == 1  # the 4 images of slide 14-25197 stay together


def test_prepare_data_prints_dropped_repeats_and_lists_contradictions(tmp_path):
    eyepacs_labels_tree(tmp_path / "ep", ["1_left,0", "1_right,0", "2_left,1", "2_right,1", "3_left,2", "3_right,2",
                               "4_left,0", "4_right,0", "5_left,1", "5_right,0", "6_left,0", "6_right,3",
                               "7_left,4", "7_right,4", "8_left,0", "8_right,0", "2_left,1", "5_right,2"])
    result = run_script(*["prepare_data.py", "--dataset", "eyepacs", "--root", tmp_path / "ep", "--out", tmp_path / "m",
                  "--skip-bad", "--val-frac", "0.2", "--test-frac", "0.2", "--protocol", "held-out-test"])
    assert result.returncode == 0, result.stderr
    assert "dropped 1 row(s) that repeat an image" in result.stdout
    skipped = pd.read_csv(tmp_path / "m" / "eyepacs_skipped.csv")
    assert sorted(Path(p).stem for p in skipped["image"]) == ["5_right", "5_right"]


@pytest.mark.parametrize("dataset,write", [
    ("eyepacs", lambda r: ((r / "train").mkdir(parents=True), (r / "trainLabels.csv").write_text("image,level\n"))),
    ("chestxray14", lambda r: ((r / "images").mkdir(parents=True), (r / "Data_Entry_2017_v2020.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"))),
])
def test_a_header_only_label_table_is_an_error(tmp_path, dataset, write):
    write(tmp_path / dataset)
    result = run_script(*["prepare_data.py", "--dataset", dataset, "--root", tmp_path / dataset, "--out", tmp_path / "m"])
    line = one_line(result)
    assert str(tmp_path / dataset) in line
    assert not (tmp_path / "m" / f"{dataset}.csv").exists()


def test_an_empty_split_is_an_error_at_prepare_time(tmp_path):
    data = colour_folder(tmp_path / "data", n=3)
    result = run_script(*["prepare_data.py", "--dataset", "folder", "--root", data, "--name", "tiny", "--domain", "hwsi",
                  "--out", tmp_path / "m", "--val-frac", "0"])
    line = one_line(result)
    assert "val split would hold 0 image(s)" in line and str(data) in line
    assert not (tmp_path / "m" / "tiny.csv").exists()


def test_a_csv_parse_error_is_one_line(tmp_path):
    root = tmp_path / "ep"
    (root / "train").mkdir(parents=True)
    (root / "trainLabels.csv").write_text('image,level\n1_left,0\n1_right,0,extra\n"unclosed,1\n')
    line = one_line(run_script(*["prepare_data.py", "--dataset", "eyepacs", "--root", root, "--out", tmp_path / "m"]))
    assert "trainLabels.csv" in line and "cannot read as CSV" in line


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".xlsx"])
def test_a_table_with_relative_paths_patients_a_split_and_grades_becomes_a_manifest(tmp_path, suffix):
    path, table = graded_table(tmp_path, suffix)
    result = run_script(*["prepare_data.py", "--dataset", "csv", "--root", path, "--image-col", "path", "--label-col", "grade",
                  "--patient-col", "pid", "--split-col", "set", "--domain", "other", "--task", "ordinal",
                  "--name", "mytask", "--out", tmp_path / "m"])
    assert result.returncode == 0, result.stderr
    assert "patients: column 'pid'" in result.stdout and "(patients)" in result.stdout
    df = pd.read_csv(tmp_path / "m" / "mytask.csv")
    meta = json.loads((tmp_path / "m" / "mytask.json").read_text())
    assert meta["classes"] == ["0", "1", "2"] and meta["task"] == "multiclass" and meta["ordinal"] is True
    assert meta["headline_metric"] == "qwk" and meta["class_weights"] == "balanced" and meta["domain"] == "other"
    expected = table.assign(image=[str(tmp_path / p) for p in table["path"]])
    merged = df.merge(expected, on="image", validate="one_to_one")
    assert len(merged) == 36
    assert (merged["label"] == merged["grade"]).all() and (merged["patient"] == merged["pid"]).all()
    given = merged["set"].replace({"validation": "val"})
    assert (merged.loc[given != "", "split"] == given[given != ""]).all()  # the given split is kept
    assert merged.groupby("patient")["split"].nunique().max() == 1  # patients of the rest split whole


def test_a_multilabel_table(tmp_path):
    rows = []
    for i in range(12):
        picture(tmp_path / f"x{i}.png", seed=i)
        rows.append({"image": f"x{i}.png", "effusion": int(i % 2 == 0), "mass": int(i % 3 == 0)})
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    result = run_script(*["prepare_data.py", "--dataset", "csv", "--root", tmp_path / "t.csv", "--label-cols", "effusion",
                  "mass", "--domain", "cxr", "--out", tmp_path / "m", "--val-frac", "0.25", "--test-frac", "0.25"])
    assert result.returncode == 0, result.stderr
    df = pd.read_csv(tmp_path / "m" / "t.csv", keep_default_na=False)
    meta = json.loads((tmp_path / "m" / "t.json").read_text())
    assert meta["task"] == "multilabel" and meta["classes"] == ["effusion", "mass"] and meta["headline_metric"] == "auroc"
    labels = dict(zip(df["image"].map(lambda p: Path(p).stem), df["labels"]))
    assert labels["x0"] == "effusion|mass" and labels["x1"] == "" and labels["x2"] == "effusion" and labels["x3"] == "mass"


@pytest.mark.parametrize("content,flags,words", [
    ("path,grade\nimgs/p0_0.png,0\n", ["--image-col", "image", "--label-col", "grade"],
     "missing column(s) ['image']; found ['path', 'grade']"),
    ("image,label\na.png,cat\nb.png,cat\nc.png,dog\n", ["--label-col", "label"], "'dog': 1"),
    ("image,grade\na.png,1\nb.png,x\n", ["--label-col", "grade", "--task", "ordinal"], "'x', not an integer grade"),
    ("image,label\n", ["--label-col", "label"], "no rows"),
])
def test_bad_tables_get_one_line(tmp_path, content, flags, words):
    (tmp_path / "t.csv").write_text(content)
    result = run_script(*["prepare_data.py", "--dataset", "csv", "--root", tmp_path / "t.csv", "--domain", "other",
                  "--out", tmp_path / "m", *flags])
    assert result.returncode != 0 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and words in line and str(tmp_path / "t.csv") in line, line


def test_patients_in_class_folders_are_split_whole(tmp_path):
    root = tmp_path / "data"
    for cls in ("normal", "tb"):
        for p in range(10):
            for k in range(3):
                picture(root / cls / f"pat{p}" / f"{k}.png", seed=p * 7 + k + (cls == "tb") * 100)
    result = run_script(*["prepare_data.py", "--dataset", "folder", "--root", root, "--domain", "cxr", "--name", "mine",
                  "--out", tmp_path / "m"])
    assert result.returncode == 0, result.stderr
    assert "patients: the sub-folder below the class folder" in result.stdout
    df = pd.read_csv(tmp_path / "m" / "mine.csv")
    assert set(df["patient"]) == {f"pat{p}" for p in range(10)}  # pat1 under normal and under tb: one patient
    assert df.groupby("patient")["split"].nunique().max() == 1
    # or from the file name
    flat = tmp_path / "flat"
    for cls in ("a", "b"):
        for p in range(6):
            for k in range(2):
                picture(flat / cls / f"P{p:02d}_{k}.png", seed=p * 3 + k + (cls == "b") * 50)
    result = run_script(*["prepare_data.py", "--dataset", "folder", "--root", flat, "--domain", "hwsi", "--name", "flat",
                  "--patient-regex", r"^(P\d+)_", "--out", tmp_path / "m"])
    assert result.returncode == 0, result.stderr
    df = pd.read_csv(tmp_path / "m" / "flat.csv")
    assert set(df["patient"]) == {f"P{p:02d}" for p in range(6)} and df.groupby("patient")["split"].nunique().max() == 1


def twin_folder(root, n=10):
    """<root>/<a|b>/<image>: demo radiographs, each its own patient, and a JPEG copy of a/cxr_2.png as
    a/copy.jpg: one picture under two names."""
    from test_overlap import demo_pictures

    for i, path in enumerate(demo_pictures(root.parent / "pictures", "cxr", n, size=(128, 128))):
        (root / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        path.rename(root / "ab"[i % 2] / path.name)
    Image.open(root / "a" / "cxr_2.png").save(root / "a" / "copy.jpg", quality=75)
    return root


def test_twins_are_kept_in_one_split(tmp_path, capsys):
    root = twin_folder(tmp_path / "data")
    for seed in range(4):
        csv_path, json_path = run("--dataset", "folder", "--root", str(root), "--domain", "cxr", "--name", "data",
                                  "--out", str(tmp_path / f"m{seed}"), "--seed", str(seed), "--val-frac", "0.3",
                                  "--test-frac", "0.3")
        df = pd.read_csv(csv_path).set_index("image")
        assert df.at[str(root / "a" / "cxr_2.png"), "split"] == df.at[str(root / "a" / "copy.jpg"), "split"]
        twins = json.loads(json_path.read_text())["twins"]
        assert (twins["groups"], twins["images"], twins["moved"]) == (1, 2, 0)
    assert "twins: 1 picture(s) are here twice or more under other names (2 images, e.g. copy.jpg = cxr_2.png)" \
        in capsys.readouterr().out
    csv_path, json_path = run("--dataset", "folder", "--root", str(root), "--domain", "cxr", "--name", "data",
                              "--out", str(tmp_path / "unchecked"), "--no-find-twins")
    assert json.loads(json_path.read_text())["twins"] is None


def test_twins_a_given_split_puts_apart_are_refused_or_moved(tmp_path, capsys):
    root = twin_folder(tmp_path / "data")
    images = sorted(str(p) for p in root.glob("[ab]/*.*"))
    splits = ["test" if name.endswith("copy.jpg") else "train" if i % 3 else "val" for i, name in enumerate(images)]
    pd.DataFrame({"path": images, "label": [Path(p).parent.name for p in images], "split": splits}).to_csv(
        tmp_path / "table.csv", index=False)
    argv = ["--dataset", "csv", "--root", str(tmp_path / "table.csv"), "--image-col", "path", "--label-col", "label",
            "--split-col", "split", "--domain", "cxr", "--name", "tw", "--out", str(tmp_path / "m")]
    with pytest.raises(SystemExit, match=r"copy.jpg and .*cxr_2.png are one picture .* puts them in test and "):
        run(*argv)
    assert not (tmp_path / "m" / "tw.csv").exists()
    csv_path, json_path = run(*argv, "--skip-bad")
    df = pd.read_csv(csv_path).set_index("image")
    assert df.at[str(root / "a" / "cxr_2.png"), "split"] == "test" == df.at[str(root / "a" / "copy.jpg"), "split"]
    assert json.loads(json_path.read_text())["twins"]["moved"] == 1
    assert "1 image(s) moved to their twin's given split (--skip-bad)" in capsys.readouterr().out


def labelled_table(root, labels, *, column="label", header=None):
    """A table of one random picture per label: image, <column> (one value per row)."""
    rows = [f"x{i}.png,{label}" for i, label in enumerate(labels)]
    for i in range(len(labels)):
        picture(root / f"x{i}.png", seed=i)
    (root / "t.csv").write_text(f"image,{header or column}\n" + "\n".join(rows) + "\n")
    return root / "t.csv"


def prepare_table(table, out, *flags):
    return prepare_data.prepare_manifest(prepare_data.get_args_parser().parse_args(
        ["--dataset", "csv", "--root", str(table), "--domain", "other", "--out", str(out), "--no-find-twins", *flags]))


@pytest.mark.parametrize("missing", ["NaN", "NA", "nan", "null", "N/A", "None", "<NA>"])
def test_a_missing_label_is_a_bad_row_not_a_class(tmp_path, missing):
    table = labelled_table(tmp_path, ["cat", "dog"] * 6 + [missing, missing, missing])
    with pytest.raises(ValueError, match=rf"x12.png: missing label: 'label' is '{missing}' \(3 of 15 rows bad"):
        prepare_table(table, tmp_path / "m", "--label-col", "label")
    assert not (tmp_path / "m" / "t.csv").exists()
    csv_path, json_path = prepare_table(table, tmp_path / "m", "--label-col", "label", "--skip-bad")
    assert json.loads(json_path.read_text())["classes"] == ["cat", "dog"]
    assert len(pd.read_csv(csv_path)) == 12 and len(pd.read_csv(tmp_path / "m" / "t_skipped.csv")) == 3


def test_a_missing_grade_or_0_1_value_is_named_as_missing(tmp_path):
    table = labelled_table(tmp_path, [0, 1, 2] * 4 + ["NA"], column="grade")
    with pytest.raises(ValueError, match=r"missing label: 'grade' is 'NA'"):
        prepare_table(table, tmp_path / "m", "--label-col", "grade", "--task", "ordinal")
    table = labelled_table(tmp_path / "ml", [0, 1] * 6 + ["NaN"], column="effusion")
    with pytest.raises(ValueError, match=r"missing label: 'effusion' is 'NaN'"):
        prepare_table(table, tmp_path / "m", "--label-cols", "effusion", "--task", "multilabel")


def test_a_multilabel_class_name_holding_the_separator_is_refused_at_prepare_time(tmp_path):
    table = labelled_table(tmp_path, [0, 1] * 6, header="a|b")
    with pytest.raises(ValueError, match=r"--label-cols 'a\|b': a class name cannot hold '\|'"):
        prepare_table(table, tmp_path / "m", "--label-cols", "a|b", "--task", "multilabel")


def test_a_task_with_one_class_is_refused_at_prepare_time(tmp_path):
    table = labelled_table(tmp_path, ["cat"] * 12)
    with pytest.raises(ValueError, match=r"every image has the label 'cat'; a classifier needs at least two classes"):
        prepare_table(table, tmp_path / "m", "--label-col", "label")
    # two classes, but a given split that puts one of them only into train
    table = labelled_table(tmp_path / "split", ["cat", "dog"] * 6)
    given = pd.read_csv(table).assign(set=["train", "val"] * 6)
    given.to_csv(table, index=False)
    with pytest.raises(ValueError, match=r"the train split holds one class only \('cat', \d+ image\(s\)\)"):
        prepare_table(table, tmp_path / "m", "--label-col", "label", "--split-col", "set")
    assert not (tmp_path / "m" / "t.csv").exists()


def test_a_repeat_in_two_splits_with_one_label_says_splits(tmp_path):
    table = labelled_table(tmp_path, ["cat", "dog"] * 6)
    given = pd.read_csv(table).assign(set="")
    given.loc[len(given)] = {"image": "x0.png", "label": "cat", "set": "test"}
    given.loc[0, "set"] = "train"
    given.to_csv(table, index=False)
    with pytest.raises(ValueError, match=r"listed more than once with different splits: cat \(train split\) here"):
        prepare_table(table, tmp_path / "m", "--label-col", "label", "--split-col", "set")


def test_a_far_out_grade_is_named_not_made_into_a_million_classes(tmp_path):
    table = labelled_table(tmp_path, [0, 1, 2] * 4 + [1000000], column="grade")
    with pytest.raises(ValueError, match=r"t.csv: row 14: 'grade' is 1000000, so the grades would run from 0 to 1000000 "
                                         r"\(1000001 classes; an ordinal task takes at most 100\): a typo\?$"):
        prepare_table(table, tmp_path / "m", "--label-col", "grade", "--task", "ordinal")
