"""The patient bootstrap of a full study's evaluations: every resample at once (kit/stats.py
resampled_metrics: confusion counts per patient times multiplicities, weighted ranks) vs one
metrics call per resample (how the kit computed it before), at the study's test-split sizes.

    python bench/bench_bootstrap.py                   # 10,000 resamples, 3 seeds: about a minute on 2 CPU cores
    python bench/bench_bootstrap.py --seeds 1 --loop-resamples 100

Sizes: each target's test split is 15 % of its images in the paper's Table 1 (D1 99 ... D2 3,175
images; each image its own patient, as for the targets without patient ids). evaluate.py bootstraps
all five multi-class metrics (AUROC included) of one checkpoint: a study evaluates 5 arms x 2
checkpoints x seeds per target. plot_results.py bootstraps the headline metric of every arm and
seed together (5 x seeds networks) per target and checkpoint. The loop is timed on
--loop-resamples resamples and scaled to --resamples. Prints the time per evaluation and for the
whole study; the last line is ratio=<loop time / vectorised time> of the study's evaluations.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kit import metrics, paper, stats  # noqa: E402


def networks(n_images, classes, count, rng):
    """`count` networks' softmax outputs on one target's test split (about 80 % right) and its truth."""
    targets = rng.integers(0, classes, n_images)
    probs = []
    for _ in range(count):
        logits = rng.normal(0, 1, (n_images, classes))
        logits[np.arange(n_images), targets] += 2.0
        probs.append(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True))
    return probs, targets


def loop(probs, targets, names, n_resamples, seed):
    """One metrics call per resample and network: the kit's computation before resampled_metrics."""
    inverse, n_patients = stats.patient_index(len(targets))
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        rows = rng.integers(0, n_patients, n_patients)
        for p in probs:
            metrics.multiclass_metrics(p[rows], targets[rows], names)


def timed(function, *args):
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def main(args):
    rng = np.random.default_rng(0)
    total_new = total_old = 0.0
    print(f"{args.resamples:,} resamples, {args.seeds} seed(s): per target, evaluate.py (one checkpoint, 5 metrics) "
          f"and plot_results.py (5 arms x {args.seeds} seeds, headline metric)")
    for key, counts in paper.TABLE1.items():
        n_images, classes = round(0.15 * sum(counts.values())), len(counts)
        headline = (paper.TARGETS[key][3],)
        one, targets = networks(n_images, classes, 1, rng)
        arms, _ = networks(n_images, classes, 5 * args.seeds, rng)
        arms = [np.asarray(p) for p in arms]
        new_eval = timed(stats.resampled_metrics, "multiclass", metrics.MULTICLASS_METRICS, one, targets, n_images,
                         args.resamples, 0)
        new_plot = timed(stats.resampled_metrics, "multiclass", headline, arms, targets, n_images, args.resamples, 0)
        scale = args.resamples / args.loop_resamples
        old_eval = scale * timed(loop, one, targets, metrics.MULTICLASS_METRICS, args.loop_resamples, 0)
        old_plot = scale * timed(loop, arms, targets, headline, args.loop_resamples, 0)
        evaluations = 5 * 2 * args.seeds  # arms x checkpoints x seeds
        study_new, study_old = evaluations * new_eval + 2 * new_plot, evaluations * old_eval + 2 * old_plot
        total_new, total_old = total_new + study_new, total_old + study_old
        print(f"{paper.TARGETS[key][0]} {n_images:>5} test images, {classes} classes: evaluate {new_eval:6.2f} s "
              f"(loop {old_eval:7.1f} s), plot_results {new_plot:5.2f} s (loop {old_plot:7.1f} s); "
              f"study {study_new:6.1f} s (loop {study_old:7.1f} s)")
    print(f"the study's evaluations and report: {total_new:.0f} s ({total_new / 60:.1f} min) vs the loop "
          f"{total_old:.0f} s ({total_old / 60:.1f} min)")
    print(f"ratio={total_old / total_new:.1f}")


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resamples", type=int, default=stats.DEFAULT_RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--loop-resamples", type=int, default=200,
                        help="resamples the loop is timed on (scaled to --resamples)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the study (the seeds setting)")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
