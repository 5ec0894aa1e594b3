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
    assert list(table.columns)[:6] == ["target", "arm", "metric", "train", "val", "epoch"]
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
    table = pd.read_csv(root / "tables" / "table2.csv")
    shenzhen = table[table["target"] == "shenzhen"]
    assert list(shenzhen["arm"]) == ALL_ARMS
    by_arm = shenzhen.set_index("arm")
    assert by_arm.at["IN", "test"] == pytest.approx(81.25) and by_arm.at["All_IN", "test"] == pytest.approx(90.0)
    assert by_arm.at["IN", "n_test"] == 160
    assert math.isnan(by_arm.at["Domain_RI", "test"])
    summary = pd.read_csv(root / "tables" / "test_summary.csv")
    assert list(summary.columns) == ["target", "arm", "train_fraction", "checkpoint", "metric", "n_seeds", "test",
                                     "test_sd", "ci_low", "ci_high", "n_images", "n_patients"]
    assert sorted(summary["arm"]) == ["All_IN", "IN"] and set(summary["checkpoint"]) == {"best"}


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
    assert not (tmp_path / "auto" / "tables" / "test_summary.csv").exists()

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


# --- a fabricated study with seeds, train fractions and test predictions -------------------------

SEEDS = (0, 1)
SHENZHEN = ["normal", "tuberculosis"]
MESSIDOR = ["grade_0", "grade_1", "grade_2", "grade_3"]
# Validation accuracy per epoch of shenzhen/IN at fraction 1 (both seeds): best 0.8, 95 % of it
# = 0.76 first reached at epoch 3; trapezoid area over epochs 1-4 / 3 = (0.55 + 0.74 + 0.79) / 3
HAND_CURVE = [0.4, 0.7, 0.78, 0.8]


def write_run(root, target, arm, seed, fraction, classes, val_curve, predictions, rng):
    """A run folder as study.sh lays it out, with its evaluate.py outputs for best.pt and last.pt."""
    name = f"seed{seed}" if fraction == 1 else f"frac{fraction}_seed{seed}"
    run = root / "finetune" / target / arm / name
    run.mkdir(parents=True)
    rows = []
    for epoch, value in enumerate(val_curve, start=1):
        rows.append([epoch, "train", 0.5, min(1, value + 0.1), value, value, value, 0.9, 1.0, 1e-3])
        rows.append([epoch, "val", 0.6, value, value, value - 0.1, value, 0.8, 1.0, 1e-3])
    pd.DataFrame(rows, columns=COLUMNS).to_csv(run / "metrics.csv", index=False)
    (run / "args.json").write_text(json.dumps({"args": {"seed": seed, "train_fraction": fraction}, "meta": {}}))
    for kind in ("best", "last"):
        out = root / "eval" / target / arm / name / kind
        out.mkdir(parents=True)
        probs = np.clip(predictions + rng.normal(0, 0.02, predictions.shape) * (kind == "last"), 1e-3, None)
        probs = probs / probs.sum(axis=1, keepdims=True)
        frame = pd.DataFrame({"image": [f"img{i:03d}.png" for i in range(len(probs))],
                              "patient": [f"p{i // 2:03d}" for i in range(len(probs))], "split": "test"})
        frame["target"] = [classes[t] for t in TRUTH[target]]
        frame["pred"] = [classes[p] for p in probs.argmax(axis=1)]
        for c, name_c in enumerate(classes):
            frame[f"prob_{name_c}"] = probs[:, c]
        frame.sample(frac=1, random_state=seed).to_csv(out / "predictions.csv", index=False)  # any row order
        accuracy = float((probs.argmax(axis=1) == TRUTH[target]).mean())
        pd.DataFrame([{"split": "test", "checkpoint": str(run / f"{kind}.pt"), "epoch": len(val_curve), "loss": 0.5,
                       "accuracy": accuracy, "kappa": 0.5, "n": len(probs), "n_patients": len(probs) // 2}]
                     ).to_csv(out / "metrics.csv", index=False)


TRUTH = {"shenzhen": np.repeat([0, 1], 30), "messidor": np.tile([0, 1, 2, 3], 15)}


def noisy_predictions(truth, classes, correct, rng):
    """One-hot-ish probabilities, right on the images where `correct` is True."""
    wrong = (truth + 1) % len(classes)
    chosen = np.where(correct, truth, wrong)
    probs = np.full((len(truth), len(classes)), 0.1) + rng.uniform(0, 0.05, (len(truth), len(classes)))
    probs[np.arange(len(truth)), chosen] += 0.6
    return probs / probs.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeded")
    rng = np.random.default_rng(0)
    accuracy = {"IN": 0.6, "Domain_RI": 0.75, "All_IN": 0.9}
    stored = {}
    for target, classes in (("shenzhen", SHENZHEN), ("messidor", MESSIDOR)):
        truth = TRUTH[target]
        for seed in SEEDS:
            fractions = (0.25, 1.0) if target == "shenzhen" else (1.0,)
            for fraction in fractions:
                for arm, acc in accuracy.items():
                    correct = rng.uniform(size=len(truth)) < acc * (0.8 if fraction < 1 else 1.0)
                    predictions = noisy_predictions(truth, classes, correct, rng)
                    if arm == "All_IN" and target == "messidor":  # the same model as IN: no difference at all
                        predictions = stored["messidor", "IN", seed]
                    stored[target, arm, seed] = predictions
                    curve = HAND_CURVE if (target, arm) == ("shenzhen", "IN") else list(rng.uniform(0.3, 0.9, 4))
                    write_run(root, target, arm, seed, fraction, classes, curve, predictions, rng)
    (root / "manifests").mkdir()
    (root / "manifests" / "shenzhen.json").write_text(json.dumps(
        {"key": "shenzhen", "counts": {"train": {"normal": 100, "tuberculosis": 100}, "val": {"normal": 10,
                                       "tuberculosis": 10}, "test": {"normal": 30, "tuberculosis": 30}}}))
    run(root, root, "--bootstrap", "400")
    return root, stored


def hand_accuracy(probs, target):
    return 100 * float((probs.argmax(axis=1) == TRUTH[target]).mean())


def test_seeds_aggregate_to_mean_sd_and_ci(seeded):
    root, stored = seeded
    table = pd.read_csv(root / "tables" / "table2.csv").set_index(["target", "arm"])
    row = table.loc[("shenzhen", "Domain_RI")]
    per_seed = [hand_accuracy(stored["shenzhen", "Domain_RI", s], "shenzhen") for s in SEEDS]
    assert row["n_seeds"] == 2 and row["train_fraction"] == 1.0
    assert row["test"] == pytest.approx(np.mean(per_seed), abs=1e-3)
    assert row["test_sd"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-3)
    assert row["test_ci_low"] < row["test"] < row["test_ci_high"]
    assert row["test_ci_high"] - row["test_ci_low"] < 40  # 30 patients of two images: wide, not absurd
    assert table.loc[("shenzhen", "IN"), "val"] == pytest.approx(80.0) and table.loc[("shenzhen", "IN"), "val_sd"] == 0
    runs = pd.read_csv(root / "tables" / "runs.csv")
    assert len(runs) == 2 * (2 * 3 + 3)  # seeds x (shenzhen: 2 fractions x 3 arms + messidor: 3 arms)
    assert set(runs["seed"]) == set(SEEDS) and set(runs["train_fraction"]) == {0.25, 1.0}
    markdown = (root / "tables" / "table2.md").read_text()
    cell = f"{row['test']:.1f} ± {row['test_sd']:.1f} [{row['test_ci_low']:.1f}, {row['test_ci_high']:.1f}]"
    assert cell in markdown


def test_paired_comparisons(seeded):
    root, _ = seeded
    paired = pd.read_csv(root / "tables" / "paired.csv")
    best = paired[(paired["checkpoint"] == "best") & (paired["train_fraction"] == 1.0)]
    pairs = {(r.target, r.arm, r.reference, r.method) for r in best.itertuples()}
    bootstrap = "paired bootstrap over patients"
    for target in ("shenzhen", "messidor"):
        assert {(target, a, "IN", bootstrap) for a in ("Domain_RI", "All_IN")} <= pairs
        assert (target, "All_IN", "Domain_RI", bootstrap) in pairs
        assert (target, "IN", "Domain_RI", bootstrap) not in pairs  # Domain_RI - IN, negated: not repeated
    assert ("shenzhen", "All_IN", "IN", "DeLong") in pairs and ("messidor", "All_IN", "IN", "DeLong") not in pairs
    same = best[(best["target"] == "messidor") & (best["arm"] == "All_IN") & (best["reference"] == "IN")].iloc[0]
    assert same["metric"] == "kappa" and same["difference"] == 0 and same["p_value"] == pytest.approx(1.0)
    assert same["ci_low"] == 0 and same["ci_high"] == 0
    clear = best[(best["target"] == "shenzhen") & (best["arm"] == "All_IN") & (best["reference"] == "IN")
                 & (best["method"] == bootstrap)].iloc[0]
    assert clear["difference"] > 15 and clear["ci_low"] > 0 and clear["p_value"] < 0.05
    assert clear["n_seeds"] == 2 and clear["n_images"] == 60 and clear["n_patients"] == 30
    assert clear["difference"] == pytest.approx(clear["arm_value"] - clear["reference_value"], abs=1e-3)


def test_convergence_table(seeded):
    root, _ = seeded
    convergence = pd.read_csv(root / "tables" / "convergence.csv").set_index(["target", "arm"])
    row = convergence.loc[("shenzhen", "IN")]
    assert row["best_val"] == pytest.approx(80.0) and row["epochs_to_95"] == 3 and row["epochs_to_95_sd"] == 0
    assert row["val_curve_mean"] == pytest.approx(100 * (0.55 + 0.74 + 0.79) / 3, abs=1e-3)


def test_figures_and_report(seeded):
    root, _ = seeded
    for name in ("forest", "label_efficiency", "learning_curves", "shenzhen"):
        with Image.open(root / "figures" / f"{name}.png") as image:
            assert image.width > 500 and image.height > 300, name
    report = (root / "report.md").read_text()
    for part in ("## Data", "Table 2", "### Held-out test", "## Paired comparisons", "## Convergence",
                 "(figures/forest.png)", "(figures/label_efficiency.png)", "seeds 0, 1", "train fractions 0.25, 1"):
        assert part in report, part
    data = [line for line in report.splitlines() if line.startswith("| D1 Shenzhen CXR | Accuracy")][0]
    assert [c.strip() for c in data.strip("|").split("|")][2:] == ["200", "20", "60", "30"]
    summary = pd.read_csv(root / "tables" / "test_summary.csv")
    fractions = summary[(summary["target"] == "shenzhen") & (summary["checkpoint"] == "best")]
    assert sorted(set(fractions["train_fraction"])) == [0.25, 1.0]
