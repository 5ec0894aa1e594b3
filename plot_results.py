"""Figures, tables and a one-page report of the study, from the CSV/JSON files of the runs.

Reads only files that earlier stages wrote, never checkpoints. Runs are found by walking
OUT/finetune/: every folder OUT/finetune/<target>/<arm>/[<anything>/]metrics.csv is one run of
that target and arm, its seed and train fraction read from its args.json (args.seed,
args.train_fraction; else from a folder name like frac0.1_seed2; else seed 0, fraction 1):
  OUT/finetune/<target>/<arm>/<run>/metrics.csv   per-epoch train/val rows (finetune_target.py)
  OUT/finetune/<target>/<arm>/<run>/args.json     seed, train fraction, `meta.headline_metric`
  OUT/eval/**/metrics.csv, predictions.csv         test results of each run's best.pt / last.pt
                                                  (evaluate.py; matched to runs by their checkpoint path)
  OUT/manifests/<target>.json                     split sizes (optional)
and writes (values in %, differences in percentage points):
  OUT/figures/<target>.png              training | validation headline metric vs epoch, arms overlaid
                                        (mean over seeds, band = +-1 sd across seeds)
  OUT/figures/<target>_loss.png         the same for the loss (--loss-plots, on by default)
  OUT/figures/learning_curves.png       all targets in one grid (rows = targets, cols = train/val)
  OUT/figures/forest.png                paired arm differences on the test split with 95 % CIs
  OUT/figures/label_efficiency.png      test metric vs train fraction, per arm (with > 1 fraction)
  OUT/tables/runs.csv                   one row per run: target, arm, train_fraction, seed, metric, epoch,
                                        train, val, best_val, best_epoch, epochs_to_95, val_auc,
                                        test_best, test_best_ci_low, test_best_ci_high, test_last,
                                        test_last_ci_low, test_last_ci_high, n_test, run
  OUT/tables/test_summary.csv           target, arm, train_fraction, checkpoint, metric, n_seeds, test,
                                        test_sd, ci_low, ci_high, n_images, n_patients
  OUT/tables/table2.csv                 target, arm, metric, train, val, epoch, n_seeds, train_sd, val_sd,
                                        test, test_ci_low, test_ci_high, test_sd, test_last,
                                        test_last_ci_low, test_last_ci_high, test_last_sd, n_test, train_fraction
  OUT/tables/table2.md                  laid out like the paper's Table 2, + held-out test mean [95 % CI]
  OUT/tables/paired.csv                 target, train_fraction, checkpoint, arm, reference, metric, method,
                                        n_seeds, n_images, n_patients, arm_value, reference_value,
                                        difference, ci_low, ci_high, p_value, difference_sd
  OUT/tables/convergence.csv            target, arm, train_fraction, metric, n_seeds, best_val, best_val_sd,
                                        best_epoch, epochs_to_95, epochs_to_95_sd, val_auc, val_auc_sd
  OUT/report.md                         one page tying the figures and tables together

Statistics. Test values are the mean over seeds; "sd" is the standard deviation across seeds
(the training noise); the 95 % CI is a percentile bootstrap over test *patients* (every image
of a drawn patient comes along) of that seed-mean, i.e. the test-sampling noise (--bootstrap
resamples, --seed). Paired comparisons: every arm against each --reference arm (IN and
Domain_RI; Domain_RI - IN is listed once) on the same test images and seeds: the difference
(arm - reference, mean over seeds, sd across seeds) of the headline metric with a
paired patient bootstrap CI and two-sided p-value; for binary targets also DeLong's test of the
AUROC difference (images as independent, as DeLong assumes; with several seeds on the
seed-averaged AUROC). Multi-class macro one-vs-rest AUROC has no DeLong variance, so multi-class
targets get the bootstrap of the headline metric only. Convergence: the first epoch whose
validation value reaches 95 % of the run's best, and the area under the validation curve
normalised by the epoch span (the curve's mean height; see metrics.convergence). Table 2, the
curves, the forest plot and convergence use each target's largest train fraction (normally 1).

Commands to paste:
  # after the CPU demo or the full study (study.sh writes everything under OUT)
  python plot_results.py --runs OUT --out OUT
  # another metric column for every target instead of the paper's headline metrics
  python plot_results.py --runs OUT --out OUT/balanced --metric balanced_accuracy
"""
import argparse
import json
import math
import os
import re
from pathlib import Path, PurePath

import numpy as np
import pandas as pd

import datasets
import metrics as metrics_lib

# Paper order (Section 5.1): D1..D5 with the metric Table 2 reports for each (5.3: accuracy for
# D1-D3, Cohen kappa for the graded eye data sets D4-D5). Kept local on purpose: this script
# reads files, not the data set registry.
TARGETS = {  # key -> (paper label, readable name, domain source name, headline metric)
    "shenzhen": ("D1", "Shenzhen CXR", "CXR", "accuracy"),
    "covid19_radiography": ("D2", "COVID-19 Radiography", "CXR", "accuracy"),
    "kather2016": ("D3", "Kather Texture 2016", "HWSI", "accuracy"),
    "messidor": ("D4", "Messidor", "EFI", "kappa"),
    "deepdrid": ("D5", "DeepDRiD", "EFI", "kappa"),
}
ARMS = ["IN", "Domain_RI", "Domain_IN", "All_RI", "All_IN"]  # paper order (Table 2 columns)
ARM_HEADERS = {"IN": "IN", "Domain_RI": "Dom RI", "Domain_IN": "Dom IN", "All_RI": "ALL RI", "All_IN": "ALL IN"}
# Fixed colour and marker per arm, so an arm looks the same in every figure.
ARM_STYLES = {
    "IN": ("tab:blue", "o"),
    "Domain_RI": ("tab:orange", "s"),
    "Domain_IN": ("tab:green", "^"),
    "All_RI": ("tab:red", "D"),
    "All_IN": ("tab:purple", "v"),
}
EXTRA_STYLES = [("tab:brown", "P"), ("tab:pink", "X"), ("tab:olive", "*"), ("tab:cyan", "h"), ("tab:gray", "<")]
METRIC_LABELS = {
    "accuracy": "Accuracy",
    "kappa": "Kappa Score",
    "balanced_accuracy": "Balanced accuracy",
    "qwk": "Quadratic kappa",
    "auroc": "AUROC",
    "map": "mAP",
}
SPLITS = [("train", "Training"), ("val", "Validation")]
CHECKPOINTS = ("best", "last")  # evaluate.py output per run: best-validation and last-epoch checkpoint
CONVERGENCE = 0.95              # "epochs to reach 95 % of the arm's best validation metric"


def get_args_parser():
    parser = argparse.ArgumentParser(description="Figures, tables and report.md from the study's CSVs")
    # Data
    parser.add_argument("--runs", type=Path, required=True,
                        help="study output folder OUT holding finetune/<target>/<arm>/.../metrics.csv "
                             "(and optionally eval/ and manifests/)")
    parser.add_argument("--metric", type=str, default="auto",
                        help="metric column to plot and tabulate: 'auto' = the paper's headline metric per "
                             "target (accuracy D1-D3, kappa D4-D5, else args.json meta.headline_metric), "
                             "or a column name such as accuracy, kappa, balanced_accuracy, qwk, auroc")
    # Statistics
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples of test patients for CIs and paired tests (>= 1000 to report)")
    parser.add_argument("--ci", type=metrics_lib.ci_level, default=0.95,
                        help="confidence level of the intervals, in (0, 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    parser.add_argument("--reference", type=str, nargs="+", default=["IN", "Domain_RI"],
                        help="arms every other arm is compared with (paired tests, forest plot)")
    # Output
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder; figures/, tables/ and report.md are written inside it")
    parser.add_argument("--dpi", type=int, default=120, help="figure resolution in dots per inch (72-300)")
    parser.add_argument("--loss-plots", action=argparse.BooleanOptionalAction, default=True,
                        help="also write figures/<target>_loss.png (training | validation loss)")
    return parser


# --- discovery and reading -------------------------------------------------------------------

def paper_sorted(names, order):
    """Known names in `order`, then the unknown ones sorted."""
    names = set(names)
    return [n for n in order if n in names] + sorted(names - set(order))


def read_json(path):
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(value, dict):
        raise ValueError(f"{path}: not a JSON object")
    return value


def read_csv(path):
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read CSV ({err})") from err


def run_settings(run_dir):
    """(seed, train fraction) of a run: args.json, else the folder name (frac<F>_seed<S>), else (0, 1.0)."""
    args = {}
    if (run_dir / "args.json").is_file():
        args = read_json(run_dir / "args.json").get("args") or {}
    seed = re.search(r"seed(\d+)", run_dir.name)
    fraction = re.search(r"frac([0-9.]+)", run_dir.name)
    return (int(args.get("seed", seed.group(1) if seed else 0)),
            float(args.get("train_fraction", fraction.group(1) if fraction else 1.0)))


def discover_runs(runs_dir):
    """One dict per OUT/finetune/<target>/<arm>/[...]/metrics.csv: target, arm, seed, fraction, dir, key."""
    finetune = Path(runs_dir) / "finetune"
    runs = []
    for csv_path in sorted(finetune.rglob("metrics.csv")):
        rel = csv_path.parent.relative_to(finetune)
        if len(rel.parts) < 2:
            continue
        seed, fraction = run_settings(csv_path.parent)
        runs.append({"target": rel.parts[0], "arm": rel.parts[1], "seed": seed, "fraction": fraction,
                     "dir": csv_path.parent, "key": rel.as_posix(), "evals": {}})
    if not runs:
        raise ValueError(f"no metrics.csv under {finetune}/*/*/ — run finetune_target.py first")
    target_order = paper_sorted({r["target"] for r in runs}, TARGETS)
    arm_order = paper_sorted({r["arm"] for r in runs}, ARMS)
    return sorted(runs, key=lambda r: (target_order.index(r["target"]), arm_order.index(r["arm"]),
                                       r["fraction"], r["seed"], r["key"]))


def headline_metric(target, run_dirs):
    """Table 2's metric for a target: the paper's for D1-D5, else `meta.headline_metric` of its runs."""
    if target in TARGETS:
        return TARGETS[target][3]
    for run_dir in run_dirs:
        if (run_dir / "args.json").is_file():
            meta = read_json(run_dir / "args.json").get("meta") or {}
            if meta.get("headline_metric"):
                return str(meta["headline_metric"])
    return "accuracy"


def read_curves(csv_path, metric):
    """Per-epoch rows of one run: columns epoch, split, value (metric as a fraction) and loss.

    A resumed run may log an epoch twice; the last row for an (epoch, split) wins.
    """
    frame = read_csv(csv_path)
    missing = [c for c in ("epoch", "split", metric) if c not in frame.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {missing} (has {list(frame.columns)}); "
                         f"pick another with --metric")
    curves = pd.DataFrame({
        "epoch": pd.to_numeric(frame["epoch"], errors="coerce"),
        "split": frame["split"].astype(str).str.strip(),
        "value": pd.to_numeric(frame[metric], errors="coerce"),
        "loss": pd.to_numeric(frame["loss"], errors="coerce") if "loss" in frame.columns else math.nan,
    })
    if curves["epoch"].isna().any():
        raise ValueError(f"{csv_path}: column 'epoch' has non-numeric values")
    curves = curves.drop_duplicates(["epoch", "split"], keep="last").sort_values("epoch", kind="stable")
    if not (curves["split"] == "val").any():
        raise ValueError(f"{csv_path}: no rows with split == 'val' (splits found: {sorted(set(curves['split']))})")
    return curves.reset_index(drop=True)


def last_epoch_row(curves):
    """(last validation epoch, train value there, val value there), values as fractions (NaN if absent)."""
    epoch = int(curves.loc[curves["split"] == "val", "epoch"].max())
    at_epoch = curves[curves["epoch"] == epoch].set_index("split")["value"]
    return epoch, float(at_epoch.get("train", math.nan)), float(at_epoch.get("val", math.nan))


def eval_run_key(checkpoint, eval_rel):
    """(run key under finetune/, checkpoint kind) of an evaluate.py metrics.csv.

    From the checkpoint path it names (…/finetune/<run key>/<kind>.pt, wherever OUT now lives),
    else from where it lies: eval/<run key>/<kind>/ (the study's layout) or eval/<run key>/."""
    parts = PurePath(checkpoint).parts
    if "finetune" in parts[:-1]:
        start = len(parts) - 1 - parts[::-1].index("finetune")
        return "/".join(parts[start + 1:-1]), PurePath(checkpoint).stem
    if eval_rel.name in CHECKPOINTS:
        return eval_rel.parent.as_posix(), eval_rel.name
    stem = PurePath(checkpoint).stem
    return eval_rel.as_posix(), stem if stem in CHECKPOINTS else "best"


def attach_evals(runs_dir, runs):
    """run['evals'][kind] = {'row': the test row of evaluate.py's metrics.csv, 'predictions': path or None}."""
    eval_dir = Path(runs_dir) / "eval"
    by_key = {run["key"]: run for run in runs}
    for csv_path in sorted(eval_dir.rglob("metrics.csv")):
        frame = read_csv(csv_path)
        if "split" in frame.columns:
            frame = frame[frame["split"].astype(str).str.strip() == "test"]
        if frame.empty:
            continue
        row = frame.iloc[-1]
        key, kind = eval_run_key(str(row.get("checkpoint", "")), csv_path.parent.relative_to(eval_dir))
        if key in by_key:
            predictions = csv_path.parent / "predictions.csv"
            by_key[key]["evals"][kind] = {"row": row, "predictions": predictions if predictions.is_file() else None}


def read_predictions(path):
    """predictions.csv -> image-sorted frame + (probs (N, C), targets (N,), classes); multi-class only."""
    frame = read_csv(path)
    classes = [c[len("prob_"):] for c in frame.columns if c.startswith("prob_")]
    missing = [c for c in ("image", "patient", "target") if c not in frame.columns]
    if missing or not classes:
        raise ValueError(f"{path}: missing column(s) {missing or ['prob_<class>']} (has {list(frame.columns)})")
    frame = frame.sort_values("image", kind="stable").reset_index(drop=True)
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(frame["target"].astype(str)) - set(index))
    if unknown:
        raise ValueError(f"{path}: targets {unknown[:3]} are not among the prob_ columns (multi-label predictions?)")
    targets = frame["target"].astype(str).map(index).to_numpy(dtype=np.int64)
    probs = frame[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)
    return frame, probs, targets, classes


def split_sizes(runs_dir, target):
    """{'train': n, 'val': n, 'test': n} images from OUT/manifests/<target>.json counts, or None."""
    path = Path(runs_dir) / "manifests" / f"{target}.json"
    try:
        counts = json.loads(path.read_text())["counts"]
        return {s: sum(int(v) for v in counts.get(s, {}).values()) for s in ("train", "val", "test")}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
        return None


# --- labels, styles, atomic writes --------------------------------------------------------------

def target_title(target):
    if target in TARGETS:
        return f"{TARGETS[target][0]} {TARGETS[target][1]}"
    return target


def short_name(target):
    return TARGETS.get(target, (target,))[0]


def metric_label(metric):
    return METRIC_LABELS.get(metric, metric)


def arm_style(arm, extra_arms):
    if arm in ARM_STYLES:
        return ARM_STYLES[arm]
    return EXTRA_STYLES[extra_arms.index(arm) % len(EXTRA_STYLES)]


def arm_legend_label(target, arm):
    """Name the domain source model where the paper does (5.3: 'EFI_IN and EFI_RI')."""
    if target in TARGETS and arm.startswith("Domain_"):
        return f"{arm} ({TARGETS[target][2]}_{arm.split('_', 1)[1]})"
    return arm


def fraction_label(fraction):
    return f"{fraction:g}"


def save_figure(fig, path, dpi):
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)


# --- statistics over runs ----------------------------------------------------------------------

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


def test_comparisons(group, metric, target, args):
    """Test results of one (target, train fraction, checkpoint kind): the runs' evaluations of
    every arm and seed, bootstrapped together on the same patient resamples.

    Returns (summary rows per arm, paired rows). Without predictions.csv files (or with arms
    tested on different images) the CI comes from evaluate.py's metrics.csv for a single seed.
    """
    by_arm = {}
    for run, evaluation in group:
        by_arm.setdefault(run["arm"], {})[run["seed"]] = evaluation
    columns = [(arm, seed) for arm, seeds in by_arm.items() for seed in sorted(seeds)]
    points = {(arm, seed): number(by_arm[arm][seed]["row"].get(metric)) for arm, seed in columns}

    # --- the seeds' predictions on the same images, or none
    loaded = None
    if args.bootstrap > 0 and metric in metrics_lib.MULTICLASS_METRICS and all(
            by_arm[a][s]["predictions"] for a, s in columns):
        loaded = {c: read_predictions(by_arm[c[0]][c[1]]["predictions"]) for c in columns}
        first = loaded[columns[0]][0]
        if any(not frame["image"].equals(first["image"]) for frame, *_ in loaded.values()):
            print(f"note: {target}: the runs were tested on different images; no paired comparisons")
            loaded = None
    distribution = None
    if loaded:
        targets = loaded[columns[0]][2]
        probs = [loaded[c][1] for c in columns]
        points = {c: metrics_lib.multiclass_metrics(p, targets, (metric,))[metric] for c, p in zip(columns, probs)}
        patients = first["patient"].astype(str).to_numpy()
        distribution = metrics_lib.bootstrap_distribution(
            lambda rows: [metrics_lib.multiclass_metrics(p[rows], targets[rows], (metric,))[metric] for p in probs],
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
            low, high = metrics_lib.percentile_interval(dist, args.ci)
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
    done = set()
    for reference in args.reference:
        for arm in by_arm:
            seeds = sorted(set(by_arm.get(reference, {})) & set(by_arm[arm]))
            if arm == reference or not seeds or (reference, arm) in done:  # B - A is A - B negated
                continue
            done.add((arm, reference))
            arm_point, arm_dist = seed_mean(arm, seeds)
            ref_point, ref_dist = seed_mean(reference, seeds)
            low, high = metrics_lib.percentile_interval(arm_dist - ref_dist, args.ci)
            _, diff_sd = mean_sd([points[arm, s] - points[reference, s] for s in seeds])
            common = {"reference": reference, "arm": arm, "n_seeds": len(seeds), "n_images": n_images,
                      "n_patients": n_patients}
            paired.append({**common, "metric": metric, "method": "paired bootstrap over patients",
                           "arm_value": arm_point, "reference_value": ref_point,
                           "difference": arm_point - ref_point, "ci_low": float(low), "ci_high": float(high),
                           "p_value": metrics_lib.bootstrap_p_value(arm_dist - ref_dist), "difference_sd": diff_sd})
            if binary:  # DeLong on the positive class's probability (column 1)
                scores = {a: np.stack([loaded[a, s][1][:, 1] for s in seeds]) for a in (arm, reference)}
                test = metrics_lib.delong_test(targets == 1, scores[arm], scores[reference], ci=args.ci)
                _, auc_sd = mean_sd([metrics_lib.binary_auroc(targets == 1, scores[arm][i])
                                     - metrics_lib.binary_auroc(targets == 1, scores[reference][i])
                                     for i in range(len(seeds))])
                paired.append({**common, "metric": "auroc", "method": "DeLong", "arm_value": test["auroc_a"],
                               "reference_value": test["auroc_b"], "difference": test["difference"],
                               "ci_low": test["ci_low"], "ci_high": test["ci_high"], "p_value": test["p_value"],
                               "difference_sd": auc_sd})
    return summary, paired


# --- the tables as frames --------------------------------------------------------------------

def runs_frame(runs, metrics):
    """tables/runs.csv: one row per run — last epoch, convergence, test values of both checkpoints (%)."""
    rows = []
    for run in runs:
        metric = metrics[run["target"]]
        epoch, train, val = last_epoch_row(run["curves"])
        val_rows = run["curves"][run["curves"]["split"] == "val"]
        conv = metrics_lib.convergence(val_rows["epoch"], val_rows["value"], CONVERGENCE)
        row = {"target": run["target"], "arm": run["arm"], "train_fraction": run["fraction"], "seed": run["seed"],
               "metric": metric, "epoch": epoch, "train": 100 * train, "val": 100 * val,
               "best_val": 100 * conv["best"], "best_epoch": conv["best_epoch"],
               "epochs_to_95": conv["epochs_to_target"], "val_auc": 100 * conv["curve_auc"]}
        for kind in CHECKPOINTS:
            result = run["evals"].get(kind, {}).get("row", {})
            row |= {f"test_{kind}{suffix}": 100 * number(result.get(f"{metric}{suffix}"))
                    for suffix in ("", "_ci_low", "_ci_high")}
        n_test = [number(e["row"].get("n")) for e in run["evals"].values()]
        rows.append(row | {"n_test": max(n_test) if n_test else None, "run": run["key"]})
    frame = pd.DataFrame(rows)
    frame["n_test"] = pd.to_numeric(frame["n_test"]).astype("Int64")
    return frame


def test_frames(runs, targets, metrics, args):
    """tables/test_summary.csv and tables/paired.csv (%), one test_comparisons() per (target,
    train fraction, checkpoint), in paper order."""
    summary_rows, paired_rows = [], []
    for target in targets:
        for fraction in sorted({r["fraction"] for r in runs if r["target"] == target}):
            for kind in CHECKPOINTS:
                group = [(r, r["evals"][kind]) for r in runs
                         if r["target"] == target and r["fraction"] == fraction and kind in r["evals"]]
                if group:
                    summary, paired = test_comparisons(group, metrics[target], target, args)
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
                row |= {prefix: values.get("test", math.nan), f"{prefix}_sd": values.get("test_sd", math.nan),
                        f"{prefix}_ci_low": values.get("ci_low", math.nan),
                        f"{prefix}_ci_high": values.get("ci_high", math.nan)}
            rows.append(row)
    table = pd.DataFrame(rows, columns=[
        "target", "arm", "metric", "train", "val", "epoch", "n_seeds", "train_sd", "val_sd", "test", "test_ci_low",
        "test_ci_high", "test_sd", "test_last", "test_last_ci_low", "test_last_ci_high", "test_last_sd", "n_test",
        "train_fraction"])
    for column in ("epoch", "n_test"):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype("Int64")
    return table


def convergence_frame(at_main):
    """tables/convergence.csv: per target and arm (largest fraction), mean and sd across seeds."""
    rows = []
    for (target, arm), seeds in at_main.groupby(["target", "arm"], sort=False):
        row = {"target": target, "arm": arm, "train_fraction": seeds["train_fraction"].iloc[0],
               "metric": seeds["metric"].iloc[0], "n_seeds": len(seeds), "best_epoch": seeds["best_epoch"].mean()}
        for column in ("best_val", "epochs_to_95", "val_auc"):
            row[column], row[f"{column}_sd"] = mean_sd(seeds[column])
        rows.append(row)
    return pd.DataFrame(rows, columns=["target", "arm", "train_fraction", "metric", "n_seeds", "best_val",
                                       "best_val_sd", "best_epoch", "epochs_to_95", "epochs_to_95_sd", "val_auc",
                                       "val_auc_sd"])


# --- figures -----------------------------------------------------------------------------------

def plot_panel(ax, runs, split, column, scale, styles, labels):
    """One training or validation panel: seed-mean `column` (value or loss) x scale vs epoch, one
    line per arm, a +-1 sd band where there are several seeds."""
    from matplotlib.ticker import MaxNLocator

    for arm, curves in runs.items():
        rows = curves[curves["split"] == split]
        if rows.empty:
            continue
        colour, marker = styles[arm]
        ax.plot(rows["epoch"], rows[column] * scale, color=colour, marker=marker, markersize=5,
                linewidth=1.6, markevery=max(1, len(rows) // 12), label=labels[arm])
        sd = rows[f"{column}_sd"] * scale
        if sd.notna().any():
            ax.fill_between(rows["epoch"], rows[column] * scale - sd, rows[column] * scale + sd, color=colour,
                            alpha=0.18, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Epoch")
    ax.grid(True, alpha=0.35)


def legend_handles(arms, styles, labels):
    from matplotlib.lines import Line2D

    return [Line2D([], [], color=styles[a][0], marker=styles[a][1], markersize=5, linewidth=1.6, label=labels[a])
            for a in arms]


def seeds_note(n_seeds):
    return f" (mean of {n_seeds} seeds, band ±1 sd)" if n_seeds > 1 else ""


def plot_target(target, runs, metric, column, out_path, dpi, extra_arms, n_seeds):
    """Paper Figs. 3-4 for one target: training | validation panels, the arms overlaid."""
    import matplotlib.pyplot as plt

    styles = {arm: arm_style(arm, extra_arms) for arm in runs}
    labels = {arm: arm_legend_label(target, arm) for arm in runs}
    is_loss = column == "loss"
    y_label = "Loss" if is_loss else f"{metric_label(metric)} (%)"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    for ax, (split, split_name) in zip(axes, SPLITS):
        plot_panel(ax, runs, split, column, 1.0 if is_loss else 100.0, styles, labels)
        ax.set_title(split_name)
        ax.set_ylabel(y_label)
    fig.suptitle(f"{target_title(target)} — {'loss' if is_loss else metric}{seeds_note(n_seeds)}", fontsize=13)
    # One shared legend below the panels: it never hides a curve.
    fig.legend(handles=legend_handles(list(runs), styles, labels), loc="outside lower center",
               ncol=min(len(runs), 5), frameon=False)
    save_figure(fig, out_path, dpi)


def plot_overview(all_runs, metrics, out_path, dpi, extra_arms, n_seeds):
    """All targets in one grid (rows = targets, cols = training | validation), the paper-style overview."""
    import matplotlib.pyplot as plt

    arms = paper_sorted({a for runs in all_runs.values() for a in runs}, ARMS)
    styles = {arm: arm_style(arm, extra_arms) for arm in arms}
    labels = {arm: arm for arm in arms}
    fig, axes = plt.subplots(len(all_runs), 2, figsize=(11, 1.2 + 3.0 * len(all_runs)),
                             layout="constrained", squeeze=False)
    for row, (target, runs) in enumerate(all_runs.items()):
        for ax, (split, split_name) in zip(axes[row], SPLITS):
            plot_panel(ax, runs, split, "value", 100.0, styles, labels)
            ax.set_title(f"{target_title(target)} — {split_name.lower()}", fontsize=11)
            ax.set_ylabel(f"{metric_label(metrics[target])} (%)")
    if n_seeds > 1:
        fig.suptitle(f"Learning curves{seeds_note(n_seeds)}", fontsize=12)
    fig.legend(handles=legend_handles(arms, styles, labels), loc="outside upper center",
               ncol=min(len(arms), 5), frameon=False)
    save_figure(fig, out_path, dpi)


def plot_forest(paired, out_path, dpi, extra_arms, ci):
    """Arm - reference differences of the headline metric (test, best checkpoint) with CIs, a panel per target."""
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(paired["target"]))
    heights = [0.9 + 0.32 * (paired["target"] == t).sum() for t in targets]
    fig, axes = plt.subplots(len(targets), 1, figsize=(8.5, sum(heights) + 0.6), layout="constrained",
                             squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, target in zip(axes[:, 0], targets):
        rows = paired[paired["target"] == target].iloc[::-1]
        y = np.arange(len(rows))
        for yi, row in zip(y, rows.itertuples()):
            colour, marker = arm_style(row.arm, extra_arms)
            # a percentile interval need not contain the point estimate: clip, never a negative bar
            xerr = [[max(0.0, row.difference - row.ci_low)], [max(0.0, row.ci_high - row.difference)]]
            ax.errorbar(row.difference, yi, xerr=xerr,
                        color=colour, marker=marker, markersize=6, capsize=3, linewidth=1.5)
            p_text = fmt_p(row.p_value)
            ax.annotate(f"p {p_text}" if p_text.startswith("<") else f"p = {p_text}", (1.01, yi), xycoords=("axes fraction", "data"), va="center",
                        fontsize=8)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(y, [f"{r.arm} − {r.reference}" for r in rows.itertuples()], fontsize=9)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_title(f"{target_title(target)} — {metric_label(rows['metric'].iloc[0])}", fontsize=10, loc="left")
        ax.grid(True, axis="x", alpha=0.35)
    axes[-1, 0].set_xlabel(f"Difference on the test split (percentage points), {100 * ci:g} % CI "
                           f"(paired bootstrap over patients)")
    save_figure(fig, out_path, dpi)


def plot_label_efficiency(summary, metrics, out_path, dpi, extra_arms):
    """Test metric (best checkpoint, seed-mean, CI bars) against the train fraction, per arm, for the targets
    run at several fractions: where transfer should matter most."""
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(summary["target"]))
    ncols = min(3, len(targets))
    nrows = math.ceil(len(targets) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows + 0.5), layout="constrained",
                             squeeze=False)
    arms = paper_sorted(set(summary["arm"]), ARMS)
    for ax, target in zip(axes.flat, targets):
        rows = summary[summary["target"] == target]
        for i, (arm, points) in enumerate(rows.groupby("arm", sort=False)):
            points = points.sort_values("train_fraction")
            colour, marker = arm_style(arm, extra_arms)
            dodge = 10 ** (0.015 * (i - (rows["arm"].nunique() - 1) / 2))  # side by side on the log axis
            ax.errorbar(points["train_fraction"] * dodge, points["test"],
                        yerr=[(points["test"] - points["ci_low"]).clip(lower=0),
                              (points["ci_high"] - points["test"]).clip(lower=0)],
                        color=colour, marker=marker, markersize=5, capsize=3, linewidth=1.4, label=arm)
        fractions = sorted(set(rows["train_fraction"]))
        ax.set_xscale("log")
        ax.set_xticks(fractions, [fraction_label(f) for f in fractions])
        ax.minorticks_off()
        ax.set_title(target_title(target), fontsize=10)
        ax.set_xlabel("Fraction of the train split")
        ax.set_ylabel(f"Test {metric_label(metrics[target]).lower()} (%)")
        ax.grid(True, alpha=0.35)
    for ax in list(axes.flat)[len(targets):]:
        ax.axis("off")
    styles = {arm: arm_style(arm, extra_arms) for arm in arms}
    fig.legend(handles=legend_handles(arms, styles, {a: a for a in arms}), loc="outside upper center",
               ncol=min(len(arms), 5), frameon=False)
    save_figure(fig, out_path, dpi)


# --- tables ------------------------------------------------------------------------------------

def fmt(value, digits=1):
    return "n/a" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def fmt_mean(mean, sd=math.nan, low=math.nan, high=math.nan):
    """'81.2', '81.2 ± 1.3', '81.2 [72.0, 90.1]' or '81.2 ± 1.3 [72.0, 90.1]' (n/a when missing)."""
    if mean is None or pd.isna(mean):
        return "n/a"
    text = fmt(mean) + (f" ± {fmt(sd)}" if pd.notna(sd) else "")
    return text + (f" [{fmt(low)}, {fmt(high)}]" if pd.notna(low) and pd.notna(high) else "")


def fmt_p(p):
    return "n/a" if p is None or pd.isna(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def table2_markdown(table, table_arms, notes, ci, level="##"):
    """Paper Table 2: one block per metric (Accuracy (%), Kappa Score (%), ...), rows Dx Training/Validation,
    then the held-out test block: mean [CI] of the best-validation and the last checkpoint."""
    headers = [ARM_HEADERS.get(a, a) for a in table_arms]
    lines = [f"{level} Table 2. Model's performance at last epoch", ""]
    for metric, block in table.groupby("metric", sort=False):
        lines += [f"{level}# {metric_label(metric)} (%)", ""]
        rows = []
        for target, runs in block.groupby("target", sort=False):
            by_arm = runs.set_index("arm")
            for split, split_name in SPLITS:
                rows.append([target_title(target), split_name]
                            + [fmt_mean(by_arm.at[a, split], by_arm.at[a, f"{split}_sd"]) for a in table_arms])
        lines += markdown_table(["Dataset", ""] + headers, rows)
        block_notes = "; ".join(notes[t] for t in block["target"].unique())
        lines += ["", f"Values at each run's last logged epoch (mean ± sd across seeds where there are several); "
                      f"n/a = arm not run. {block_notes}.", ""]
    tested = table[table["test"].notna() | table["test_last"].notna()]
    if not tested.empty:
        lines += [f"{level}# Held-out test", ""]
        rows = []
        for target, runs in tested.groupby("target", sort=False):
            by_arm = table[table["target"] == target].set_index("arm")
            for prefix, name in (("test", "best-val checkpoint"), ("test_last", "last epoch")):
                rows.append([target_title(target), f"{metric_label(runs['metric'].iloc[0])} (%), {name}"]
                            + [fmt_mean(by_arm.at[a, prefix], by_arm.at[a, f"{prefix}_sd"],
                                        by_arm.at[a, f"{prefix}_ci_low"], by_arm.at[a, f"{prefix}_ci_high"])
                               for a in table_arms])
        lines += markdown_table(["Dataset", "Metric"] + headers, rows)
        sizes = "; ".join(f"{short_name(t)} n = {fmt(n, 0)}" for t, n in
                          tested.groupby("target", sort=False)["n_test"].max().items())
        spread = " ± sd across seeds" if (table["n_seeds"] > 1).any() else ""
        lines += ["", f"Test split (never used for training or model selection): mean over seeds{spread} "
                      f"[{100 * ci:g} % bootstrap CI over test patients]; {sizes}.", ""]
    return "\n".join(lines)


def epoch_note(target, epochs, sizes):
    epochs = sorted(set(epochs))
    span = str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}"
    text = " / ".join(f"{s} {n}" for s, n in sizes.items()) if sizes else None
    return f"{short_name(target)}: epoch {span}, " + (f"images {text}" if text else "split sizes unknown")


def report_markdown(table2_md, paired, convergence, summary, sizes, metrics, main_fraction, settings, args,
                    figures):
    """OUT/report.md: what was run, split sizes, Table 2 with test CIs, paired tests, convergence, figures."""
    lines = ["# Domain-aware transfer learning: study report", "", settings, "", "## Data", ""]
    rows = []
    for target in metrics:
        counts = sizes.get(target) or {}
        patients = summary.loc[summary["target"] == target, "n_patients"].dropna()
        rows.append([target_title(target), metric_label(metrics[target]),
                     *(fmt(counts.get(split), 0) for split in ("train", "val", "test")),
                     fmt(patients.max() if len(patients) else None, 0)])
    lines += markdown_table(["Target", "Headline metric", "Train images", "Val images", "Test images",
                             "Test patients"], rows)
    lines += ["", "Patient-level, stratified, seeded splits made once by prepare_data.py; every run of a target "
                  "is tested on the same test images, which are never used for training or model selection. "
                  "A train fraction < 1 takes a nested, stratified, patient-level subset of the train split.", ""]
    lines += [table2_md, ""]
    main_pairs = paired[(paired["checkpoint"] == "best")
                        & (paired["train_fraction"] == paired["target"].map(main_fraction))]
    if not main_pairs.empty:
        lines += ["## Paired comparisons (test split, best-validation checkpoint)", ""]
        delong = main_pairs[main_pairs["method"] == "DeLong"].set_index(["target", "arm", "reference"])
        rows = []
        for r in main_pairs[main_pairs["method"] != "DeLong"].itertuples():
            auroc = "n/a"
            if (r.target, r.arm, r.reference) in delong.index:
                d = delong.loc[(r.target, r.arm, r.reference)]
                auroc = f"{fmt(d['difference'])} [{fmt(d['ci_low'])}, {fmt(d['ci_high'])}], p {fmt_p(d['p_value'])}"
            rows.append([target_title(r.target), f"{r.arm} − {r.reference}", metric_label(r.metric),
                         f"{fmt(r.difference)} [{fmt(r.ci_low)}, {fmt(r.ci_high)}]", fmt_p(r.p_value), auroc])
        lines += markdown_table(["Target", "Comparison", "Metric", f"Difference (pp) [{100 * args.ci:g} % CI]", "p",
                                 "AUROC difference (pp), DeLong"], rows)
        lines += ["", f"Arm minus reference on the same test images and seeds (mean over seeds). Headline metric: "
                      f"paired bootstrap over test patients ({args.bootstrap} resamples, seed {args.seed}); AUROC "
                      "(binary targets only): DeLong's test, images as independent. No correction for multiple "
                      "comparisons. Every fraction and the last-epoch checkpoint: tables/paired.csv; "
                      "figure: figures/forest.png.", ""]
    if not convergence.empty:
        lines += ["## Convergence (validation curves)", ""]
        rows = [[target_title(r.target), r.arm, fmt_mean(r.best_val, r.best_val_sd),
                 fmt_mean(r.epochs_to_95, r.epochs_to_95_sd), fmt_mean(r.val_auc, r.val_auc_sd)]
                for r in convergence.itertuples()]
        lines += markdown_table(["Target", "Arm", "Best val (%)", "Epochs to 95 % of best", "Val AUC (%)"], rows)
        lines += ["", "Val AUC: area under the validation curve divided by the epoch span (the curve's mean "
                      "height); higher = better sooner. Mean ± sd across seeds. tables/convergence.csv.", ""]
    lines += ["## Figures", ""]
    lines += [f"- [{title}](figures/{name})" for name, title in figures]
    lines += ["- Confusion matrices and per-class precision/recall/F1: "
              "`eval/<target>/<arm>/<run>/{best,last}/confusion.png`, `per_class.csv`", ""]
    lines += ["Tables: tables/table2.{csv,md}, tables/test_summary.csv (every fraction and checkpoint), "
              "tables/paired.csv, tables/convergence.csv, tables/runs.csv (one row per run).", ""]
    return "\n".join(lines)


def main(args):
    if args.bootstrap < 0:
        raise ValueError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    # --- discover runs and read the curves
    runs = discover_runs(args.runs)
    attach_evals(args.runs, runs)
    targets = list(dict.fromkeys(r["target"] for r in runs))
    metrics = {t: (headline_metric(t, [r["dir"] for r in runs if r["target"] == t]) if args.metric == "auto"
                   else args.metric) for t in targets}
    for run in runs:
        run["curves"] = read_curves(run["dir"] / "metrics.csv", metrics[run["target"]])
    extra_arms = sorted({r["arm"] for r in runs} - set(ARMS))
    table_arms = ARMS + extra_arms  # every target lists every arm; arms without a run show n/a
    main_fraction = {t: max(r["fraction"] for r in runs if r["target"] == t) for t in targets}
    seeds = sorted({r["seed"] for r in runs})
    fractions = sorted({r["fraction"] for r in runs})
    print(f"{len(runs)} runs: {', '.join(f'{t} ({metrics[t]})' for t in targets)}; seeds {seeds}; "
          f"train fractions {[fraction_label(f) for f in fractions]}")

    # --- per run, per test group (bootstrap, paired tests), Table 2 and convergence at the largest fraction
    runs_table = runs_frame(runs, metrics)
    summary, paired = test_frames(runs, targets, metrics, args)
    at_main = runs_table[runs_table["train_fraction"] == runs_table["target"].map(main_fraction)]
    sizes = {target: split_sizes(args.runs, target) for target in targets}
    notes = {target: epoch_note(target, at_main.loc[at_main["target"] == target, "epoch"].tolist(), sizes[target])
             for target in targets}
    table = table2_frame(at_main, summary, table_arms, metrics, main_fraction)
    convergence = convergence_frame(at_main)

    # --- write the tables
    tables_dir = Path(args.out) / "tables"
    tables_dir.mkdir(parents=True, exist_ok=True)
    written = {"runs.csv": runs_table, "table2.csv": table, "convergence.csv": convergence}
    if not summary.empty:
        written |= {"test_summary.csv": summary, "paired.csv": paired}
    for name, frame in written.items():
        datasets.write_text_atomic(tables_dir / name, frame.round(4).to_csv(index=False))
    markdown = table2_markdown(table, table_arms, notes, args.ci)
    datasets.write_text_atomic(tables_dir / "table2.md", markdown + "\n")

    # --- figures (Agg: no display needed; set here so importing this file changes nothing)
    import matplotlib

    matplotlib.use("Agg")
    figures_dir = Path(args.out) / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    n_seeds = int(table["n_seeds"].max())
    curves = {}
    for target in targets:
        by_arm = {}
        for run in runs:
            if run["target"] == target and run["fraction"] == main_fraction[target]:
                by_arm.setdefault(run["arm"], []).append(run["curves"])
        curves[target] = {arm: mean_curves(by_arm[arm]) for arm in paper_sorted(by_arm, ARMS)}
    figures = [("learning_curves.png", "Learning curves, all targets")]
    for target, arm_curves in curves.items():
        plot_target(target, arm_curves, metrics[target], "value", figures_dir / f"{target}.png", args.dpi,
                    extra_arms, n_seeds)
        figures.append((f"{target}.png", f"{target_title(target)}: learning curves"))
        if args.loss_plots:
            plot_target(target, arm_curves, metrics[target], "loss", figures_dir / f"{target}_loss.png", args.dpi,
                        extra_arms, n_seeds)
    plot_overview(curves, metrics, figures_dir / "learning_curves.png", args.dpi, extra_arms, n_seeds)
    forest_rows = paired[(paired["checkpoint"] == "best") & (paired["method"] != "DeLong")
                         & (paired["train_fraction"] == paired["target"].map(main_fraction))]
    if not forest_rows.empty:
        plot_forest(forest_rows, figures_dir / "forest.png", args.dpi, extra_arms, args.ci)
        figures.append(("forest.png", "Paired arm differences on the test split (forest plot)"))
    efficiency = summary[summary["checkpoint"] == "best"]
    efficiency = efficiency[efficiency.groupby("target")["train_fraction"].transform("nunique") > 1]
    if not efficiency.empty:
        plot_label_efficiency(efficiency, metrics, figures_dir / "label_efficiency.png", args.dpi, extra_arms)
        figures.append(("label_efficiency.png", "Label efficiency: test metric vs train fraction"))

    # --- the report
    settings_file = Path(args.runs) / "study_settings.txt"
    settings = (f"Study settings: `{settings_file.read_text().strip()}`. " if settings_file.is_file() else "")
    settings += (f"{len(runs)} fine-tuning runs; seeds {', '.join(map(str, seeds))}; train fractions "
                 f"{', '.join(fraction_label(f) for f in fractions)}. Test values: "
                 f"{'mean over seeds ± sd across seeds' if len(seeds) > 1 else 'value'} "
                 f"[{100 * args.ci:g} % percentile bootstrap CI over test patients, {args.bootstrap} resamples].")
    report = report_markdown(table2_markdown(table, table_arms, notes, args.ci), paired, convergence, summary, sizes,
                             metrics, main_fraction, settings, args, figures)
    datasets.write_text_atomic(Path(args.out) / "report.md", report)

    print(f"wrote {', '.join(sorted(written))}, table2.md in {tables_dir}, {len(figures)} figures in "
          f"{figures_dir} and {Path(args.out) / 'report.md'}")
    print()
    print(markdown)


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except ValueError as err:
        raise SystemExit(str(err)) from None
