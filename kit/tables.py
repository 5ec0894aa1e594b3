"""The study's statistics over runs, as tables: per run, per test group (seed-mean with a patient
bootstrap CI, paired comparisons between arms), Table 2 and convergence. Values in %, differences
in percentage points.

Test values are the mean over seeds; "sd" is the standard deviation across seeds (the training
noise); the CI is a percentile bootstrap over test *patients* of that seed-mean (the
test-sampling noise). Paired comparisons: all pairs of arms (10 for the paper's five), each later
arm in paper order minus the earlier one, on the same test images and seeds, with a paired
patient bootstrap CI and two-sided p-value of the headline metric, Holm-adjusted within each
target (and checkpoint, train fraction and method); for binary targets also DeLong's test of
the AUROC difference. Curves: convergence (epochs to 95 % of the best, mean height) and stability
(largest drop, sd and gain over the last third) of the validation and the training curve.
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


def test_comparisons(group, metric, target, args, notes=None):
    """Test results of one (target, train fraction, checkpoint kind): the runs' evaluations of
    every arm and seed, bootstrapped together on the same patient resamples.

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
    points = {(arm, seed): number(by_arm[arm][seed]["row"].get(metric)) for arm, seed in columns}

    # --- the seeds' predictions on the same images, or none
    loaded = None
    same_split = len({run.get("manifest_rows") for run, _ in group} - {None}) <= 1
    if not same_split:
        note(f"{target}: its runs were trained on different splits (the manifest changed between runs: "
             f"prepare_data.py was re-run); they are not compared as paired")
    if same_split and args.bootstrap > 0 and metric in metrics.MULTICLASS_METRICS and all(
            by_arm[a][s]["predictions"] for a, s in columns):
        loaded = {c: read_predictions(by_arm[c[0]][c[1]]["predictions"]) for c in columns}
        first = loaded[columns[0]][0]
        if any(not frame["image"].equals(first["image"]) for frame, *_ in loaded.values()):
            note(f"{target}: its runs were tested on different images; they are not compared as paired")
            loaded = None
    distribution = None
    if loaded:
        targets = loaded[columns[0]][2]
        probs = [loaded[c][1] for c in columns]
        points = {c: metrics.multiclass_metrics(p, targets, (metric,))[metric] for c, p in zip(columns, probs)}
        patients = first["patient"].astype(str).to_numpy()
        distribution = stats.bootstrap_distribution(
            lambda rows: [metrics.multiclass_metrics(p[rows], targets[rows], (metric,))[metric] for p in probs],
            patients, n_resamples=args.bootstrap, seed=args.seed)
        n_images, n_patients = len(patients), len(set(patients))
    else:
        rows = [by_arm[a][s]["row"] for a, s in columns]
        n_images = max((int(r["n"]) for r in rows if pd.notna(r.get("n"))), default=None)
        n_patients = max((int(r["n_patients"]) for r in rows if pd.notna(r.get("n_patients"))), default=None)

    def seed_mean(arm, seeds):
        """(point, bootstrap distribution) of the mean over `seeds` of the arm's metric."""
        cols = [columns.index((arm, s)) for s in seeds]
        dist = distribution[:, cols].mean(axis=1) if distribution is not None else None
        return float(np.mean([points[arm, s] for s in seeds])), dist

    summary = []
    for arm, seeds in by_arm.items():
        point, dist = seed_mean(arm, sorted(seeds))
        _, sd = mean_sd([points[arm, s] for s in seeds])
        if dist is not None:
            low, high = stats.percentile_interval(dist, args.ci)
        elif len(seeds) == 1:  # evaluate.py's own interval of this one run
            row = next(iter(seeds.values()))["row"]
            low, high = row.get(f"{metric}_ci_low", math.nan), row.get(f"{metric}_ci_high", math.nan)
        else:
            low = high = math.nan
        summary.append({"arm": arm, "metric": metric, "n_seeds": len(seeds), "test": point, "test_sd": sd,
                        "ci_low": float(low), "ci_high": float(high), "n_images": n_images, "n_patients": n_patients})

    paired = []
    if distribution is None:
        return summary, paired
    binary = len(loaded[columns[0]][3]) == 2 and 0 < (targets == 1).sum() < len(targets)  # DeLong needs both
    arms = list(by_arm)  # paper order (discover_runs sorts the runs)
    for k, reference in enumerate(arms):
        for arm in arms[k + 1:]:  # every pair once: the later arm minus the earlier one
            seeds = sorted(set(by_arm[reference]) & set(by_arm[arm]))
            if not seeds:
                continue
            arm_point, arm_dist = seed_mean(arm, seeds)
            ref_point, ref_dist = seed_mean(reference, seeds)
            low, high = stats.percentile_interval(arm_dist - ref_dist, args.ci)
            _, diff_sd = mean_sd([points[arm, s] - points[reference, s] for s in seeds])
            common = {"reference": reference, "arm": arm, "n_seeds": len(seeds), "n_images": n_images,
                      "n_patients": n_patients}
            paired.append({**common, "metric": metric, "method": "paired bootstrap over patients",
                           "arm_value": arm_point, "reference_value": ref_point,
                           "difference": arm_point - ref_point, "ci_low": float(low), "ci_high": float(high),
                           "p_value": stats.bootstrap_p_value(arm_dist - ref_dist), "difference_sd": diff_sd})
            if binary:  # DeLong on the positive class's probability (column 1)
                scores = {a: np.stack([loaded[a, s][1][:, 1] for s in seeds]) for a in (arm, reference)}
                test = stats.delong_test(targets == 1, scores[arm], scores[reference], ci=args.ci)
                _, auc_sd = mean_sd([metrics.binary_auroc(targets == 1, scores[arm][i])
                                     - metrics.binary_auroc(targets == 1, scores[reference][i])
                                     for i in range(len(seeds))])
                paired.append({**common, "metric": "auroc", "method": "DeLong", "arm_value": test["auroc_a"],
                               "reference_value": test["auroc_b"], "difference": test["difference"],
                               "ci_low": test["ci_low"], "ci_high": test["ci_high"], "p_value": test["p_value"],
                               "difference_sd": auc_sd})
    return summary, paired


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


def test_frames(runs, targets, metrics, args, notes=None):
    """tables/test_summary.csv and tables/paired.csv (%), one test_comparisons() per (target,
    train fraction, checkpoint), in paper order."""
    summary_rows, paired_rows = [], []
    for target in targets:
        for fraction in sorted({r["fraction"] for r in runs if r["target"] == target}):
            for kind in CHECKPOINTS:
                group = [(r, r["evals"][kind]) for r in runs
                         if r["target"] == target and r["fraction"] == fraction and kind in r["evals"]]
                if group:
                    summary, paired = test_comparisons(group, metrics[target], target, args, notes)
                    keys = {"target": target, "train_fraction": fraction, "checkpoint": kind}
                    summary_rows += [keys | row for row in summary]
                    paired_rows += [keys | row for row in paired]
    summary = pd.DataFrame(summary_rows, columns=["target", "arm", "train_fraction", "checkpoint", "metric", "n_seeds",
                                                  "test", "test_sd", "ci_low", "ci_high", "n_images", "n_patients"])
    paired = pd.DataFrame(paired_rows, columns=[
        "target", "train_fraction", "checkpoint", "arm", "reference", "metric", "method", "n_seeds", "n_images",
        "n_patients", "arm_value", "reference_value", "difference", "ci_low", "ci_high", "p_value", "difference_sd"])
    for frame, columns in ((summary, ["test", "test_sd", "ci_low", "ci_high"]),
                           (paired, ["arm_value", "reference_value", "difference", "ci_low", "ci_high",
                                     "difference_sd"])):
        frame[columns] = 100 * frame[columns]
    # Holm within each family: a target's comparisons at one train fraction and checkpoint, by method
    family = ["target", "train_fraction", "checkpoint", "method"]
    paired.insert(paired.columns.get_loc("p_value") + 1, "p_holm",
                  paired.groupby(family, sort=False)["p_value"].transform(stats.holm) if len(paired) else [])
    return summary, paired


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
                row |= {prefix: values.get("test", math.nan), f"{prefix}_sd": values.get("test_sd", math.nan),
                        f"{prefix}_ci_low": values.get("ci_low", math.nan),
                        f"{prefix}_ci_high": values.get("ci_high", math.nan)}
            rows.append(row)
    table = pd.DataFrame(rows, columns=[
        "target", "arm", "metric", "train", "val", "epoch", "n_seeds", "train_sd", "val_sd", "test", "test_ci_low",
        "test_ci_high", "test_sd", "test_last", "test_last_ci_low", "test_last_ci_high", "test_last_sd", "n_test",
        "train_fraction", "n_test_patients"])
    for column in ("epoch", "n_test", "n_test_patients"):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype("Int64")
    return table


CURVE_MEASURES = ("best_val", "epochs_to_95", "val_curve_mean", "max_drop", "tail_sd", "train_epochs_to_95",
                  "train_late_gain")


def convergence_frame(at_main):
    """tables/convergence.csv: per target and arm (largest fraction), mean and sd across seeds of the
    curve measures: convergence and stability of the validation curve, convergence of the training curve."""
    rows = []
    for (target, arm), seeds in at_main.groupby(["target", "arm"], sort=False):
        row = {"target": target, "arm": arm, "train_fraction": seeds["train_fraction"].iloc[0],
               "metric": seeds["metric"].iloc[0], "n_seeds": len(seeds), "epochs": seeds["epoch"].max(),
               "best_epoch": seeds["best_epoch"].mean()}
        for column in CURVE_MEASURES:
            row[column], row[f"{column}_sd"] = mean_sd(seeds[column])
        rows.append(row)
    return pd.DataFrame(rows, columns=["target", "arm", "train_fraction", "metric", "n_seeds", "epochs", "best_epoch",
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
                     "test_ci_high": getattr(r, f"{prefix}_ci_high"), "n_seeds": r.n_seeds})
    return pd.DataFrame(rows, columns=["target", "arm", "metric", "paper_train", "paper_val", "train", "train_sd", "val",
                                       "val_sd", "val_minus_paper", "checkpoint", "test", "test_sd", "test_ci_low",
                                       "test_ci_high", "n_seeds"])


def rankings_frame(comparison):
    """tables/rankings.csv: per target, the arms best first (ties at one decimal joined by '='): the
    paper's validation, this run's last-epoch validation and its test values (arms not run left out)."""
    rows = []
    for target, arms in comparison.groupby("target", sort=False):
        by_arm = arms.set_index("arm")
        rows.append({"target": target, "paper_val": ranking(by_arm["paper_val"].to_dict()),
                     "val": ranking(by_arm["val"].to_dict()), "test": ranking(by_arm["test"].to_dict())})
    return pd.DataFrame(rows, columns=["target", "paper_val", "val", "test"])
