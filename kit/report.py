"""Markdown: the paper's Table 2 with held-out test CIs, and OUT/report.md, the one page that ties
the study's tables and figures together.
"""
import math

import pandas as pd

from .paper import ARM_HEADERS, CURVE_SPLITS, metric_label, short_name, target_title

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
            for split, split_name in CURVE_SPLITS:
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
                    figures, pairing_notes=()):
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
    if pairing_notes:
        lines += ["Not compared as paired:", ""] + [f"- {text}" for text in pairing_notes] + [""]
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
