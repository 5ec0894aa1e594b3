"""prepare_data.py end to end on generated native trees: files, columns, counts, atomic writes, errors."""
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

import datasets
import prepare_data


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
    assert sorted(p.name for p in out.iterdir()) == ["shenzhen.csv", "shenzhen.json"]  # no .tmp left

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

    loaded, loaded_meta = datasets.load_manifest(csv_path)  # the training scripts' view
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


def test_missing_listed_image_is_an_error_and_writes_nothing(tmp_path):
    root = tmp_path / "eyepacs"
    (root / "train").mkdir(parents=True)
    for name in ("1_left", "1_right", "2_left"):
        Image.new("RGB", (4, 4)).save(root / "train" / f"{name}.jpeg")
    (root / "trainLabels.csv").write_text("image,level\n1_left,0\n1_right,1\n2_left,2\n2_right,0\n")
    out = tmp_path / "manifests"
    message = r"trainLabels\.csv: 1 listed image\(s\) not found, first: row 5 .*2_right\.jpeg"
    with pytest.raises(SystemExit, match=message):
        run("--dataset", "eyepacs", "--root", str(root), "--out", str(out))
    assert not out.exists() or not any(out.iterdir())


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
    assert sorted(p.name for p in out.iterdir()) == ["shenzhen.csv", "shenzhen.json"]


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


def test_chestxray14_metadata_only(shared_data, tmp_path):
    csv_path, json_path = run("--dataset", "chestxray14", "--root", str(shared_data / "chestxray14"),
                              "--out", str(tmp_path), "--no-check-files")
    df, meta = datasets.load_manifest(csv_path)
    assert len(df) == 112_120 and list(df.columns) == ["image", "labels", "patient", "split"]
    assert meta["task"] == "multilabel" and len(meta["classes"]) == 15 and meta["check_files"] is False
    assert sum(meta["counts"]["test"].values()) == sum(
        (df.loc[df["split"] == "test", "labels"].str.count(r"\|") + 1))
