"""plot_results.py on a hand-written runs tree: Table 2 values, n/a arms, metric choice, figures, errors."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import plot_results

COLUMNS = ["epoch", "split", "loss", "accuracy", "balanced_accuracy", "kappa", "qwk", "auroc", "seconds", "lr"]
ALL_ARMS = ["IN", "Domain_RI", "Domain_IN", "All_RI", "All_IN"]
# Targets and the arms that ran (the IN-based arms are skipped when no ImageNet weights exist).
RUNS = {
    "shenzhen": ["IN", "Domain_RI", "Domain_IN", "All_RI", "All_IN"],
    "messidor": ["Domain_RI", "All_RI"],
    "kather2016": ["IN", "Domain_RI", "All_IN"],
}


def write_metrics(path, seed, epochs=3):
    """A metrics.csv as engine.py writes it: one train and one val row per epoch, fractions in [0, 1]."""
    rng = np.random.default_rng(seed)
    rows = []
    for epoch in range(1, epochs + 1):
        for split in ("train", "val"):
            acc, kappa = rng.uniform(0.3, 0.99), rng.uniform(-0.2, 0.95)
            rows.append([epoch, split, rng.uniform(0.05, 2.0), acc, acc - 0.05, kappa, kappa + 0.01,
                         rng.uniform(0.5, 1.0), 1.5, 1e-3])
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False)
    return pd.read_csv(path)


def make_runs(root, runs=RUNS):
    written = {}
    for i, (target, arms) in enumerate(runs.items()):
        for j, arm in enumerate(arms):
            written[target, arm] = write_metrics(root / "finetune" / target / arm / "metrics.csv", seed=10 * i + j)
    return written


def run(runs_dir, out_dir, *extra):
    args = plot_results.get_args_parser().parse_args(["--runs", str(runs_dir), "--out", str(out_dir), *extra])
    plot_results.main(args)


def last(frame, split, metric):
    rows = frame[frame["split"] == split]
    return 100 * rows.loc[rows["epoch"].idxmax(), metric]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One runs tree with eval results for shenzhen and a manifest sidecar, plotted once."""
    root = tmp_path_factory.mktemp("OUT")
    written = make_runs(root)
    for arm, (acc, n) in {"IN": (0.8125, 160), "All_IN": (0.9, 160)}.items():
        path = root / "eval" / "shenzhen" / arm / "metrics.csv"
        path.parent.mkdir(parents=True)
        pd.DataFrame([["test", f"finetune/shenzhen/{arm}/best.pt", 0.4, acc, acc, 0.5, 0.5, 0.9, n]],
                     columns=["split", "checkpoint", "loss", "accuracy", "balanced_accuracy", "kappa", "qwk",
                              "auroc", "n"]).to_csv(path, index=False)
    (root / "manifests").mkdir()
    (root / "manifests" / "shenzhen.json").write_text(json.dumps(
        {"key": "shenzhen", "counts": {"train": {"normal": 200, "tuberculosis": 250},
                                       "val": {"normal": 30, "tuberculosis": 36},
                                       "test": {"normal": 70, "tuberculosis": 90}}}))
    run(root, root)
    return root, written


def test_table2_csv_values(study):
    root, written = study
    table = pd.read_csv(root / "tables" / "table2.csv")
    assert list(table.columns) == ["target", "arm", "metric", "train", "val", "epoch"]
    # Every target found lists all five arms, in paper order, targets in paper order (D1, D3, D4).
    assert list(table["target"]) == [t for t in ("shenzhen", "kather2016", "messidor") for _ in ALL_ARMS]
    assert list(table["arm"]) == ALL_ARMS * 3
    for row in table.itertuples():
        metric = "kappa" if row.target == "messidor" else "accuracy"
        assert row.metric == metric
        if row.arm in RUNS[row.target]:
            frame = written[row.target, row.arm]
            assert row.train == pytest.approx(last(frame, "train", metric), abs=0.006)
            assert row.val == pytest.approx(last(frame, "val", metric), abs=0.006)
            assert row.epoch == 3
        else:
            assert math.isnan(row.train) and math.isnan(row.val) and math.isnan(row.epoch)


def test_table2_markdown(study):
    root, written = study
    text = (root / "tables" / "table2.md").read_text()
    assert "### Accuracy (%)" in text and "### Kappa Score (%)" in text
    assert text.index("### Accuracy (%)") < text.index("### Kappa Score (%)")
    assert "| Dataset |  | IN | Dom RI | Dom IN | ALL RI | ALL IN |" in text
    lines = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in text.splitlines()}
    d4_val = [c.strip() for c in lines["D4 Messidor", "Validation"].strip("|").split("|")][2:]
    expected = ["n/a", f"{last(written['messidor', 'Domain_RI'], 'val', 'kappa'):.1f}", "n/a",
                f"{last(written['messidor', 'All_RI'], 'val', 'kappa'):.1f}", "n/a"]
    assert d4_val == expected
    assert ("D1 Shenzhen CXR", "Training") in lines and ("D3 Kather Texture 2016", "Validation") in lines
    assert "train 450 / val 66 / test 160" in text  # split sizes from OUT/manifests/shenzhen.json
    assert "### Held-out test" in text


def test_test_results(study):
    root, _ = study
    tests = pd.read_csv(root / "tables" / "test_results.csv")
    assert list(tests.columns)[:5] == ["target", "arm", "metric", "test", "n"]
    assert list(tests["target"]) == ["shenzhen"] * 5 and list(tests["arm"]) == ALL_ARMS
    by_arm = tests.set_index("arm")
    assert by_arm.at["IN", "test"] == pytest.approx(81.25) and by_arm.at["All_IN", "test"] == pytest.approx(90.0)
    assert by_arm.at["IN", "n"] == 160
    assert math.isnan(by_arm.at["Domain_RI", "test"])


def test_figures_are_real_images(study):
    root, _ = study
    figures = root / "figures"
    names = ["shenzhen", "kather2016", "messidor", "learning_curves", "shenzhen_loss", "messidor_loss"]
    for name in names:
        with Image.open(figures / f"{name}.png") as image:
            image.verify()
        with Image.open(figures / f"{name}.png") as image:
            pixels = np.asarray(image.convert("RGB"))
        assert pixels.shape[0] > 300 and pixels.shape[1] > 800, name
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, name  # not one flat colour
    # The overview grid has one row of panels per target: taller than one target figure.
    with Image.open(figures / "learning_curves.png") as grid, Image.open(figures / "shenzhen.png") as one:
        assert grid.height > 2 * one.height


def test_no_temporary_files_left(study):
    root, _ = study
    assert not [p for p in root.rglob("*") if ".tmp" in p.name]


def test_metric_override_and_unknown_target_and_arm(tmp_path):
    written = make_runs(tmp_path, {"deepdrid": ["IN"], "my_folder": ["All_RI", "zz_custom", "Domain_RI"]})
    (tmp_path / "finetune" / "my_folder" / "All_RI" / "args.json").write_text(
        json.dumps({"args": {}, "meta": {"key": "folder", "headline_metric": "balanced_accuracy"}}))
    run(tmp_path, tmp_path / "auto", "--no-loss-plots")
    table = pd.read_csv(tmp_path / "auto" / "tables" / "table2.csv")
    assert list(table["arm"]) == (ALL_ARMS + ["zz_custom"]) * 2  # unknown arm appended after the paper's
    assert list(table["target"].unique()) == ["deepdrid", "my_folder"]  # paper targets first
    assert dict(zip(table["target"], table["metric"])) == {"deepdrid": "kappa", "my_folder": "balanced_accuracy"}
    custom = table[table["arm"] == "zz_custom"].set_index("target")
    assert custom.at["my_folder", "val"] == pytest.approx(
        last(written["my_folder", "zz_custom"], "val", "balanced_accuracy"), abs=0.006)
    assert not (tmp_path / "auto" / "figures" / "deepdrid_loss.png").exists()
    assert not (tmp_path / "auto" / "tables" / "test_results.csv").exists()

    run(tmp_path, tmp_path / "qwk", "--metric", "qwk")
    table = pd.read_csv(tmp_path / "qwk" / "tables" / "table2.csv").set_index(["target", "arm"])
    assert set(table["metric"]) == {"qwk"}
    assert table.at[("deepdrid", "IN"), "train"] == pytest.approx(
        last(written["deepdrid", "IN"], "train", "qwk"), abs=0.006)
    assert "### Quadratic kappa (%)" in (tmp_path / "qwk" / "tables" / "table2.md").read_text()


def test_resumed_run_last_row_wins(tmp_path):
    frame = write_metrics(tmp_path / "finetune" / "shenzhen" / "IN" / "metrics.csv", seed=1)
    again = frame[frame["epoch"] == 3].assign(accuracy=[0.5, 0.25])  # epoch 3 logged twice after a resume
    pd.concat([frame, again]).to_csv(tmp_path / "finetune" / "shenzhen" / "IN" / "metrics.csv", index=False)
    run(tmp_path, tmp_path, "--no-loss-plots")
    row = pd.read_csv(tmp_path / "tables" / "table2.csv").iloc[0]
    assert (row["arm"], row["train"], row["val"], row["epoch"]) == ("IN", 50.0, 25.0, 3)


def test_error_without_runs(tmp_path):
    with pytest.raises(ValueError, match=r"no metrics.csv under .*finetune/\*/\*/ — run finetune_target.py first"):
        run(tmp_path, tmp_path)
    # From the command line: the same one-line message and a non-zero exit, no traceback.
    script = Path(plot_results.__file__)
    result = subprocess.run([sys.executable, str(script), "--runs", str(tmp_path), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "run finetune_target.py first" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "tables").exists()


@pytest.mark.parametrize("problem", ["no_metric_column", "no_val_rows", "empty_file"])
def test_error_on_malformed_csv(tmp_path, problem):
    make_runs(tmp_path, {"shenzhen": ["IN"], "messidor": ["All_RI"]})
    bad = tmp_path / "finetune" / "messidor" / "All_RI" / "metrics.csv"
    frame = pd.read_csv(bad)
    if problem == "no_metric_column":
        frame.drop(columns="kappa").to_csv(bad, index=False)
        match = "missing column.*kappa"
    elif problem == "no_val_rows":
        frame[frame["split"] == "train"].to_csv(bad, index=False)
        match = "no rows with split == 'val'"
    else:
        bad.write_text("")
        match = "cannot read CSV"
    with pytest.raises(ValueError, match=match) as info:
        run(tmp_path, tmp_path)
    assert str(bad) in str(info.value)
    assert not (tmp_path / "tables" / "table2.csv").exists()  # nothing half-written
