"""kit.tables: Table 2, seed means with patient-bootstrap CIs, paired comparisons and convergence, as
plot_results.py writes them for hand-written runs trees (values in %)."""
import math

import numpy as np
import pandas as pd
import pytest
from helpers import ALL_ARMS, RUNS, SEEDS, hand_accuracy, last

from scipy.stats import t as student_t

from kit import stats, tables


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
                                     "test_sd", "ci_low", "ci_high", "n_images", "n_patients", "min_class_patients"]
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
    bootstrap = "seeds and patients"
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
    # 60 test images and two seeds whose differences disagree (df about 1): wide, though 15 points apart
    assert clear["difference"] > 15 and clear["ci_low"] < clear["difference"] < clear["ci_high"]
    assert clear["n_seeds"] == 2 and clear["n_images"] == 60 and clear["n_patients"] == 30
    assert clear["min_class_patients"] == 15 and clear["holm_m"] == 3  # three arms: three comparisons corrected for
    assert clear["difference"] == pytest.approx(clear["arm_value"] - clear["reference_value"], abs=1e-3)
    # two seeds: the seeds' spread joins the test noise, t with Welch's degrees of freedom
    seed_var, test_var = clear["difference_sd"] ** 2 / 2, clear["test_se"] ** 2
    assert clear["se"] == pytest.approx(math.sqrt(seed_var + test_var), rel=1e-3)
    assert clear["df"] == pytest.approx((seed_var + test_var) ** 2 / seed_var ** 2, rel=1e-3)
    assert clear["ci_high"] - clear["difference"] == pytest.approx(
        clear["se"] * student_t.ppf(0.975, clear["df"]), rel=1e-3)


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


def test_compare_networks_by_hand():
    """Two arms x two seeds on 40 patients of 2 images: the seeds' means, the paired difference, and no
    interval below the minimum of test patients per class."""
    rng = np.random.default_rng(0)
    targets = np.tile([0, 1], 40)
    patients = np.repeat(np.arange(40), 2)  # each patient one image of each class: 40 patients per class
    columns = [("IN", 0), ("IN", 1), ("All_IN", 0), ("All_IN", 1)]
    probs = []
    for right in (0.6, 0.7, 0.9, 0.95):
        correct = rng.permutation(80) < round(right * 80)
        probs.append(np.eye(2)[np.where(correct, targets, 1 - targets)])
    accuracy = [float((p.argmax(axis=1) == targets).mean()) for p in probs]
    summary, paired = tables.compare_networks(columns, probs, targets, patients, "accuracy", 2000, 0.95, 0)
    by_arm = {row["arm"]: row for row in summary}
    assert by_arm["IN"]["test"] == pytest.approx(np.mean(accuracy[:2]))
    assert by_arm["IN"]["test_sd"] == pytest.approx(np.std(accuracy[:2], ddof=1))
    assert by_arm["IN"]["min_class_patients"] == 40 and by_arm["IN"]["n_patients"] == 40
    (row,) = paired
    assert (row["arm"], row["reference"], row["n_seeds"]) == ("All_IN", "IN", 2)
    differences = np.subtract(accuracy[2:], accuracy[:2])
    assert row["difference"] == pytest.approx(differences.mean())
    assert row["difference_sd"] == pytest.approx(np.std(differences, ddof=1))
    assert row["ci_low"] < row["difference"] < row["ci_high"] and 0 < row["p_value"] < 1
    # four patients per class: the estimate stays, the interval and p go
    few = tables.compare_networks(columns, [p[:8] for p in probs], targets[:8], patients[:8], "accuracy", 200,
                                  0.95, 0)
    assert few[1][0]["min_class_patients"] == 4 < stats.MIN_PATIENTS_PER_CLASS
    assert math.isnan(few[1][0]["p_value"]) and math.isnan(few[0][0]["ci_low"]) and not math.isnan(few[0][0]["test"])


def test_common_threshold_and_epochs_to_it():
    def run(key, values):
        curves = pd.DataFrame({"epoch": list(range(1, len(values) + 1)), "split": "val", "value": values, "loss": 0.0})
        return {"key": key, "curves": curves}
    runs = [run("t/IN/seed0", [0.5, 0.7, 0.8]), run("t/All_IN/seed0", [0.85, 0.9, 0.95])]
    measures = {c: 1.0 for c in tables.CURVE_MEASURES if c != "epochs_to_threshold"}
    at_main = pd.DataFrame([{"target": "t", "arm": arm, "train_fraction": 1.0, "metric": "accuracy", "epoch": 3,
                             "best_epoch": 3, "val": 100 * last, "run": key, **measures}
                            for key, arm, last in (("t/IN/seed0", "IN", 0.8), ("t/All_IN/seed0", "All_IN", 0.95))])
    convergence = tables.convergence_frame(at_main, runs).set_index("arm")
    assert convergence.at["IN", "threshold"] == pytest.approx(90.25)  # 95 % of All_IN's last value, for both arms
    assert convergence.at["IN", "threshold_arm"] == "All_IN"
    assert math.isnan(convergence.at["IN", "epochs_to_threshold"]) and convergence.at["IN", "never_reached"] == 1
    assert convergence.at["All_IN", "epochs_to_threshold"] == 3  # 0.9 < 90.25 % at epoch 2
