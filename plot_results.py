"""Learning curves (paper Figs. 3-4) and the last-epoch table (paper Table 2) from the run CSVs.

Reads only CSV/JSON files that earlier stages wrote, never checkpoints:
  OUT/finetune/<target>/<arm>/metrics.csv   per-epoch train/val rows (finetune_target.py)
  OUT/finetune/<target>/<arm>/args.json     `meta.headline_metric` for targets not listed below
  OUT/eval/<target>/<arm>/metrics.csv       held-out test metrics (evaluate.py; optional)
  OUT/manifests/<target>.json               split sizes for the table note (optional)
and writes:
  OUT/figures/<target>.png                  training | validation headline metric vs epoch, arms overlaid
  OUT/figures/<target>_loss.png             the same for the loss (--loss-plots, on by default)
  OUT/figures/learning_curves.png           all targets in one grid (rows = targets, cols = train/val)
  OUT/tables/table2.csv                     long form: target, arm, metric, train, val, epoch (values in %)
  OUT/tables/test_results.csv               target, arm, metric, test, n, checkpoint (only with eval files)
  OUT/tables/table2.md                      laid out like the paper's Table 2 (+ a held-out test block)

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
from pathlib import Path

import pandas as pd

import datasets

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


def get_args_parser():
    parser = argparse.ArgumentParser(description="Learning curves and Table 2 from the fine-tuning CSVs")
    # Data
    parser.add_argument("--runs", type=Path, required=True,
                        help="study output folder OUT holding finetune/<target>/<arm>/metrics.csv "
                             "(and optionally eval/ and manifests/)")
    parser.add_argument("--metric", type=str, default="auto",
                        help="metric column to plot and tabulate: 'auto' = the paper's headline metric per "
                             "target (accuracy D1-D3, kappa D4-D5, else args.json meta.headline_metric), "
                             "or a column name such as accuracy, kappa, balanced_accuracy, qwk, auroc")
    # Output
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder; figures/ and tables/ are written inside it")
    parser.add_argument("--dpi", type=int, default=120, help="figure resolution in dots per inch (72-300)")
    parser.add_argument("--loss-plots", action=argparse.BooleanOptionalAction, default=True,
                        help="also write figures/<target>_loss.png (training | validation loss)")
    return parser


# --- discovery and reading -------------------------------------------------------------------

def paper_sorted(names, order):
    """Known names in `order`, then the unknown ones sorted."""
    names = set(names)
    return [n for n in order if n in names] + sorted(names - set(order))


def discover_runs(runs_dir):
    """{target: {arm: run folder}} for every OUT/finetune/<target>/<arm>/metrics.csv, in paper order."""
    finetune = Path(runs_dir) / "finetune"
    found = {}
    for csv_path in sorted(finetune.glob("*/*/metrics.csv")):
        arm_dir = csv_path.parent
        found.setdefault(arm_dir.parent.name, {})[arm_dir.name] = arm_dir
    if not found:
        raise ValueError(f"no metrics.csv under {finetune}/*/*/ — run finetune_target.py first")
    return {t: {a: found[t][a] for a in paper_sorted(found[t], ARMS)} for t in paper_sorted(found, TARGETS)}


def headline_metric(target, arm_dirs):
    """Table 2's metric for a target: the paper's for D1-D5, else `meta.headline_metric` of its runs."""
    if target in TARGETS:
        return TARGETS[target][3]
    for arm_dir in arm_dirs.values():
        args_path = arm_dir / "args.json"
        if not args_path.is_file():
            continue
        try:
            meta = json.loads(args_path.read_text()).get("meta") or {}
        except (OSError, json.JSONDecodeError, AttributeError) as err:
            raise ValueError(f"{args_path}: not a readable JSON object ({err})") from err
        if meta.get("headline_metric"):
            return str(meta["headline_metric"])
    return "accuracy"


def read_csv(path):
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read CSV ({err})") from err


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


def read_test_result(csv_path, metric):
    """(test value as a fraction, n, checkpoint) from an evaluate.py metrics.csv, or None without a test row."""
    frame = read_csv(csv_path)
    if metric not in frame.columns:
        raise ValueError(f"{csv_path}: missing column '{metric}' (has {list(frame.columns)})")
    if "split" in frame.columns:
        frame = frame[frame["split"].astype(str).str.strip() == "test"]
    if frame.empty:
        return None
    row = frame.iloc[-1]
    n = pd.to_numeric(pd.Series([row.get("n", math.nan)]), errors="coerce").iloc[0]
    return (float(pd.to_numeric(pd.Series([row[metric]]), errors="coerce").iloc[0]),
            None if pd.isna(n) else int(n), str(row.get("checkpoint", "")))


def split_sizes(runs_dir, target):
    """'train n / val n / test n' from OUT/manifests/<target>.json counts, or None when unavailable."""
    path = Path(runs_dir) / "manifests" / f"{target}.json"
    try:
        counts = json.loads(path.read_text())["counts"]
        sizes = {s: sum(int(v) for v in counts.get(s, {}).values()) for s in ("train", "val", "test")}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
        return None
    return " / ".join(f"{s} {n}" for s, n in sizes.items())


# --- labels, styles, atomic writes --------------------------------------------------------------

def target_title(target):
    if target in TARGETS:
        return f"{TARGETS[target][0]} {TARGETS[target][1]}"
    return target


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


def save_figure(fig, path, dpi):
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- figures -----------------------------------------------------------------------------------

def plot_panel(ax, runs, split, column, scale, styles, labels):
    """One training or validation panel: `column` (value or loss) x scale vs epoch, one line per arm."""
    from matplotlib.ticker import MaxNLocator

    for arm, curves in runs.items():
        rows = curves[curves["split"] == split]
        if rows.empty:
            continue
        colour, marker = styles[arm]
        ax.plot(rows["epoch"], rows[column] * scale, color=colour, marker=marker, markersize=5,
                linewidth=1.6, markevery=max(1, len(rows) // 12), label=labels[arm])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Epoch")
    ax.grid(True, alpha=0.35)


def legend_handles(arms, styles, labels):
    from matplotlib.lines import Line2D

    return [Line2D([], [], color=styles[a][0], marker=styles[a][1], markersize=5, linewidth=1.6, label=labels[a])
            for a in arms]


def plot_target(target, runs, metric, column, out_path, dpi, extra_arms):
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
    fig.suptitle(f"{target_title(target)} — {'loss' if is_loss else metric}", fontsize=13)
    # One shared legend below the panels: it never hides a curve.
    fig.legend(handles=legend_handles(list(runs), styles, labels), loc="outside lower center",
               ncol=min(len(runs), 5), frameon=False)
    save_figure(fig, out_path, dpi)
    plt.close(fig)


def plot_overview(all_runs, metrics, out_path, dpi, extra_arms):
    """All targets in one grid (rows = targets, cols = training | validation), the paper-style overview."""
    import matplotlib.pyplot as plt

    arms = paper_sorted({a for runs in all_runs.values() for a in runs}, ARMS)
    styles = {arm: arm_style(arm, extra_arms) for arm in arms}
    labels = {arm: arm for arm in arms}
    fig, axes = plt.subplots(len(all_runs), 2, figsize=(11, 0.8 + 3.0 * len(all_runs)),
                             layout="constrained", squeeze=False)
    for row, (target, runs) in enumerate(all_runs.items()):
        for ax, (split, split_name) in zip(axes[row], SPLITS):
            plot_panel(ax, runs, split, "value", 100.0, styles, labels)
            ax.set_title(f"{target_title(target)} — {split_name.lower()}", fontsize=11)
            ax.set_ylabel(f"{metric_label(metrics[target])} (%)")
    fig.legend(handles=legend_handles(arms, styles, labels), loc="outside upper center",
               ncol=min(len(arms), 5), frameon=False)
    save_figure(fig, out_path, dpi)
    plt.close(fig)


# --- tables ------------------------------------------------------------------------------------

def fmt(value):
    return "n/a" if value is None or pd.isna(value) else f"{value:.1f}"


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def table2_markdown(table, tests, table_arms, notes):
    """Paper Table 2: one block per metric (Accuracy (%), Kappa Score (%), ...), rows Dx Training/Validation."""
    headers = [ARM_HEADERS.get(a, a) for a in table_arms]
    lines = ["## Table 2. Model's performance at last epoch", ""]
    for metric, block in table.groupby("metric", sort=False):
        lines += [f"### {metric_label(metric)} (%)", ""]
        rows = []
        for target, runs in block.groupby("target", sort=False):
            by_arm = runs.set_index("arm")
            for split, split_name in SPLITS:
                rows.append([target_title(target), split_name] + [fmt(by_arm.at[a, split]) for a in table_arms])
        lines += markdown_table(["Dataset", ""] + headers, rows)
        block_notes = "; ".join(notes[t] for t in block["target"].unique())
        lines += ["", f"Values at each run's last logged epoch; n/a = arm not run. {block_notes}.", ""]
    if tests is not None:
        lines += ["### Held-out test", ""]
        rows, sizes = [], []
        for target, runs in tests.groupby("target", sort=False):
            by_arm = runs.set_index("arm")
            metric = runs["metric"].iloc[0]
            rows.append([target_title(target), f"{metric_label(metric)} (%)"]
                        + [fmt(by_arm.at[a, "test"]) for a in table_arms])
            ns = sorted({int(n) for n in runs["n"].dropna()})
            sizes.append(f"{TARGETS.get(target, (target,))[0]} n = {'/'.join(map(str, ns)) or 'unknown'}")
        lines += markdown_table(["Dataset", "Metric"] + headers, rows)
        lines += ["", f"Test split, checkpoint as given to evaluate.py; {'; '.join(sizes)}.", ""]
    return "\n".join(lines)


def epoch_note(target, epochs, sizes):
    epochs = sorted(set(epochs))
    span = str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}"
    short = TARGETS.get(target, (target,))[0]
    return f"{short}: epoch {span}, " + (f"images {sizes}" if sizes else "split sizes unknown")


def main(args):
    # --- discover runs and read the curves
    found = discover_runs(args.runs)
    metrics = {t: (headline_metric(t, arm_dirs) if args.metric == "auto" else args.metric)
               for t, arm_dirs in found.items()}
    curves = {t: {arm: read_curves(d / "metrics.csv", metrics[t]) for arm, d in arm_dirs.items()}
              for t, arm_dirs in found.items()}
    extra_arms = sorted({a for arm_dirs in found.values() for a in arm_dirs} - set(ARMS))
    table_arms = ARMS + extra_arms  # every target lists every arm; arms without a run show n/a
    print(f"runs: {', '.join(f'{t} ({len(r)} arms)' for t, r in curves.items())}; "
          f"metrics: {', '.join(f'{t}={m}' for t, m in metrics.items())}")

    # --- Table 2 (long form, %) and the held-out test results
    rows, test_rows, notes = [], [], {}
    for target, runs in curves.items():
        epochs = []
        for arm in table_arms:
            if arm in runs:
                epoch, train, val = last_epoch_row(runs[arm])
                epochs.append(epoch)
                rows.append((target, arm, metrics[target], round(100 * train, 2), round(100 * val, 2), epoch))
            else:
                rows.append((target, arm, metrics[target], math.nan, math.nan, None))
        notes[target] = epoch_note(target, epochs, split_sizes(args.runs, target))
        eval_dir = Path(args.runs) / "eval" / target
        results = {arm: read_test_result(eval_dir / arm / "metrics.csv", metrics[target])
                   for arm in table_arms if (eval_dir / arm / "metrics.csv").is_file()}
        results = {arm: r for arm, r in results.items() if r is not None}
        if results:
            for arm in table_arms:
                value, n, checkpoint = results.get(arm, (math.nan, None, ""))
                test_rows.append((target, arm, metrics[target], round(100 * value, 2), n, checkpoint))
    table = pd.DataFrame(rows, columns=["target", "arm", "metric", "train", "val", "epoch"])
    table["epoch"] = table["epoch"].astype("Int64")
    tests = None
    if test_rows:
        tests = pd.DataFrame(test_rows, columns=["target", "arm", "metric", "test", "n", "checkpoint"])
        tests["n"] = tests["n"].astype("Int64")

    tables_dir = Path(args.out) / "tables"
    tables_dir.mkdir(parents=True, exist_ok=True)
    datasets.write_text_atomic(tables_dir / "table2.csv", table.to_csv(index=False))
    if tests is not None:
        datasets.write_text_atomic(tables_dir / "test_results.csv", tests.to_csv(index=False))
    markdown = table2_markdown(table, tests, table_arms, notes)
    datasets.write_text_atomic(tables_dir / "table2.md", markdown + "\n")

    # --- figures (Agg: no display needed; set here so importing this file changes nothing)
    import matplotlib

    matplotlib.use("Agg")
    figures_dir = Path(args.out) / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    for target, runs in curves.items():
        plot_target(target, runs, metrics[target], "value", figures_dir / f"{target}.png", args.dpi, extra_arms)
        if args.loss_plots:
            plot_target(target, runs, metrics[target], "loss", figures_dir / f"{target}_loss.png", args.dpi,
                        extra_arms)
    plot_overview(curves, metrics, figures_dir / "learning_curves.png", args.dpi, extra_arms)

    print(f"wrote {tables_dir}/table2.csv, table2.md{', test_results.csv' if tests is not None else ''} "
          f"and {len(list(figures_dir.glob('*.png')))} figures in {figures_dir}")
    print()
    print(markdown)


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except ValueError as err:
        raise SystemExit(str(err)) from None
