"""The statistics a reviewer asks for: bootstrap intervals, paired tests, DeLong, convergence.

The test split is small (a few hundred images, often several per patient), so every number the
study reports comes with its noise:
    resample_indices      the (cluster) bootstrap: whole patients are drawn with replacement,
                          so every image of a drawn patient comes along (images of one patient
                          are not independent); without patient ids, every image is its own patient
    bootstrap_ci          percentile interval of any statistic of the selected rows
    paired_bootstrap      difference of two statistics on the same resamples (two arms scored on
                          the same test images): percentile CI and a two-sided p-value
    delong_test           DeLong's test for two correlated binary AUROCs on the same images
    holm                  Holm's step-down adjustment of a family of p-values
    convergence           epochs to reach 95 % of the best validation value; area under the curve
    stability             largest drop between consecutive epochs, sd and gain over the last third
"""
import math
import warnings
from collections.abc import Callable, Iterator

import numpy as np
from scipy.stats import norm, rankdata


# --------------------------------------------------------------------------- bootstrap

def resample_indices(groups, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Row indices of `n_resamples` cluster-bootstrap samples.

    `groups` holds one cluster id (the patient) per row, or is an int N for N independent rows.
    Each sample draws as many clusters as there are, with replacement, and takes all rows of
    each drawn cluster, so a patient's images always move together.
    """
    groups = np.arange(groups) if isinstance(groups, (int, np.integer)) else np.asarray(groups)
    _, inverse = np.unique(groups, return_inverse=True)
    counts = np.bincount(inverse)
    order = np.argsort(inverse, kind="stable")           # rows grouped by cluster
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(counts), len(counts))
        lengths = counts[drawn]
        block_start = np.cumsum(lengths) - lengths      # where each drawn cluster lands in the sample
        yield order[np.repeat(starts[drawn] - block_start, lengths) + np.arange(lengths.sum())]


def bootstrap_distribution(statistic: Callable[[np.ndarray], float | np.ndarray], groups, *,
                           n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """`statistic(rows)` on every resample: shape (n_resamples,) or (n_resamples, *statistic shape)."""
    return np.array([statistic(rows) for rows in resample_indices(groups, n_resamples, seed)], dtype=np.float64)


def percentile_interval(distribution: np.ndarray, ci: float = 0.95) -> tuple:
    """The central `ci` percentile interval over axis 0, ignoring NaN resamples (a kappa can be
    undefined on a resample); NaN where every resample is NaN."""
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        low, high = np.nanpercentile(distribution, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    return low, high


def bootstrap_ci(statistic: Callable[[np.ndarray], float], groups, *, n_resamples: int = 1000,
                 ci: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(point estimate on all rows, ci_low, ci_high): percentile bootstrap over clusters."""
    n = groups if isinstance(groups, (int, np.integer)) else len(groups)
    point = float(statistic(np.arange(n)))
    low, high = percentile_interval(bootstrap_distribution(statistic, groups, n_resamples=n_resamples, seed=seed), ci)
    return point, float(low), float(high)


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided p-value for 'the difference is 0' from its bootstrap distribution: twice the
    smaller tail beyond 0 (resamples exactly at 0 count in both tails, add-one smoothed), at
    most 1. The smallest level at which the percentile interval would exclude 0."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan
    below = (1 + np.count_nonzero(d <= 0)) / (d.size + 1)
    above = (1 + np.count_nonzero(d >= 0)) / (d.size + 1)
    return float(min(1.0, 2 * min(below, above)))


def paired_bootstrap(statistic_a: Callable[[np.ndarray], float], statistic_b: Callable[[np.ndarray], float],
                     groups, *, n_resamples: int = 1000, ci: float = 0.95, seed: int = 0) -> dict:
    """A - B for two statistics of the same rows (two models on the same test images), both
    evaluated on each resample: point difference, percentile CI and two-sided p-value."""
    n = groups if isinstance(groups, (int, np.integer)) else len(groups)
    everything = np.arange(n)
    a, b = float(statistic_a(everything)), float(statistic_b(everything))
    both = bootstrap_distribution(lambda rows: (statistic_a(rows), statistic_b(rows)), groups,
                                  n_resamples=n_resamples, seed=seed)
    differences = both[:, 0] - both[:, 1]
    low, high = percentile_interval(differences, ci)
    return {"a": a, "b": b, "difference": a - b, "ci_low": float(low), "ci_high": float(high),
            "p_value": bootstrap_p_value(differences)}


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values of one family of tests (same order as given).

    With the m finite p-values sorted ascending, p(1) <= ... <= p(m), the i-th is adjusted to
    max over j <= i of min(1, (m - j + 1) p(j)); rejecting where the adjusted value is below alpha
    keeps the chance of any false rejection in the family at most alpha. NaN p-values (a test that
    could not be run) stay NaN and do not count in m."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, math.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    adjusted = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adjusted) if m else adjusted
    return out


# --------------------------------------------------------------------------- DeLong

def _delong_components(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components via midranks (Sun & Xu 2014): V10 (one per positive, the
    share of negatives it outscores) and V01 (one per negative, the share of positives above it)."""
    pos, neg = scores[positive], scores[~positive]
    m, n = len(pos), len(neg)
    combined = rankdata(np.concatenate([pos, neg]))
    v10 = (combined[:m] - rankdata(pos)) / n
    v01 = 1.0 - (combined[m:] - rankdata(neg)) / m
    return v10, v01


def delong_test(positive: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, ci: float = 0.95) -> dict:
    """DeLong, DeLong & Clarke-Pearson (1988): are two AUROCs on the same images different?

    positive: (N,) 0/1 truth; scores_a, scores_b: (N,) scores of the positive class, or (S, N)
    for S seeds of each model: the AUROC is then the mean over seeds (a mean of U-statistics is
    a U-statistic whose structural components are the means of the seeds' components), so one
    test covers the seed-averaged difference. Images are taken as independent (DeLong's
    assumption). Returns auroc_a, auroc_b, difference, se, ci_low, ci_high (normal approximation,
    clipped to [-1, 1]), z, p_value (NaN where the variance estimate is 0 but the AUROCs differ).
    """
    positive = np.asarray(positive).astype(bool)
    if positive.all() or not positive.any():
        raise ValueError("DeLong's test needs both positive and negative images")
    components = []
    for scores in (scores_a, scores_b):
        scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
        parts = [_delong_components(positive, row) for row in scores]
        components.append((np.mean([p[0] for p in parts], axis=0), np.mean([p[1] for p in parts], axis=0)))
    (v10_a, v01_a), (v10_b, v01_b) = components
    auroc_a, auroc_b = float(v10_a.mean()), float(v10_b.mean())
    m, n = len(v10_a), len(v01_a)
    # var(A - B) = var(V10_A - V10_B) / m + var(V01_A - V01_B) / n (sample variances)
    variance = ((np.var(v10_a - v10_b, ddof=1) if m > 1 else 0.0) / m
                + (np.var(v01_a - v01_b, ddof=1) if n > 1 else 0.0) / n)
    difference = auroc_a - auroc_b
    se = math.sqrt(max(variance, 0.0))
    if se > 0:
        z = difference / se
        p_value = float(2 * norm.sf(abs(z)))
    elif difference == 0:  # the same ranking: no evidence of a difference
        z, p_value = 0.0, 1.0
    else:  # zero variance estimate with a difference (both AUROCs at 0 or 1, e.g. a tiny test set): undefined
        z, p_value = math.nan, math.nan
    half = norm.ppf(0.5 + ci / 2) * se
    return {"auroc_a": auroc_a, "auroc_b": auroc_b, "difference": difference, "se": se,
            "ci_low": float(max(-1.0, difference - half)), "ci_high": float(min(1.0, difference + half)),
            "z": z, "p_value": p_value}


# --------------------------------------------------------------------------- learning curves

def convergence(epochs, values, fraction: float = 0.95) -> dict:
    """How fast a validation curve gets there (the paper's convergence claim, Section 5.3).

    epochs_to_target: first epoch whose value reaches `fraction` of the curve's best (for a best
    <= 0, e.g. a kappa, the threshold is best - (1 - fraction) * |best|); curve_auc: the area
    under the curve (trapezoids over the epochs logged) divided by the epoch span, i.e. the
    curve's mean height in metric units (one epoch: that value). NaN values are left out.
    """
    epochs = np.asarray(epochs, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(values)
    epochs, values = epochs[keep], values[keep]
    if len(values) == 0:
        return {"best": math.nan, "best_epoch": math.nan, "epochs_to_target": math.nan, "curve_auc": math.nan}
    order = np.argsort(epochs, kind="stable")
    epochs, values = epochs[order], values[order]
    best = float(values.max())
    threshold = best - (1 - fraction) * abs(best)
    span = epochs[-1] - epochs[0]
    area = float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(epochs)) / span) if span > 0 else float(values[0])
    return {"best": best, "best_epoch": int(epochs[values.argmax()]),
            "epochs_to_target": int(epochs[np.argmax(values >= threshold)]), "curve_auc": area}


def stability(epochs, values) -> dict:
    """How steady a learning curve is (the paper's "stable" convergence and the "sharp ditches" of
    IN on Messidor, Section 5.3), in the curve's units. With the n logged epochs in order and
    k = ceil(n / 3) (the last third):

    max_drop   the largest fall between consecutive epochs, max(v[i-1] - v[i]), 0 if it never
               falls; NaN for one epoch
    tail_sd    the sd (ddof 1) of the last k values; NaN when k < 2 (fewer than 4 epochs)
    late_gain  v[n] - v[n-k], what the last third added: a curve still rising at the end has not
               converged in the epochs it was given; NaN for one epoch
    NaN values are left out first."""
    epochs = np.asarray(epochs, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(values)
    values = values[keep][np.argsort(epochs[keep], kind="stable")]
    n = len(values)
    if n < 2:
        return {"max_drop": math.nan, "tail_sd": math.nan, "late_gain": math.nan}
    k = math.ceil(n / 3)
    return {"max_drop": float(max(0.0, np.max(values[:-1] - values[1:]))),
            "tail_sd": float(np.std(values[-k:], ddof=1)) if k >= 2 else math.nan,
            "late_gain": float(values[-1] - values[-k - 1])}
