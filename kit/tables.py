"""The study's statistics over runs, as tables: per run, per test group (seed-mean with an interval
that carries both noises, paired comparisons between arms), Table 2 and convergence. Values in %,
differences in percentage points.

The training run is the unit of replication. Test values are the mean over seeds; "sd" is the
standard deviation across seeds (the training noise); with two or more seeds the CI and the p-value
add the across-seed variance of the seed-mean to its test-sampling variance (a patient bootstrap of
the seed-mean, every seed's predictions resampled on the same patients) and use a t distribution
with Welch's degrees of freedom (kit/stats.py two_level): they are about the arms, not about the
networks at hand. With one seed they are the percentile bootstrap over patients of that one network
(the training noise is not measured). Paired comparisons: all pairs of arms (10 for the paper's
five), each later arm in paper order minus the earlier one, on the same test images and seeds,
Holm-adjusted within each target (and checkpoint, train fraction; DeLong separately); for binary
targets also DeLong's test of the AUROC difference. Below stats.MIN_PATIENTS_PER_CLASS test patients
in some class, no interval and no p-value. Curves: convergence (epochs to 95 % of the run's best, and
to 95 % of the best arm's last value: a threshold common to every arm of the target), mean height,
and stability (largest drop, sd and gain over the last third) of the validation and training curves.
"""
import math

import numpy as np
import pandas as pd

from . import metrics, stats
from .paper import TABLE2, ranking
from .results import CHECKPOINTS, last_epoch_row, read_predictions

CONVERGENCE = 0.95              # "epochs to reach 95 % of the arm's best validation metric"


def number(value):
    """A CSV cell as a float (NaN for empty or non-numeric)."""
    return float(pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0])


def mean_sd(values):
    """(mean, sd across seeds with ddof 1; NaN for one value) of the finite values."""
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else math.nan


def mean_curves(curves_list):
    """Seed-mean curves: epoch, split, value, value_sd, loss, loss_sd (sd NaN for one seed)."""
    frame = pd.concat(curves_list)
    grouped = frame.groupby(["epoch", "split"], sort=True)
    out = grouped[["value", "loss"]].mean()
    sd = grouped[["value", "loss"]].std(ddof=1).add_suffix("_sd")
    return out.join(sd).reset_index()


def class_patients(targets, patients, n_classes) -> int:
    """The fewest test patients any class has (a patient counts for each class among its images)."""
    pairs = pd.DataFrame({"target": targets, "patient": patients}).drop_duplicates()
    counts = pairs["target"].value_counts()
    return int(min(counts.get(c, 0) for c in range(n_classes)))


def compare_networks(columns, probs, targets, patients, metric, n_resamples, ci, seed):
    """Summary rows per arm and paired rows per pair of arms (headline metric, fractions) for networks
    tested on the same images: columns[k] = (arm, seed) of probs[k] (N, C); targets (N,); patients (N,).

    All networks share every patient resample (stats.resampled_metrics), so arms are paired and the
    seeds of an arm are averaged resample by resample; stats.two_level adds the seeds' spread. With
    fewer than stats.MIN_PATIENTS_PER_CLASS test patients in some class no interval and no p are given."""
    n_classes = probs[0].shape[1]
    points = np.array([metrics.multiclass_metrics(p, targets, (metric,))[metric] for p in probs])
    distribution = stats.resampled_metrics("multiclass", (metric,), probs, targets, patients, n_resamples, seed)[:, :, 0]
    fewest = class_patients(targets, patients, n_classes)
    too_few = fewest < stats.MIN_PATIENTS_PER_CLASS
    sizes = {"n_images": len(targets), "n_patients": len(set(patients)), "min_class_patients": fewest}
    by_arm = {}
    for k, (arm, s) in enumerate(columns):
        by_arm.setdefault(arm, {})[s] = k

    def blank(found):  # too few test patients: the estimate stays, the interval and p go
        return found | {key: math.nan for key in ("ci_low", "ci_high", "p_value", "se", "df")} if too_few else found

    summary = []
    for arm, seeds in by_arm.items():
        cols = [seeds[s] for s in sorted(seeds)]
        found = blank(stats.two_level(points[cols], distribution[:, cols], ci))
        summary.append({"arm": arm, "metric": metric, "n_seeds": len(cols), "test": found["estimate"],
                        "test_sd": found["seed_sd"], "ci_low": found["ci_low"], "ci_high": found["ci_high"], **sizes})
    paired = []
    arms = list(by_arm)  # paper order (discover_runs sorts the runs)
    for k, reference in enumerate(arms):
        for arm in arms[k + 1:]:  # every pair once: the later arm minus the earlier one
            seeds = sorted(set(by_arm[reference]) & set(by_arm[arm]))
            if not seeds:
                continue
            a, r = [by_arm[arm][s] for s in seeds], [by_arm[reference][s] for s in seeds]
            found = blank(stats.two_level(points[a] - points[r], distribution[:, a] - distribution[:, r], ci))
            paired.append({"reference": reference, "arm": arm, "metric": metric,
                           "method": "seeds and patients" if len(seeds) > 1 else "patients, one seed",
                           "n_seeds": len(seeds), **sizes, "arm_value": float(points[a].mean()),
                           "reference_value": float(points[r].mean()), "difference": found["estimate"],
                           "ci_low": found["ci_low"], "ci_high": found["ci_high"], "se": found["se"],
                           "df": found["df"], "p_value": found["p_value"], "difference_sd": found["seed_sd"],
                           "test_se": found["test_se"]})
    return summary, paired


def test_comparisons(group, metric, target, *, bootstrap: int, ci: float, seed: int, notes=None):
    """Test results of one (target, train fraction, checkpoint kind): the runs' evaluations of
    every arm and seed, compared on the same patient resamples (compare_networks).

    Returns (summary rows per arm, paired rows). Arms are compared as paired only when every run
    was trained on the same manifest (same rows: args.json meta.data.manifest_rows) and tested on
    the same images; otherwise, or without predictions.csv files, there are no paired rows, the CI
    comes from evaluate.py's metrics.csv for a single seed, and a line saying why goes to `notes`.
    """
    def note(text):
        print(f"note: {text}")
        if notes is not None:
            notes.append(text)

    by_arm = {}
    for run, evaluation in group:
        by_arm.setdefault(run["arm"], {})[run["seed"]] = evaluation
    columns = [(arm, seed) for arm, seeds in by_arm.items() for seed in sorted(seeds)]

    # --- the seeds' predictions on the same images, or none
    loaded = None
    same_split = len({run.get("manifest_rows") for run, _ in group} - {None}) <= 1
    if not same_split:
        note(f"{target}: its runs were trained on different splits (the manifest changed between runs: "
             f"prepare_data.py was re-run); they are not compared as paired")
    if same_split and bootstrap > 0 and metric in metrics.MULTICLASS_METRICS and all(
            by_arm[a][s]["predictions"] for a, s in columns):
        loaded = {c: read_predictions(by_arm[c[0]][c[1]]["predictions"]) for c in columns}
        first = loaded[columns[0]][0]
        if any(not frame["image"].equals(first["image"]) for frame, *_ in loaded.values()):
            note(f"{target}: its runs were tested on different images; they are not compared as paired")
            loaded = None
    if not loaded:
        return evaluated_only(by_arm, metric), []

    targets = loaded[columns[0]][2]
    probs = [loaded[c][1] for c in columns]
    patients = first["patient"].astype(str).to_numpy()
    summary, paired = compare_networks(columns, probs, targets, patients, metric, bootstrap, ci, seed)
    binary = len(loaded[columns[0]][3]) == 2 and 0 < (targets == 1).sum() < len(targets)  # DeLong needs both
    too_few = summary[0]["min_class_patients"] < stats.MIN_PATIENTS_PER_CLASS  # then the AUROC difference alone
    if binary:
        for row in list(paired):  # DeLong on the positive class's probability (column 1), the same seeds
            seeds = sorted(set(by_arm[row["arm"]]) & set(by_arm[row["reference"]]))
            scores = {a: np.stack([loaded[a, s][1][:, 1] for s in seeds]) for a in (row["arm"], row["reference"])}
            test = stats.delong_test(targets == 1, scores[row["arm"]], scores[row["reference"]], ci=ci)
            _, auc_sd = mean_sd([metrics.binary_auroc(targets == 1, scores[row["arm"]][i])
                                 - metrics.binary_auroc(targets == 1, scores[row["reference"]][i])
                                 for i in range(len(seeds))])
            if too_few:
                test |= {key: math.nan for key in ("ci_low", "ci_high", "se", "df", "p_value")}
            paired.append(row | {"metric": "auroc", "method": "DeLong", "arm_value": test["auroc_a"],
                                 "reference_value": test["auroc_b"], "difference": test["difference"],
                                 "ci_low": test["ci_low"], "ci_high": test["ci_high"], "se": test["se"],
                                 "df": test["df"], "p_value": test["p_value"], "difference_sd": auc_sd,
                                 "test_se": math.nan})
    return summary, paired


def evaluated_only(by_arm, metric):
    """Summary rows from evaluate.py's metrics.csv alone (no paired predictions): the seed-mean and sd,
    and evaluate.py's own interval for a single seed (over patients: the training noise not measured)."""
    summary = []
    for arm, seeds in by_arm.items():
        rows = [seeds[s]["row"] for s in sorted(seeds)]
        point, sd = mean_sd([number(r.get(metric)) for r in rows])
        low = high = math.nan
        if len(rows) == 1:
            low, high = number(rows[0].get(f"{metric}_ci_low")), number(rows[0].get(f"{metric}_ci_high"))
        n_images = max((int(r["n"]) for r in rows if pd.notna(r.get("n"))), default=None)
        n_patients = max((int(r["n_patients"]) for r in rows if pd.notna(r.get("n_patients"))), default=None)
        summary.append({"arm": arm, "metric": metric, "n_seeds": len(rows), "test": point, "test_sd": sd,
                        "ci_low": low, "ci_high": high, "n_images": n_images, "n_patients": n_patients,
                        "min_class_patients": None})
    return summary


def runs_frame(runs, metrics):
    """tables/runs.csv: one row per run — last epoch, convergence, test values of both checkpoints (%)."""
    rows = []
    for run in runs:
        metric = metrics[run["target"]]
        epoch, train, val = last_epoch_row(run["curves"])
        val_rows = run["curves"][run["curves"]["split"] == "val"]
        conv = stats.convergence(val_rows["epoch"], val_rows["value"], CONVERGENCE)
        train_rows = run["curves"][run["curves"]["split"] == "train"]
        train_conv = stats.convergence(train_rows["epoch"], train_rows["value"], CONVERGENCE)
        val_stability = stats.stability(val_rows["epoch"], val_rows["value"])
        row = {"target": run["target"], "arm": run["arm"], "train_fraction": run["fraction"], "seed": run["seed"],
               "metric": metric, "epoch": epoch, "train": 100 * train, "val": 100 * val,
               "best_val": 100 * conv["best"], "best_epoch": conv["best_epoch"],
               "epochs_to_95": conv["epochs_to_target"], "val_curve_mean": 100 * conv["curve_auc"],
               "max_drop": 100 * val_stability["max_drop"], "tail_sd": 100 * val_stability["tail_sd"],
               "train_epochs_to_95": train_conv["epochs_to_target"],
               "train_late_gain": 100 * stats.stability(train_rows["epoch"], train_rows["value"])["late_gain"]}
        for kind in CHECKPOINTS:
            result = run["evals"].get(kind, {}).get("row", {})
            row |= {f"test_{kind}{suffix}": 100 * number(result.get(f"{metric}{suffix}"))
                    for suffix in ("", "_ci_low", "_ci_high")}
        n_test = [number(e["row"].get("n")) for e in run["evals"].values()]
        rows.append(row | {"n_test": max(n_test) if n_test else None, "run": run["key"]})
    frame = pd.DataFrame(rows)
    frame["n_test"] = pd.to_numeric(frame["n_test"]).astype("Int64")
    return frame


SUMMARY_COLUMNS = ["target", "arm", "train_fraction", "checkpoint", "metric", "n_seeds", "test", "test_sd", "ci_low",
                   "ci_high", "n_images", "n_patients", "min_class_patients"]
PAIRED_COLUMNS = ["target", "train_fraction", "checkpoint", "arm", "reference", "metric", "method", "n_seeds",
                  "n_images", "n_patients", "min_class_patients", "arm_value", "reference_value", "difference",
                  "ci_low", "ci_high", "se", "df", "p_value", "p_holm", "holm_m", "difference_sd", "test_se"]


def add_holm(paired):
    """p_holm and holm_m (how many comparisons the correction counted) within each family: a target's
    headline comparisons at one train fraction and checkpoint, and its DeLong comparisons apart."""
    paired = paired.copy()
    family = [paired[c] for c in ("target", "train_fraction", "checkpoint") if c in paired.columns]
    family.append(paired["method"] == "DeLong")
    groups = paired.groupby(family, sort=False)["p_value"]
    paired["p_holm"] = groups.transform(stats.holm) if len(paired) else []
    paired["holm_m"] = groups.transform(lambda p: int(np.isfinite(p.to_numpy(dtype=float)).sum())) \
        if len(paired) else []
    return paired


def test_frames(runs, targets, metrics, *, bootstrap: int, ci: float, seed: int, notes=None):
    """tables/test_summary.csv and tables/paired.csv (%), one test_comparisons() per (target,
    train fraction, checkpoint), in paper order."""
    summary_rows, paired_rows = [], []
    for target in targets:
        for fraction in sorted({r["fraction"] for r in runs if r["target"] == target}):
            for kind in CHECKPOINTS:
                group = [(r, r["evals"][kind]) for r in runs
                         if r["target"] == target and r["fraction"] == fraction and kind in r["evals"]]
                if group:
                    summary, paired = test_comparisons(group, metrics[target], target, bootstrap=bootstrap, ci=ci,
                                                       seed=seed, notes=notes)
                    keys = {"target": target, "train_fraction": fraction, "checkpoint": kind}
                    summary_rows += [keys | row for row in summary]
                    paired_rows += [keys | row for row in paired]
    summary = pd.DataFrame(summary_rows, columns=SUMMARY_COLUMNS)
    paired = pd.DataFrame(paired_rows, columns=[c for c in PAIRED_COLUMNS if c not in ("p_holm", "holm_m")])
    for frame, columns in ((summary, ["test", "test_sd", "ci_low", "ci_high"]),
                           (paired, ["arm_value", "reference_value", "difference", "ci_low", "ci_high", "se",
                                     "difference_sd", "test_se"])):
        frame[columns] = 100 * frame[columns].astype(float)
    return summary, add_holm(paired)[PAIRED_COLUMNS]


def table2_frame(at_main, summary, table_arms, metrics, main_fraction):
    """tables/table2.csv at each target's largest fraction: last-epoch train/val mean and sd across
    seeds, and the test mean, CI and sd of the best-validation (test_*) and last (test_last_*) checkpoint."""
    rows = []
    for target in metrics:
        for arm in table_arms:
            seeds = at_main[(at_main["target"] == target) & (at_main["arm"] == arm)]
            row = {"target": target, "arm": arm, "metric": metrics[target], "n_seeds": len(seeds),
                   "train_fraction": main_fraction[target],
                   "epoch": seeds["epoch"].max() if len(seeds) else None,
                   "n_test": seeds["n_test"].max() if len(seeds) else None}
            for split in ("train", "val"):
                row[split], row[f"{split}_sd"] = mean_sd(seeds[split])
            for kind, prefix in (("best", "test"), ("last", "test_last")):
                found = summary[(summary["target"] == target) & (summary["arm"] == arm)
                                & (summary["checkpoint"] == kind) & (summary["train_fraction"] == main_fraction[target])]
                values = found.iloc[0] if len(found) else {}
                if len(found) and pd.notna(values.get("n_patients")):
                    row["n_test_patients"] = values["n_patients"]
                if len(found) and pd.notna(values.get("min_class_patients")):
                    row["min_class_patients"] = values["min_class_patients"]
                row |= {prefix: values.get("test", math.nan), f"{prefix}_sd": values.get("test_sd", math.nan),
                        f"{prefix}_ci_low": values.get("ci_low", math.nan),
                        f"{prefix}_ci_high": values.get("ci_high", math.nan)}
            rows.append(row)
    table = pd.DataFrame(rows, columns=[
        "target", "arm", "metric", "train", "val", "epoch", "n_seeds", "train_sd", "val_sd", "test", "test_ci_low",
        "test_ci_high", "test_sd", "test_last", "test_last_ci_low", "test_last_ci_high", "test_last_sd", "n_test",
        "train_fraction", "n_test_patients", "min_class_patients"])
    for column in ("epoch", "n_test", "n_test_patients", "min_class_patients"):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype("Int64")
    return table


CURVE_MEASURES = ("best_val", "epochs_to_95", "epochs_to_threshold", "val_curve_mean", "max_drop", "tail_sd",
                  "train_epochs_to_95", "train_late_gain")


def common_thresholds(at_main):
    """{target: (threshold in %, the arm it comes from)}: 95 % of the best arm's last-epoch validation
    value (seed-mean), a yardstick common to every arm of the target, so "earlier" compares arms
    against the same height (each arm's own best would let a poor arm converge "early" to a low value)."""
    found = {}
    for target, rows in at_main.groupby("target", sort=False):
        last = rows.groupby("arm", sort=False)["val"].mean().dropna()
        if len(last):
            found[target] = (stats.share_of(float(last.max()), CONVERGENCE), str(last.idxmax()))
    return found


def convergence_frame(at_main, runs=()):
    """tables/convergence.csv: per target and arm (largest fraction), mean and sd across seeds of the
    curve measures: convergence and stability of the validation curve, convergence of the training
    curve. With the runs' curves also epochs_to_threshold: the first epoch a run's validation value
    reaches the target's common threshold (common_thresholds; NaN for a run that never does, counted
    in never_reached)."""
    at_main = at_main.copy()
    thresholds = common_thresholds(at_main)
    curves = {run["key"]: run["curves"] for run in runs}
    reached = []
    for row in at_main.itertuples():
        curve = curves.get(row.run)
        if curve is None or row.target not in thresholds:
            reached.append(math.nan)
            continue
        val = curve[curve["split"] == "val"]
        reached.append(stats.first_reaching(val["epoch"], 100 * val["value"], thresholds[row.target][0]))
    at_main["epochs_to_threshold"] = reached
    rows = []
    for (target, arm), seeds in at_main.groupby(["target", "arm"], sort=False):
        threshold, source = thresholds.get(target, (math.nan, None))
        row = {"target": target, "arm": arm, "train_fraction": seeds["train_fraction"].iloc[0],
               "metric": seeds["metric"].iloc[0], "n_seeds": len(seeds), "epochs": seeds["epoch"].max(),
               "best_epoch": seeds["best_epoch"].mean(), "threshold": threshold, "threshold_arm": source,
               "never_reached": int(seeds["epochs_to_threshold"].isna().sum()) if curves else None}
        for column in CURVE_MEASURES:
            row[column], row[f"{column}_sd"] = mean_sd(seeds[column])
        rows.append(row)
    return pd.DataFrame(rows, columns=["target", "arm", "train_fraction", "metric", "n_seeds", "epochs", "best_epoch",
                                       "threshold", "threshold_arm", "never_reached",
                                       *(f"{c}{sd}" for c in CURVE_MEASURES for sd in ("", "_sd"))])


def paper_vs_run_frame(table, checkpoint):
    """tables/paper_vs_run.csv: for the paper's targets and arms, its Table 2 (last epoch, train and
    validation) next to this run's last-epoch train and validation (mean and sd across seeds), this
    run's test value at `checkpoint` (best | last) with its CI, and val - paper val in points."""
    prefix = "test" if checkpoint == "best" else "test_last"
    rows = []
    for r in table.itertuples():
        if r.arm not in TABLE2.get(r.target, {}):
            continue
        paper_train, paper_val = TABLE2[r.target][r.arm]
        rows.append({"target": r.target, "arm": r.arm, "metric": r.metric, "paper_train": paper_train,
                     "paper_val": paper_val, "train": r.train, "train_sd": r.train_sd, "val": r.val, "val_sd": r.val_sd,
                     "val_minus_paper": r.val - paper_val, "checkpoint": checkpoint, "test": getattr(r, prefix),
                     "test_sd": getattr(r, f"{prefix}_sd"), "test_ci_low": getattr(r, f"{prefix}_ci_low"),
                     "test_ci_high": getattr(r, f"{prefix}_ci_high"), "n_seeds": r.n_seeds,
                     "min_class_patients": r.min_class_patients})
    return pd.DataFrame(rows, columns=["target", "arm", "metric", "paper_train", "paper_val", "train", "train_sd", "val",
                                       "val_sd", "val_minus_paper", "checkpoint", "test", "test_sd", "test_ci_low",
                                       "test_ci_high", "n_seeds", "min_class_patients"])


def rankings_frame(comparison):
    """tables/rankings.csv: per target, the arms best first (ties at one decimal joined by '='): the
    paper's validation, this run's last-epoch validation and its test values (arms not run left out)."""
    rows = []
    for target, arms in comparison.groupby("target", sort=False):
        by_arm = arms.set_index("arm")
        rows.append({"target": target, "paper_val": ranking(by_arm["paper_val"].to_dict()),
                     "val": ranking(by_arm["val"].to_dict()), "test": ranking(by_arm["test"].to_dict())})
    return pd.DataFrame(rows, columns=["target", "paper_val", "val", "test"])
