"""check_overlap.py: the same picture in a source and a target, and twins in two splits of a target,
written whole to overlap.csv, summary.csv and overlap.json; bad input gets one line."""
import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from helpers import ROOT, prepare, run_main, run_script, script_error, wait_for
from test_overlap import demo_pictures


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A source data set of 8 radiographs and a target table of 8 others plus a resized copy of source
    picture 2 (in its test split) and a JPEG twin of its own picture 0 put in another split:
    (folder, source manifest, target manifest, {name: image path})."""
    root = tmp_path_factory.mktemp("overlap")
    source = demo_pictures(root / "source_pictures", "cxr", 8)
    for i, path in enumerate(source):  # a class folder per label: <root>/<class>/<image>
        (root / "source" / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        path.rename(root / "source" / "ab"[i % 2] / path.name)
    source = sorted((root / "source").glob("*/*.png"))
    target = [p for p in demo_pictures(root / "target", "cxr", 16) if int(p.stem.split("_")[1]) >= 8]
    copy = root / "target" / "borrowed.png"
    Image.open(source[2]).resize((120, 120)).save(copy)
    twin = root / "target" / "twin.jpg"
    Image.open(target[0]).save(twin, quality=70)
    images = target + [copy, twin]
    splits = ["train"] * 5 + ["val"] * 3 + ["test", "test"]
    table = pd.DataFrame({"path": [str(p) for p in images], "grade": ["x", "y"] * 5, "split": splits})
    table.to_csv(root / "target.csv", index=False)
    prepare("--dataset", "folder", "--root", str(root / "source"), "--domain", "cxr", "--name", "src",
            "--out", str(root / "m"), "--val-frac", "0.25", "--test-frac", "0")
    prepare("--dataset", "csv", "--root", str(root / "target.csv"), "--image-col", "path", "--label-col", "grade",
            "--split-col", "split", "--domain", "cxr", "--name", "tgt", "--out", str(root / "m"), "--no-find-twins")
    return root, root / "m" / "src.csv", root / "m" / "tgt.csv", {"copy": str(copy), "twin": str(twin),
                                                                   "twin_of": str(target[0]), "source": str(source[2])}


def check(*argv):
    return run_script("check_overlap.py", "--no-progress", *map(str, argv))


def check_here(*argv) -> None:
    """check_overlap.py in this process (a refusal fails the test)."""
    run_main("check_overlap.py", "--no-progress", *argv)


def refusal(*argv) -> str:
    """The one line check_overlap.py refuses `argv` with (run in this process)."""
    line = script_error("check_overlap.py", "--no-progress", *argv)
    assert "\n" not in line, line
    return line


def test_finds_the_borrowed_picture_and_the_twin_in_two_splits(study):
    root, source, target, names = study
    result = check("--sources", source, "--targets", target, "--out", root / "ov")
    assert result.returncode == 0, result.stderr
    found = pd.read_csv(root / "ov" / "overlap.csv")
    borrowed = found[found["source"] == "src"]
    assert borrowed[["target", "target_image", "split", "source_image"]].values.tolist() == [
        ["tgt", names["copy"], "test", names["source"]]]
    twins = found[found["source"] == "tgt"]
    assert {tuple(sorted([r.target_image, r.source_image])) for r in twins.itertuples()} == {
        tuple(sorted([names["twin"], names["twin_of"]]))}
    assert sorted(twins["split"].tolist() + twins["source_split"].tolist()) == ["test", "train"]
    summary = pd.read_csv(root / "ov" / "summary.csv").set_index("source")
    assert summary.loc["src", ["found", "found_test", "source_matched", "target_images"]].tolist() == [1, 1, 1, 10]
    assert summary.loc["tgt", "found"] == 2
    record = json.loads((root / "ov" / "overlap.json").read_text())
    assert record["pairs"] == 2 and set(record["targets"]) == {"tgt"} and set(record["sources"]) == {"src"}
    assert "tgt in src: 1 of its 10 images (train 0, val 0, test 1)" in result.stdout


def test_a_second_run_leaves_an_unchanged_overlap_csv_as_it_was(study):
    root, source, target, _ = study
    check_here("--sources", source, "--targets", target, "--out", root / "again")
    before = (root / "again" / "overlap.csv").stat().st_mtime_ns
    check_here("--sources", source, "--targets", target, "--out", root / "again")
    assert (root / "again" / "overlap.csv").stat().st_mtime_ns == before


def test_bad_input_gets_one_line(study, tmp_path):
    root, source, target, _ = study
    (tmp_path / "no.csv").write_text("a,b\n1,2\n")
    assert "no.json" in refusal("--sources", source, "--targets", tmp_path / "no.csv", "--out", tmp_path / "ov")
    assert "given as both a target and a source" in refusal("--sources", target, "--targets", target, "--out",
                                                            tmp_path / "ov")
    # an unreadable image is named; --skip-bad leaves it unchecked and lists it
    broken = pd.read_csv(target)["image"].iloc[0]
    data = open(broken, "rb").read()
    try:
        open(broken, "wb").write(data[:40])
        for stale in (target.parent / "cache").glob("tgt_thumbs_*.npz"):
            stale.unlink()
        line = refusal("--sources", source, "--targets", target, "--out", tmp_path / "ov")
        assert broken in line and "--skip-bad" in line
        assert not (tmp_path / "ov").exists()
        check_here("--sources", source, "--targets", target, "--out", tmp_path / "ov", "--skip-bad")
        assert broken in json.loads((tmp_path / "ov" / "overlap.json").read_text())["unreadable"]["tgt"]
    finally:
        open(broken, "wb").write(data)


@pytest.mark.slow
def test_a_killed_run_leaves_the_previous_folder_whole(study):
    root, source, target, _ = study
    out = root / "killed"
    assert check("--sources", source, "--targets", target, "--out", out).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for stale in (source.parent / "cache").glob("*_thumbs_*.npz"):  # thumbnails made again: a longer run to kill
        stale.unlink()
    lock = root / ".killed.lock"  # written as the run starts its work
    process = subprocess.Popen([sys.executable, "check_overlap.py", "--sources", str(source), "--targets", str(target),
                                "--out", str(out), "--no-progress", "--workers", "1"], cwd=ROOT)
    assert wait_for(lambda: f"pid {process.pid} " in lock.read_text(), every=0.01)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
