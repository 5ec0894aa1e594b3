"""Scratch: issue 15 tests (your own table as a target, patients in class folders, strategies), to be distributed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def picture(path, seed, size=(40, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def run(argv, cwd=ROOT):
    return subprocess.run([PY, *map(str, argv)], cwd=cwd, capture_output=True, text=True)


def graded_table(root, suffix=".csv"):
    """12 patients x 3 images, grade = patient % 3, relative paths, a given split for 8 patients."""
    rows = []
    for p in range(12):
        for k in range(3):
            name = f"imgs/p{p}_{k}.png"
            picture(root / name, seed=p * 10 + k)
            rows.append({"path": name, "grade": p % 3, "pid": f"P{p}",
                         "set": ["train", "train", "validation", "test"][p % 4] if p < 8 else ""})
    table = pd.DataFrame(rows)
    path = root / f"labels{suffix}"
    if suffix == ".xlsx":
        table.to_excel(path, index=False)
    elif suffix == ".tsv":
        table.to_csv(path, sep="\t", index=False)
    else:
        table.to_csv(path, index=False)
    return path, table


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".xlsx"])
def test_a_table_with_relative_paths_patients_a_split_and_grades_becomes_a_manifest(tmp_path, suffix):
    path, table = graded_table(tmp_path, suffix)
    result = run(["prepare_data.py", "--dataset", "csv", "--root", path, "--image-col", "path", "--label-col", "grade",
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
    result = run(["prepare_data.py", "--dataset", "csv", "--root", tmp_path / "t.csv", "--label-cols", "effusion",
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
    result = run(["prepare_data.py", "--dataset", "csv", "--root", tmp_path / "t.csv", "--domain", "other",
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
    result = run(["prepare_data.py", "--dataset", "folder", "--root", root, "--domain", "cxr", "--name", "mine",
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
    result = run(["prepare_data.py", "--dataset", "folder", "--root", flat, "--domain", "hwsi", "--name", "flat",
                  "--patient-regex", r"^(P\d+)_", "--out", tmp_path / "m"])
    assert result.returncode == 0, result.stderr
    df = pd.read_csv(tmp_path / "m" / "flat.csv")
    assert set(df["patient"]) == {f"P{p:02d}" for p in range(6)} and df.groupby("patient")["split"].nunique().max() == 1


@pytest.mark.slow
@pytest.mark.parametrize("strategy,frozen", [("linear", "features."), ("partial", "features.denseblock1.")])
def test_a_frozen_part_keeps_every_weight_and_batchnorm_statistic(tmp_path, strategy, frozen):
    sys.path.insert(0, str(ROOT))
    from kit import models

    root = tmp_path / "data"
    for cls, colour in (("blue", (60, 60, 200)), ("red", (200, 60, 60))):
        for i in range(12):
            pixels = np.clip(np.array(colour) + np.random.default_rng(i).normal(0, 40, (40, 48, 3)), 0, 255)
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(root / cls / f"{i}.png")
    assert run(["prepare_data.py", "--dataset", "folder", "--root", root, "--domain", "hwsi", "--name", "t",
                "--out", tmp_path / "m"]).returncode == 0
    init = tmp_path / "init.pt"
    torch.manual_seed(3)
    start = models.build_model(2)
    torch.save({"model": start.state_dict(), "meta": {}}, init)
    result = run(["finetune_target.py", "--manifest", tmp_path / "m" / "t.csv", "--init", init, "--out", tmp_path / "r",
                  "--image-size", "32", "--epochs", "2", "--batch-size", "4", "--workers", "0", "--device", "cpu",
                  "--strategy", strategy])
    assert result.returncode == 0, result.stderr
    trained = models.load_checkpoint(tmp_path / "r" / "last.pt")["model"]
    before = start.state_dict()
    kept = [k for k in trained if k.startswith(frozen)]
    assert kept and all(torch.equal(trained[k], before[k]) for k in kept)  # weights and running_mean/var alike
    assert any("running_mean" in k for k in kept)
    assert not torch.equal(trained["head.fc.weight"], before["head.fc.weight"])
    if strategy == "partial":
        assert not torch.equal(trained["features.denseblock4.denselayer1.layers.conv1.weight"],
                               before["features.denseblock4.denselayer1.layers.conv1.weight"])


def write_imagenet_standin(torch_home):
    sys.path.insert(0, str(ROOT / "tests"))
    from test_study import write_imagenet_standin as write
    return write(torch_home)


@pytest.mark.slow
def test_your_own_target_and_two_strategies_in_the_study(tmp_path):
    path, _ = graded_table(tmp_path / "own")
    assert run(["prepare_data.py", "--dataset", "csv", "--root", path, "--image-col", "path", "--label-col", "grade",
                "--patient-col", "pid", "--domain", "other", "--task", "ordinal", "--name", "mytask",
                "--out", tmp_path / "own" / "manifests"]).returncode == 0
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "IMAGE_SIZE": "32", "EPOCHS_PRETRAIN": "1", "EPOCHS_FINETUNE": "2",
           "BATCH_SIZE": "16", "DEMO_SCALE": "0.3", "WORKERS": "0", "DEVICE": "cpu", "JOBS": "2",
           "TARGETS": f"shenzhen mytask={tmp_path / 'own' / 'manifests' / 'mytask.csv'}", "STRATEGIES": "full linear",
           "TORCH_HOME": str(tmp_path / "no_torch_home")}
    env.pop("DATA", None)
    result = subprocess.run(["bash", str(ROOT / "study.sh")], env=env, capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for folder in (out, out / "strategies" / "linear"):
        table = pd.read_csv(folder / "tables" / "table2.csv")
        mine = table[(table["target"] == "mytask") & table["test_last"].notna()]
        assert set(mine["arm"]) == {"RI", "All_RI"}  # domain other: no Domain arms; RI is the floor
        paired = pd.read_csv(folder / "tables" / "paired.csv")
        assert {("All_RI", "RI")} <= set(zip(paired.loc[paired["target"] == "mytask", "arm"],
                                               paired.loc[paired["target"] == "mytask", "reference"]))
        assert (folder / "figures" / "forest.png").stat().st_size > 10_000
        assert (folder / "figures" / "mytask.png").is_file()
    report = (out / "report.md").read_text()
    assert "## Fine-tuning strategies side by side" in report and "| mytask | All_RI |" in report
    assert "mytask is of domain *other*" in report
    assert "strategies/linear/report.md" in report
