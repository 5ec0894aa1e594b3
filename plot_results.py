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

Statistics (kit/tables.py). Test values are the mean over seeds; "sd" is the standard deviation across seeds
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
from pathlib import Path

from kit import cli


def get_args_parser():
    parser = cli.parser(__doc__)
    # Data
    parser.add_argument("--runs", type=Path, required=True,
                        help="study output folder OUT holding finetune/<target>/<arm>/.../metrics.csv "
                             "(and optionally eval/ and manifests/)")
    parser.add_argument("--metric", type=str, default="auto",
                        help="metric column to plot and tabulate: 'auto' = the paper's headline metric per "
                             "target (accuracy D1-D3, kappa D4-D5, else args.json meta.headline_metric), "
                             "or a column name such as accuracy, kappa, balanced_accuracy, qwk, auroc")
    # Statistics
    parser.add_argument("--bootstrap", type=cli.non_negative_int, default=1000,
                        help="bootstrap resamples of test patients for CIs and paired tests (>= 1000 to report)")
    parser.add_argument("--ci", type=cli.ci_level, default=0.95,
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


def main(args):
    from kit import figures, files, results, tables
    from kit.paper import ARMS, fraction_label, paper_sorted, target_title
    from kit.report import report_markdown, table2_markdown, epoch_note

    # --- discover runs and read the curves
    runs = results.discover_runs(args.runs)
    results.attach_evals(args.runs, runs)
    targets = list(dict.fromkeys(r["target"] for r in runs))
    metrics = {t: (results.headline_metric(t, [r["dir"] for r in runs if r["target"] == t]) if args.metric == "auto"
                   else args.metric) for t in targets}
    for run in runs:
        run["curves"] = results.read_curves(run["dir"] / "metrics.csv", metrics[run["target"]])
    extra_arms = sorted({r["arm"] for r in runs} - set(ARMS))
    table_arms = ARMS + extra_arms  # every target lists every arm; arms without a run show n/a
    main_fraction = {t: max(r["fraction"] for r in runs if r["target"] == t) for t in targets}
    seeds = sorted({r["seed"] for r in runs})
    fractions = sorted({r["fraction"] for r in runs})
    print(f"{len(runs)} runs: {', '.join(f'{t} ({metrics[t]})' for t in targets)}; seeds {seeds}; "
          f"train fractions {[fraction_label(f) for f in fractions]}")

    # --- per run, per test group (bootstrap, paired tests), Table 2 and convergence at the largest fraction
    runs_table = tables.runs_frame(runs, metrics)
    pairing_notes = []  # why some arms are not compared as paired
    summary, paired = tables.test_frames(runs, targets, metrics, args, pairing_notes)
    at_main = runs_table[runs_table["train_fraction"] == runs_table["target"].map(main_fraction)]
    sizes = {target: results.split_sizes(args.runs, target) for target in targets}
    notes = {target: epoch_note(target, at_main.loc[at_main["target"] == target, "epoch"].tolist(), sizes[target])
             for target in targets}
    table = tables.table2_frame(at_main, summary, table_arms, metrics, main_fraction)
    convergence = tables.convergence_frame(at_main)

    # --- write the tables
    tables_dir = Path(args.out) / "tables"
    tables_dir.mkdir(parents=True, exist_ok=True)
    written = {"runs.csv": runs_table, "table2.csv": table, "convergence.csv": convergence}
    if not summary.empty:
        written |= {"test_summary.csv": summary, "paired.csv": paired}
    for name, frame in written.items():
        files.write_text_atomic(tables_dir / name, frame.round(4).to_csv(index=False))
    markdown = table2_markdown(table, table_arms, notes, args.ci)
    files.write_text_atomic(tables_dir / "table2.md", markdown + "\n")

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
        curves[target] = {arm: tables.mean_curves(by_arm[arm]) for arm in paper_sorted(by_arm, ARMS)}
    written_figures = [("learning_curves.png", "Learning curves, all targets")]
    for target, arm_curves in curves.items():
        figures.plot_target(target, arm_curves, metrics[target], "value", figures_dir / f"{target}.png", args.dpi,
                    extra_arms, n_seeds)
        written_figures.append((f"{target}.png", f"{target_title(target)}: learning curves"))
        if args.loss_plots:
            figures.plot_target(target, arm_curves, metrics[target], "loss", figures_dir / f"{target}_loss.png", args.dpi,
                        extra_arms, n_seeds)
    figures.plot_overview(curves, metrics, figures_dir / "learning_curves.png", args.dpi, extra_arms, n_seeds)
    forest_rows = paired[(paired["checkpoint"] == "best") & (paired["method"] != "DeLong")
                         & (paired["train_fraction"] == paired["target"].map(main_fraction))]
    if not forest_rows.empty:
        figures.plot_forest(forest_rows, figures_dir / "forest.png", args.dpi, extra_arms, args.ci)
        written_figures.append(("forest.png", "Paired arm differences on the test split (forest plot)"))
    efficiency = summary[summary["checkpoint"] == "best"]
    efficiency = efficiency[efficiency.groupby("target")["train_fraction"].transform("nunique") > 1]
    if not efficiency.empty:
        figures.plot_label_efficiency(efficiency, metrics, figures_dir / "label_efficiency.png", args.dpi, extra_arms)
        written_figures.append(("label_efficiency.png", "Label efficiency: test metric vs train fraction"))

    # --- the report
    settings_file = Path(args.runs) / "study_settings.txt"
    settings = (f"Study settings: `{settings_file.read_text().strip()}`. " if settings_file.is_file() else "")
    settings += (f"{len(runs)} fine-tuning runs; seeds {', '.join(map(str, seeds))}; train fractions "
                 f"{', '.join(fraction_label(f) for f in fractions)}. Test values: "
                 f"{'mean over seeds ± sd across seeds' if len(seeds) > 1 else 'value'} "
                 f"[{100 * args.ci:g} % percentile bootstrap CI over test patients, {args.bootstrap} resamples].")
    report = report_markdown(table2_markdown(table, table_arms, notes, args.ci), paired, convergence, summary, sizes,
                             metrics, main_fraction, settings, args, written_figures,
                             pairing_notes=list(dict.fromkeys(pairing_notes)))
    files.write_text_atomic(Path(args.out) / "report.md", report)

    print(f"wrote {', '.join(sorted(written))}, table2.md in {tables_dir}, {len(written_figures)} figures in "
          f"{figures_dir} and {Path(args.out) / 'report.md'}")
    print()
    print(markdown)


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    with cli.user_errors():
        main(args)
