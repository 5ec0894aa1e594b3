"""Figures, tables and a one-page report of the study, from the CSV/JSON files of the runs.

Reads only files that earlier stages wrote, never checkpoints. Runs are found by walking
OUT/finetune/: every folder OUT/finetune/<target>/<arm>/[<anything>/]metrics.csv is one run of
that target and arm, its seed and train fraction read from its args.json (args.seed,
args.train_fraction; else from a folder name like frac0.1_seed2; else seed 0, fraction 1):
  OUT/finetune/<target>/<arm>/<run>/metrics.csv   per-epoch train/val rows (finetune_target.py)
  OUT/finetune/<target>/<arm>/<run>/args.json     seed, train fraction, `meta.headline_metric`
  OUT/eval/**/metrics.csv, predictions.csv         test results of each run's best.pt / last.pt
                                                  (evaluate.py; matched to runs by their checkpoint path)
  OUT/manifests/<key>.json                        split sizes of targets and sources; without study.json, the
                                                  data's origin (demo_data: generated demo data) (optional)
  OUT/study.json                                  what the workflow ran: data (demo or a path), ImageNet weights
                                                  found or why not, sizes, epochs, seeds (optional)
and writes (values in %, differences in percentage points):
  OUT/report.md                         what was run and what was not (and why), the answer per target, the
                                        paper's claims with verdicts, the paper's Table 2 next to this run,
                                        data, Table 2, all paired comparisons, convergence and stability,
                                        the settings (the paper's and the kit's), links to figures and tables
  OUT/figures/<target>.png              training | validation headline metric vs epoch, arms overlaid
                                        (mean over seeds, band = +-1 sd across seeds)
  OUT/figures/<target>_loss.png         the same for the loss (--loss-plots, on by default)
  OUT/figures/learning_curves.png       all targets in one grid (rows = targets, cols = train/val)
  OUT/figures/forest.png                paired arm differences on the test split with CIs (claims checkpoint)
  OUT/figures/label_efficiency.png      test metric vs train fraction, per arm (with > 1 fraction)
  OUT/tables/claims.csv                 claim, target, dataset, title, quote, better, worse, paper_table,
                                        evidence, this_run, replication, verdict (kit/claims.py)
  OUT/tables/paper_vs_run.csv           target, arm, metric, paper_train, paper_val, train, train_sd, val,
                                        val_sd, val_minus_paper, checkpoint, test, test_sd, test_ci_low,
                                        test_ci_high, n_seeds, min_class_patients
  OUT/tables/rankings.csv               target, paper_val, val, test (arms best first)
  OUT/tables/runs.csv                   one row per run: target, arm, train_fraction, seed, metric, epoch,
                                        train, val, best_val, best_epoch, epochs_to_95, val_curve_mean,
                                        max_drop, tail_sd, train_epochs_to_95, train_late_gain, test_best,
                                        test_best_ci_low, test_best_ci_high, test_last, test_last_ci_low,
                                        test_last_ci_high, n_test, run
  OUT/tables/test_summary.csv           target, arm, train_fraction, checkpoint, metric, n_seeds, test,
                                        test_sd, ci_low, ci_high, n_images, n_patients, min_class_patients
  OUT/tables/table2.csv                 target, arm, metric, train, val, epoch, n_seeds, train_sd, val_sd,
                                        test, test_ci_low, test_ci_high, test_sd, test_last,
                                        test_last_ci_low, test_last_ci_high, test_last_sd, n_test,
                                        train_fraction, n_test_patients, min_class_patients
  OUT/tables/table2.md                  laid out like the paper's Table 2, + held-out test mean [95 % CI]
  OUT/tables/paired.csv                 target, train_fraction, checkpoint, arm, reference, metric, method,
                                        n_seeds, n_images, n_patients, min_class_patients, arm_value,
                                        reference_value, difference, ci_low, ci_high, se, df, p_value,
                                        p_holm, holm_m, difference_sd, test_se
  OUT/tables/convergence.csv            target, arm, train_fraction, metric, n_seeds, epochs, best_epoch,
                                        threshold, threshold_arm, never_reached, and mean and sd across
                                        seeds of best_val, epochs_to_95, epochs_to_threshold,
                                        val_curve_mean, max_drop, tail_sd, train_epochs_to_95,
                                        train_late_gain

Statistics (kit/stats.py, kit/tables.py, kit/claims.py; docs/statistics.md). The training run is the
unit of replication. Test values are the mean over seeds; "sd" is the standard deviation across seeds
(the training noise). With two or more seeds the CI and p add the across-seed variance of the mean to
its test-sampling variance (a bootstrap over test *patients*, every image of a drawn patient along,
the same draw for every seed; --bootstrap resamples, --seed) and use t with Welch's degrees of freedom;
with one seed they are the patient bootstrap of that one network and no claim is supported. Paired
comparisons: all pairs of arms (10 for five arms), the later arm in paper order minus the earlier, on
the same test images and seeds, Holm-adjusted within each target (p_holm, over holm_m comparisons);
for binary targets also DeLong's test of the AUROC difference. Claims: the paper's statements of
Sections 5.3 and 7 as rules on those comparisons (at --claims-checkpoint, the last epoch by default,
as in the paper's Table 2) and on the curves (noise: the validation split's binomial bound and the
seeds' spread), each with a verdict: supported, contradicted, inconclusive or not tested
(kit/claims.py). Curves: the first epoch reaching 95 % of the run's best and of the best arm's last
value (a threshold common to the target's arms), the curve's mean height, its largest drop between
epochs, its sd and gain over the last third. Table 2, the curves, the
forest plot, convergence and the claims use each target's largest train fraction (normally 1).

  # after the CPU demo or the full study (the workflow writes everything under OUT)
  python plot_results.py --runs OUT --out OUT
  # another metric column for every target instead of the paper's headline metrics
  python plot_results.py --runs OUT --out OUT/balanced --metric balanced_accuracy
"""
import argparse
from pathlib import Path

from kit import cli


def get_args_parser():
    parser = cli.Parser(__doc__)
    # Data
    parser.add_argument("--runs", type=Path, required=True,
                        help="study output folder OUT holding finetune/<target>/<arm>/.../metrics.csv "
                             "(and optionally eval/ and manifests/)")
    parser.add_argument("--metric", type=str, default="auto",
                        help="metric column to plot and tabulate: 'auto' = the paper's headline metric per "
                             "target (accuracy D1-D3, kappa D4-D5, else args.json meta.headline_metric), "
                             "or a column name such as accuracy, kappa, balanced_accuracy, qwk, auroc")
    # Statistics
    parser.add_argument("--bootstrap", type=cli.non_negative_int, default=10_000,
                        help="bootstrap resamples of test patients for CIs and paired tests (>= 10000 to report: "
                             "Holm's first step over 10 comparisons asks p < 0.005)")
    parser.add_argument("--ci", type=cli.ci_level, default=0.95,
                        help="confidence level of the intervals, in (0, 1)")
    parser.add_argument("--seed", type=cli.seed, default=0, help="seed of the bootstrap resampling")
    parser.add_argument("--claims-checkpoint", type=str, default="last", choices=["last", "best"],
                        help="the checkpoint whose test results answer the paper's question and its claims: last "
                             "(the paper's Table 2 is at the last epoch) or best (best validation epoch)")
    # Output
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder; figures/, tables/ and report.md are written inside it")
    parser.add_argument("--dpi", type=int, default=120, help="figure resolution in dots per inch (72-300)")
    parser.add_argument("--loss-plots", action=argparse.BooleanOptionalAction, default=True,
                        help="also write figures/<target>_loss.png (training | validation loss)")
    return parser


def main(args):
    import os
    import shutil

    from kit import files, results
    from kit.paper import STRATEGIES
    from kit.report import strategies_section

    # --- discover runs and read the curves; the evaluations of the checkpoints now in the run folders (the
    # others are left out, said here and in report.md); what the workflow ran (study.json), when it wrote this
    runs = results.discover_runs(args.runs)
    left_out = results.attach_evals(args.runs, runs)
    for item in left_out:
        print(f"left out: {item['file']}: {item['reason']}; evaluate {item['key']}/{item['kind']}.pt again")
    study = results.read_study(args.runs)

    # --- one analysis per fine-tuning strategy: the first (full, where it was run) into OUT, every other
    # into OUT/strategies/<strategy>/; the first report then shows them side by side. Everything is written
    # into a hidden folder first and put in place once whole: a failure or Ctrl-C leaves the previous output
    by_strategy = {}
    for run in runs:
        by_strategy.setdefault(run["strategy"], []).append(run)
    order = [s for s in STRATEGIES if s in by_strategy] + sorted(set(by_strategy) - set(STRATEGIES))
    out = Path(args.out)
    staging = out / f".plot_results.tmp-{os.getpid()}"
    outs = {s: staging if i == 0 else staging / "strategies" / s for i, s in enumerate(order)}
    try:
        reports = {s: analyse(args, by_strategy[s], outs[s], study, s, len(order) > 1, left_out) for s in order}
        if len(order) > 1:
            report = reports[order[0]] + "\n" + strategies_section(
                {s: (outs[s].relative_to(staging), Path(outs[s]) / "tables" / "table2.csv") for s in order},
                reporting(args))
            files.write_text_atomic(staging / "report.md", report)
        publish_output(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote figures/, tables/ and report.md in {out}")


OUTPUT = ("figures", "tables", "strategies")  # plot_results.py's folders in OUT, with report.md


def publish_output(staging: Path, out: Path) -> None:
    """The finished output in place: each folder in one rename (files.publish), an old one that this run did not
    write (strategies/ of a study that has one strategy now) removed, and report.md last, so that a report.md
    always comes with the figures and tables it names."""
    import shutil

    from kit import files

    for name in OUTPUT:
        if (staging / name).is_dir():
            files.publish(staging / name, out / name)
        elif (out / name).is_dir():
            shutil.rmtree(out / name)
    (staging / "report.md").replace(out / "report.md")


def reporting(args):
    from kit.report import Reporting

    return Reporting(ci=args.ci, bootstrap=args.bootstrap, seed=args.seed, claims_checkpoint=args.claims_checkpoint)


def overlap_facts(runs_dir, runs, targets, study, checkpoint) -> dict:
    """What report.md says about pictures shared by a source and a target (kit/report.py overlap_section)."""
    from kit import results

    found, record = results.read_overlap(runs_dir)
    return {"found": found if found is None else found[found["target"].isin(targets)], "record": record,
            "mode": (study or {}).get("overlap"), "seen": results.seen_in_pretraining(runs, checkpoint),
            "twins": {t: results.manifest_twins(runs_dir, t) for t in targets}}


def analyse(args, runs, out: Path, study, strategy: str, several: bool, left_out=()) -> str:
    """Tables, figures and report.md of the runs of one fine-tuning strategy, into `out`; returns
    the report's text. `left_out`: the evaluations not of the checkpoints now in their run folders."""
    from kit import claims, files, results, tables
    from kit.paper import ARMS, fraction_label
    from kit.report import Study, epoch_note, report_markdown, table2_markdown

    # --- what was run: the metric of each target (and its curves), arms, seeds, train fractions
    targets = list(dict.fromkeys(r["target"] for r in runs))
    metrics = {t: (results.headline_metric(t, [r["dir"] for r in runs if r["target"] == t]) if args.metric == "auto"
                   else args.metric) for t in targets}
    for run in runs:
        run["curves"] = results.read_curves(run["dir"] / "metrics.csv", metrics[run["target"]])
    extra_arms = sorted({r["arm"] for r in runs} - set(ARMS) - {"RI"})
    # every target lists every arm (the random-init floor RI first, where it was run); arms without a run show n/a
    table_arms = ["RI"] * any(r["arm"] == "RI" for r in runs) + ARMS + extra_arms
    main_fraction = {t: max(r["fraction"] for r in runs if r["target"] == t) for t in targets}
    seeds = sorted({r["seed"] for r in runs})
    fractions = sorted({r["fraction"] for r in runs})
    runs_arms = {t: {r["arm"] for r in runs if r["target"] == t and r["fraction"] == main_fraction[t]} for t in targets}
    missing_reason, missing_short = imagenet_missing(study)
    print(f"{len(runs)} runs: {', '.join(f'{t} ({metrics[t]})' for t in targets)}; seeds {seeds}; "
          f"train fractions {[fraction_label(f) for f in fractions]}")

    # --- per run, per test group (bootstrap, all paired tests), Table 2 and convergence at the largest fraction
    runs_table = tables.runs_frame(runs, metrics)
    pairing_notes = []  # why some arms are not compared as paired
    summary, paired = tables.test_frames(runs, targets, metrics, bootstrap=args.bootstrap, ci=args.ci, seed=args.seed,
                                         notes=pairing_notes)
    at_main = runs_table[runs_table["train_fraction"] == runs_table["target"].map(main_fraction)]
    sizes = {target: results.split_sizes(args.runs, target) for target in targets}
    notes = {target: epoch_note(target, at_main.loc[at_main["target"] == target, "epoch"].tolist(), sizes[target])
             for target in targets}
    table = tables.table2_frame(at_main, summary, table_arms, metrics, main_fraction)
    table2_md = table2_markdown(table, table_arms, notes, args.ci)
    convergence = tables.convergence_frame(at_main, runs)
    curves = seed_mean_curves(runs, targets, main_fraction)

    # --- the paper's question and claims, at the claims checkpoint and each target's largest fraction
    at_claims = paired[(paired["checkpoint"] == args.claims_checkpoint)
                       & (paired["train_fraction"] == paired["target"].map(main_fraction))]
    verdicts = claims.verdicts(at_claims, convergence, runs_arms, alpha=1 - args.ci, missing_reason=missing_short,
                               curves=curves, sizes=sizes, metrics=metrics)
    comparison = tables.paper_vs_run_frame(table, args.claims_checkpoint)
    rankings = tables.rankings_frame(comparison)
    answers = {target: target_answer(args, target, table, at_claims, runs_arms[target], metrics[target], missing_short)
               for target in targets}

    # --- tables, figures, the report
    written = {"runs.csv": runs_table, "table2.csv": table, "convergence.csv": convergence, "claims.csv": verdicts,
               "paper_vs_run.csv": comparison, "rankings.csv": rankings}
    if not summary.empty:
        written |= {"test_summary.csv": summary, "paired.csv": paired}
    write_tables(out / "tables", written, table2_md)
    written_figures = plot_figures(args, out / "figures", curves, metrics, int(table["n_seeds"].max()), at_claims,
                                   summary, extra_arms)
    report = report_markdown(Study(
        reporting=reporting(args), metrics=metrics, table2_md=table2_md, paired=at_claims, convergence=convergence,
        summary=summary, sizes=sizes, settings=settings_text(args, len(runs), seeds, fractions),
        figures=written_figures, claims=verdicts, comparison=comparison, rankings=rankings, answers=answers,
        record=study, runs_arms=runs_arms, seeds=seeds, sources=results.source_manifests(args.runs),
        run_args=results.run_arguments(args.runs, runs), missing_reason=missing_reason,
        pairing_notes=tuple(dict.fromkeys(pairing_notes)), domains={t: results.target_domain(args.runs, t) for t in targets},
        strategy=strategy if several else None, overlap=overlap_facts(args.runs, runs, targets, study,
                                                                       args.claims_checkpoint),
        left_out=[item for item in left_out if item["key"] in {r["key"] for r in runs}],
        manifests=results.manifest_data(args.runs, targets)))
    files.write_text_atomic(out / "report.md", report)

    print(f"{strategy}: {', '.join(sorted(written))}, table2.md, {len(written_figures)} figures and report.md")
    print()
    for target in targets:
        print(answers[target])
    print()
    print(verdicts[["claim", "dataset", "verdict", "this_run"]].to_string(index=False))
    return report


def imagenet_missing(study):
    """(why ImageNet weights were missing, said in full once at the top of the report; the same in a few words
    elsewhere), or (None, None)."""
    if study is None or study.get("imagenet_found", True):
        return None, None
    short = "no ImageNet weights"
    return f"{short} ({study.get('imagenet_missing_reason') or 'not found'})", short


def seed_mean_curves(runs, targets, main_fraction) -> dict:
    """{target: {arm: learning curves averaged over seeds}} at each target's largest train fraction, arms in
    paper order."""
    from kit import tables
    from kit.paper import ARMS, paper_sorted

    curves = {}
    for target in targets:
        by_arm = {}
        for run in runs:
            if run["target"] == target and run["fraction"] == main_fraction[target]:
                by_arm.setdefault(run["arm"], []).append(run["curves"])
        curves[target] = {arm: tables.mean_curves(by_arm[arm]) for arm in paper_sorted(by_arm, ARMS)}
    return curves


def target_answer(args, target, table, at_claims, runs_arms, metric, missing_short) -> str:
    """The answer to the paper's question for one target, from its Table 2 test values at the claims checkpoint."""
    import pandas as pd

    from kit import claims

    prefix = "test" if args.claims_checkpoint == "best" else "test_last"
    rows = table[table["target"] == target].set_index("arm")
    values = {arm: (rows.at[arm, prefix], rows.at[arm, f"{prefix}_ci_low"], rows.at[arm, f"{prefix}_ci_high"])
              for arm in rows.index if pd.notna(rows.at[arm, prefix])}
    return claims.answer(target, at_claims, values, runs_arms, 1 - args.ci, metric, missing_short)


def write_tables(tables_dir: Path, frames: dict, table2_md: str) -> None:
    """tables/: every frame as CSV (values rounded to 4 decimals) and table2.md."""
    from kit import files

    tables_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        files.write_text_atomic(tables_dir / name, frame.round(4).to_csv(index=False))
    files.write_text_atomic(tables_dir / "table2.md", table2_md + "\n")


def plot_figures(args, figures_dir: Path, curves, metrics, n_seeds, at_claims, summary, extra_arms) -> list:
    """figures/: learning (and loss) curves per target and of all targets, the forest plot of the paired
    differences, label efficiency where there are several train fractions; returns [(file, caption)]."""
    import matplotlib

    from kit import figures
    from kit.paper import target_title

    matplotlib.use("Agg")  # no display needed; set here so importing this file changes nothing
    figures_dir.mkdir(parents=True, exist_ok=True)
    written = [("learning_curves.png", "Learning curves, all targets")]
    for target, arm_curves in curves.items():
        figures.plot_target(target, arm_curves, metrics[target], "value", figures_dir / f"{target}.png", args.dpi,
                            extra_arms, n_seeds)
        written.append((f"{target}.png", f"{target_title(target)}: learning curves"))
        if args.loss_plots:
            figures.plot_target(target, arm_curves, metrics[target], "loss", figures_dir / f"{target}_loss.png",
                                args.dpi, extra_arms, n_seeds)
            written.append((f"{target}_loss.png", f"{target_title(target)}: loss curves"))
    figures.plot_overview(curves, metrics, figures_dir / "learning_curves.png", args.dpi, extra_arms, n_seeds)
    forest_rows = at_claims[at_claims["method"] != "DeLong"]
    if not forest_rows.empty:
        figures.plot_forest(forest_rows, figures_dir / "forest.png", args.dpi, extra_arms, args.ci)
        written.append(("forest.png", "Paired arm differences on the test split (forest plot)"))
    efficiency = summary[summary["checkpoint"] == "best"]
    efficiency = efficiency[efficiency.groupby("target")["train_fraction"].transform("nunique") > 1]
    if not efficiency.empty:
        figures.plot_label_efficiency(efficiency, metrics, figures_dir / "label_efficiency.png", args.dpi, extra_arms)
        written.append(("label_efficiency.png", "Label efficiency: test metric vs train fraction"))
    return written


def settings_text(args, n_runs, seeds, fractions) -> str:
    """The report's line on what the test values are: runs, seeds, train fractions, spread and CI."""
    from kit.paper import fraction_label

    return (f"{n_runs} fine-tuning runs; seeds {', '.join(map(str, seeds))}; train fractions "
            f"{', '.join(fraction_label(f) for f in fractions)}. Test values: "
            + (f"mean over seeds ± sd across seeds [{100 * args.ci:g} % CI: the seeds' spread and a patient "
               f"bootstrap, {args.bootstrap} resamples]." if len(seeds) > 1 else
               f"one seed [{100 * args.ci:g} % percentile bootstrap CI over test patients, {args.bootstrap} "
               "resamples]."))


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    with cli.user_errors():
        main(args)
