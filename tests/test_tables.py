"""kit.tables: Table 2, seed means with patient-bootstrap CIs, paired comparisons and convergence, as
plot_results.py writes them for hand-written runs trees (values in %)."""
import math

import numpy as np
import pandas as pd
import pytest
from helpers import ALL_ARMS, RUNS, SEEDS, hand_accuracy, last

from kit import tables


# --- Table 2 and the test columns --------------------------------------------------------------
def test_table2_csv_values(plain_study):
    root, written = plain_study
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


def test_test_results(plain_study):
    root, _ = plain_study
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


# --- seeds, paired comparisons, convergence ---------------------------------------------------
def test_seeds_aggregate_to_mean_sd_and_ci(seeded_study):
    root, stored = seeded_study
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


def test_paired_comparisons(seeded_study):
    root, _ = seeded_study
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


def test_convergence_table(seeded_study):
    root, _ = seeded_study
    convergence = pd.read_csv(root / "tables" / "convergence.csv").set_index(["target", "arm"])
    row = convergence.loc[("shenzhen", "IN")]
    assert row["best_val"] == pytest.approx(80.0) and row["epochs_to_95"] == 3 and row["epochs_to_95_sd"] == 0
    assert row["val_curve_mean"] == pytest.approx(100 * (0.55 + 0.74 + 0.79) / 3, abs=1e-3)


def test_test_summary_covers_every_train_fraction(seeded_study):
    root, _ = seeded_study
    summary = pd.read_csv(root / "tables" / "test_summary.csv")
    fractions = summary[(summary["target"] == "shenzhen") & (summary["checkpoint"] == "best")]
    assert sorted(set(fractions["train_fraction"])) == [0.25, 1.0]


# --- helpers ----------------------------------------------------------------------------------
def test_mean_sd_and_number():
    assert tables.mean_sd([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    mean, sd = tables.mean_sd([5.0, float("nan"), None])  # one finite value: no sd
    assert mean == 5.0 and math.isnan(sd)
    assert all(math.isnan(v) for v in tables.mean_sd([]))
    assert tables.number("0.25") == 0.25 and math.isnan(tables.number("")) and math.isnan(tables.number("n/a"))


def test_mean_curves_over_seeds():
    one = pd.DataFrame({"epoch": [1, 1, 2, 2], "split": ["train", "val"] * 2, "value": [0.5, 0.4, 0.7, 0.6],
                        "loss": [1.0, 1.2, 0.8, 0.9]})
    other = one.assign(value=one["value"] + 0.1, loss=one["loss"] - 0.2)
    curves = tables.mean_curves([one, other]).set_index(["epoch", "split"])
    assert curves.loc[(2, "val"), "value"] == pytest.approx(0.65)
    assert curves.loc[(2, "val"), "value_sd"] == pytest.approx(np.std([0.6, 0.7], ddof=1))
    assert curves.loc[(1, "train"), "loss"] == pytest.approx(0.9)
    assert list(curves.columns) == ["value", "loss", "value_sd", "loss_sd"]
