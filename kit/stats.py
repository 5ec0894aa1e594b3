"""The statistics a reviewer asks for: bootstrap intervals, tests that carry the training noise,
Holm, DeLong, convergence.

The unit of replication is the training run: a verdict about a pretraining arm must hold across
networks trained with other seeds, not only for the networks at hand. The test split is small too
(a few hundred images, often several per patient), so every number carries two noises:
    resample_weights      the (cluster) bootstrap as multiplicities: how often each patient is drawn
                          in each resample (a patient's images move together), in chunks
    resampled_metrics     a metric of several networks on every resample at once, with array
                          operations: per-patient confusion counts times the multiplicities (accuracy,
                          balanced accuracy, kappa, quadratic kappa), weighted ranks (AUROC) and
                          weighted precision (average precision)
    percentile_interval, bootstrap_p_value   one network: percentile CI and two-sided p over patients
    two_level             several seeds: the spread across seeds (training noise) plus the patient
                          bootstrap of the seed-mean (test noise) -> se, Welch's degrees of freedom,
                          t interval and p
    t_test                the same from given variances (the learning-curve measures)
    value_se              the largest binomial standard error of a value measured on n images
    holm                  Holm's step-down adjustment of a family of p-values
    delong_test           DeLong's test for two correlated binary AUROCs on the same images
    convergence, stability, first_reaching   how a learning curve gets there and how steadily
"""
import math
import warnings
from collections.abc import Iterator

import numpy as np
from scipy.stats import rankdata
from scipy.stats import t as student_t

DEFAULT_RESAMPLES = 10_000   # Holm over 10 comparisons asks p < 0.005 first: 2/(B + 1) must sit well below
RESAMPLE_CHUNK = 1000        # resamples held in memory at once: (chunk x patients) multiplicities
# Below this many test patients in some class a percentile interval is decided by a handful of
# patients (one patient moves that class's recall by 10 points or more): the report prints the
# estimate with "too few test patients for an interval" and the claims that need it are not tested.
MIN_PATIENTS_PER_CLASS = 10
CONFUSION_METRICS = ("accuracy", "balanced_accuracy", "kappa", "qwk")


# --------------------------------------------------------------------------- the patient bootstrap

def patient_index(groups) -> tuple[np.ndarray, int]:
    """(the patient of each row as 0..P-1, P) from one cluster id per row, or an int N for N
    independent rows."""
    groups = np.arange(groups) if isinstance(groups, (int, np.integer)) else np.asarray(groups)
    if groups.size == 0:
        return np.zeros(0, dtype=np.int64), 0
    _, inverse = np.unique(groups, return_inverse=True)
    inverse = inverse.ravel()
    return inverse, int(inverse.max()) + 1


def resample_weights(n_patients: int, n_resamples: int, seed: int,
                     chunk: int = RESAMPLE_CHUNK) -> Iterator[np.ndarray]:
    """Multiplicities of the cluster bootstrap, `chunk` resamples at a time: (b, n_patients) float32,
    row r = how often each patient is drawn in resample r (n_patients draws with replacement, so a
    row sums to n_patients). The stream of draws does not depend on `chunk`."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        drawn = rng.integers(0, n_patients, (b, n_patients)) + n_patients * np.arange(b)[:, None]
        yield np.bincount(drawn.ravel(), minlength=b * n_patients).reshape(b, n_patients).astype(np.float32)


def confusion_metrics(confusion: np.ndarray, names=CONFUSION_METRICS) -> dict[str, np.ndarray]:
    """Metrics of a stack of confusion matrices (..., C, C), rows = true class: the formulas of
    kit/metrics.py for every matrix at once (NaN where undefined: kappa without chance disagreement,
    balanced accuracy without any class present)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    n = confusion.sum(axis=(-2, -1))
    support = confusion.sum(axis=-1)
    predicted = confusion.sum(axis=-2)
    diagonal = np.diagonal(confusion, axis1=-2, axis2=-1)
    i, j = np.indices(confusion.shape[-2:])
    values = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for name in names:
            if name == "accuracy":
                values[name] = np.where(n > 0, diagonal.sum(axis=-1) / n, math.nan)
            elif name == "balanced_accuracy":  # mean recall over the classes present
                present = support > 0
                recall = np.where(present, diagonal / np.where(present, support, 1), 0.0)
                count = present.sum(axis=-1)
                values[name] = np.where(count > 0, recall.sum(axis=-1) / np.maximum(count, 1), math.nan)
            elif name in ("kappa", "qwk"):
                w = (i != j).astype(np.float64) if name == "kappa" else (i - j).astype(np.float64) ** 2
                expected = support[..., :, None] * predicted[..., None, :] / np.where(n > 0, n, 1)[..., None, None]
                chance = (w * expected).sum(axis=(-2, -1))
                observed = (w * confusion).sum(axis=(-2, -1))
                values[name] = np.where((chance > 0) & (n > 0), 1.0 - observed / np.where(chance > 0, chance, 1),
                                        math.nan)
            else:
                raise ValueError(f"not a confusion-matrix metric: {name!r} (one of {CONFUSION_METRICS})")
    return values


def _tie_groups(scores: np.ndarray, descending: bool):
    """(order, start of each run of equal scores in that order or None when all differ) of the scores
    sorted ascending or descending."""
    order = np.argsort(-scores if descending else scores, kind="stable")
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return order, (None if len(starts) == len(scores) else starts)


def _grouped(values: np.ndarray, starts) -> np.ndarray:
    """Sums over each tie group (columns), or the values themselves when no two scores tie."""
    return values if starts is None else np.add.reduceat(values, starts, axis=1)


def weighted_auroc(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC of one score column under each row of `weights` (b, N) (ties count one half):
    the AUROC of the resample in which image i appears weights[r, i] times. NaN without both classes.
    Integer weights in float32 sum exactly below 2**24; the products are summed in float64."""
    positive = np.asarray(positive, dtype=bool)
    order, starts = _tie_groups(np.asarray(scores, dtype=np.float64), descending=False)
    w = np.asarray(weights, dtype=np.float32)[:, order]
    pos = _grouped(w * positive[order], starts)
    neg = _grouped(w, starts) - pos
    below = np.cumsum(neg, axis=1) - 0.5 * neg  # negatives scored lower, ties counting one half
    pairs = pos.sum(axis=1, dtype=np.float64) * neg.sum(axis=1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pairs > 0, (pos * below).sum(axis=1, dtype=np.float64) / pairs, math.nan)


def weighted_average_precision(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """scikit-learn's average precision (precision at each distinct score, weighted by the recall it
    adds) under each row of `weights` (b, N); NaN without a positive."""
    positive = np.asarray(positive, dtype=bool)
    order, starts = _tie_groups(np.asarray(scores, dtype=np.float64), descending=True)
    w = np.asarray(weights, dtype=np.float64)[:, order]
    pos = _grouped(w * positive[order], starts)
    true_pos = np.cumsum(pos, axis=1)
    false_pos = np.cumsum(_grouped(w, starts) - pos, axis=1)
    total = true_pos[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(true_pos + false_pos > 0, true_pos / (true_pos + false_pos), 0.0)
        gained = np.diff(true_pos, axis=1, prepend=0.0) / total
        return np.where(total[:, 0] > 0, (gained * precision).sum(axis=1), math.nan)


def _macro(columns: list[np.ndarray]) -> np.ndarray:
    """Mean over the columns defined in each resample (NaN where none is), as kit/metrics.py's macro AUROC."""
    stacked = np.stack(columns, axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample where no column is defined
        return np.nanmean(stacked, axis=-1)


def resampled_metrics(task: str, names, probs, targets, groups, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, K, len(names)) metric values of K networks on every cluster-bootstrap resample.

    task 'multiclass' (probs: K arrays (N, C), targets (N,) class indices; names among accuracy,
    balanced_accuracy, kappa, qwk, auroc) or 'multilabel' (probs: K arrays (N, L), targets (N, L) 0/1;
    names among auroc, map). The K networks share every resample, so their differences are paired.
    Each value equals kit/metrics.py's metric on the resample's rows (images repeated as drawn)."""
    names = tuple(names)
    probs = [np.asarray(p, dtype=np.float64) for p in probs]
    targets = np.asarray(targets)
    inverse, n_patients = patient_index(groups)
    out = np.empty((n_resamples, len(probs), len(names)))
    # --- per patient: counts of each (true, predicted) cell, every network side by side
    confusion_names = [n for n in names if n in CONFUSION_METRICS] if task == "multiclass" else []
    if confusion_names:
        classes = probs[0].shape[1]
        cells = targets.astype(np.int64) * classes
        per_patient = np.zeros((n_patients, len(probs) * classes * classes), np.float32)
        for k, p in enumerate(probs):
            np.add.at(per_patient, (inverse, k * classes * classes + cells + p.argmax(axis=1)), 1.0)
    labels = (np.eye(probs[0].shape[1], dtype=bool)[targets] if task == "multiclass" else targets > 0) \
        if probs else None
    start = 0
    for chunk in resample_weights(n_patients, n_resamples, seed):
        b = len(chunk)
        rows = chunk[:, inverse]  # (b, N): how often each image is in the resample
        if confusion_names:  # float32 counts: exact below 2**24 images
            found = confusion_metrics((chunk @ per_patient).reshape(b, len(probs), classes, classes), confusion_names)
        for m, name in enumerate(names):
            if name in confusion_names:
                out[start:start + b, :, m] = found[name]
            elif name in ("auroc", "map") and (name == "auroc" or task == "multilabel"):
                score = weighted_auroc if name == "auroc" else weighted_average_precision
                for k, p in enumerate(probs):
                    out[start:start + b, k, m] = _macro([score(labels[:, c], p[:, c], rows) for c in range(p.shape[1])])
            else:
                raise ValueError(f"unknown {task} metric {name!r}")
        start += b
    return out


def percentile_interval(distribution: np.ndarray, ci: float = 0.95) -> tuple:
    """The central `ci` percentile interval over axis 0, ignoring NaN resamples (a kappa can be
    undefined on a resample); NaN where every resample is NaN."""
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        low, high = np.nanpercentile(distribution, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    return low, high


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided p-value for 'the difference is 0' from its bootstrap distribution: twice the
    smaller tail beyond 0 (resamples exactly at 0 count in both tails, add-one smoothed), at
    most 1. The smallest level at which the percentile interval would exclude 0. On a discrete
    metric many resamples can sit exactly at 0: the interval then ends at 0 while p stays large."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan
    below = (1 + np.count_nonzero(d <= 0)) / (d.size + 1)
    above = (1 + np.count_nonzero(d >= 0)) / (d.size + 1)
    return float(min(1.0, 2 * min(below, above)))


# --------------------------------------------------------------------------- seeds and patients together

def t_test(estimate: float, seed_variance: float, seed_df: float, test_variance: float, ci: float = 0.95) -> dict:
    """Test 'the true value is 0' for an estimate whose variance has two parts: one estimated from a
    few training runs (seed_variance, with seed_df degrees of freedom) and one known well (the test
    sampling, from a bootstrap over hundreds of patients or a binomial bound: infinite df).

    se = sqrt(seed_variance + test_variance); Welch-Satterthwaite degrees of freedom
    df = se^4 / (seed_variance^2 / seed_df) (infinite without a seed part); the interval
    estimate ± t(df) se and the two-sided p of t = estimate / se. A zero se gives p = 1 for a zero
    estimate and 0 otherwise. Returns estimate, se, df, ci_low, ci_high, p_value."""
    seed_variance, test_variance = max(float(seed_variance), 0.0), max(float(test_variance), 0.0)
    variance = seed_variance + test_variance
    se = math.sqrt(variance)
    df = variance ** 2 / (seed_variance ** 2 / seed_df) if seed_variance > 0 and seed_df > 0 else math.inf
    if not math.isfinite(estimate) or not math.isfinite(se):
        return {"estimate": estimate, "se": se, "df": df, "ci_low": math.nan, "ci_high": math.nan,
                "p_value": math.nan}
    if se > 0:
        p_value = float(2 * student_t.sf(abs(estimate) / se, df))
        half = float(student_t.ppf(0.5 + ci / 2, df)) * se
    else:
        p_value, half = (1.0 if estimate == 0 else 0.0), 0.0
    return {"estimate": float(estimate), "se": se, "df": df, "ci_low": estimate - half, "ci_high": estimate + half,
            "p_value": p_value}


def one_sided_p(estimate: float, bound: float, se: float, df: float) -> float:
    """p of 'the true value is at most `bound`' against 'it is larger' (t with df; se 0: 0 or 1)."""
    if not (math.isfinite(estimate) and math.isfinite(se)):
        return math.nan
    if se == 0:
        return 0.0 if estimate > bound else 1.0
    return float(student_t.sf((estimate - bound) / se, df))


def two_level(points, resampled, ci: float = 0.95) -> dict:
    """A seed-mean statistic (an arm's metric, or the difference of two arms) with both noises.

    points: (S,) the statistic of each seed on all test patients; resampled: (B, S) the same on each
    patient resample, the same patients drawn for every seed (every run is tested on the same
    patients). With S >= 2 the estimate is the seed-mean, its variance the across-seed variance / S
    (training noise, S - 1 degrees of freedom) plus the bootstrap variance of the seed-mean (test
    noise), and the interval and p come from t_test. With one seed the training noise is not
    measured: the percentile interval and bootstrap p over patients of that one network.
    Returns estimate, se, df, ci_low, ci_high, p_value, seed_sd, test_se, n_seeds."""
    points = np.asarray(points, dtype=np.float64)
    resampled = np.asarray(resampled, dtype=np.float64).reshape(len(resampled), len(points))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample where every seed's metric is undefined
        seed_mean = np.nanmean(resampled, axis=1)
    finite = seed_mean[np.isfinite(seed_mean)]
    test_se = float(np.std(finite, ddof=1)) if finite.size > 1 else math.nan
    if len(points) == 1:
        low, high = percentile_interval(seed_mean, ci)
        return {"estimate": float(points[0]), "se": test_se, "df": math.inf, "ci_low": float(low),
                "ci_high": float(high), "p_value": bootstrap_p_value(seed_mean), "seed_sd": math.nan,
                "test_se": test_se, "n_seeds": 1}
    seed_sd = float(np.std(points, ddof=1))
    found = t_test(float(points.mean()), seed_sd ** 2 / len(points), len(points) - 1,
                   test_se ** 2 if math.isfinite(test_se) else 0.0, ci)
    return found | {"seed_sd": seed_sd, "test_se": test_se, "n_seeds": len(points)}


def value_se(metric: str, n_images) -> float:
    """The largest binomial standard error of a value measured on n images, as a fraction: 0.5/sqrt(n)
    for an accuracy (at 50 %); twice that for the other metrics (a kappa divides the accuracy's
    noise by 1 - chance agreement, which is at least 1/2 when chance agreement is at most 1/2).
    NaN when n is unknown."""
    if n_images is None or not n_images or n_images != n_images:
        return math.nan
    return (0.5 if metric == "accuracy" else 1.0) / math.sqrt(float(n_images))


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
    a U-statistic whose structural components are the means of the seeds' components), and with
    S >= 2 the seeds' spread of the AUROC difference joins DeLong's variance as in two_level
    (t with Welch's degrees of freedom), so the test is about the arms, not these networks.
    Images are taken as independent (DeLong's assumption). Returns auroc_a, auroc_b, difference,
    se, df, ci_low, ci_high (clipped to [-1, 1]), z, p_value (NaN where the variance estimate is 0
    but the AUROCs differ)."""
    positive = np.asarray(positive).astype(bool)
    if positive.all() or not positive.any():
        raise ValueError("DeLong's test needs both positive and negative images")
    components, per_seed = [], []
    for scores in (scores_a, scores_b):
        scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
        parts = [_delong_components(positive, row) for row in scores]
        per_seed.append([p[0].mean() for p in parts])
        components.append((np.mean([p[0] for p in parts], axis=0), np.mean([p[1] for p in parts], axis=0)))
    (v10_a, v01_a), (v10_b, v01_b) = components
    auroc_a, auroc_b = float(v10_a.mean()), float(v10_b.mean())
    m, n = len(v10_a), len(v01_a)
    # var(A - B) = var(V10_A - V10_B) / m + var(V01_A - V01_B) / n (sample variances)
    variance = ((np.var(v10_a - v10_b, ddof=1) if m > 1 else 0.0) / m
                + (np.var(v01_a - v01_b, ddof=1) if n > 1 else 0.0) / n)
    difference = auroc_a - auroc_b
    seeds = len(per_seed[0])
    seed_variance = float(np.var(np.subtract(*per_seed), ddof=1)) / seeds if seeds > 1 else 0.0
    if seed_variance + variance > 0:
        found = t_test(difference, seed_variance, seeds - 1, variance, ci)
        z, p_value, se, df = difference / found["se"], found["p_value"], found["se"], found["df"]
        low, high = found["ci_low"], found["ci_high"]
    elif difference == 0:  # the same ranking: no evidence of a difference
        z, p_value, se, df, low, high = 0.0, 1.0, 0.0, math.inf, 0.0, 0.0
    else:  # zero variance estimate with a difference (both AUROCs at 0 or 1, e.g. a tiny test set): undefined
        z, p_value, se, df, low, high = math.nan, math.nan, 0.0, math.inf, difference, difference
    return {"auroc_a": auroc_a, "auroc_b": auroc_b, "difference": difference, "se": se, "df": df,
            "ci_low": float(max(-1.0, low)), "ci_high": float(min(1.0, high)), "z": z, "p_value": p_value}


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
    span = epochs[-1] - epochs[0]
    area = float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(epochs)) / span) if span > 0 else float(values[0])
    return {"best": best, "best_epoch": int(epochs[values.argmax()]),
            "epochs_to_target": first_reaching(epochs, values, share_of(best, fraction)), "curve_auc": area}


def share_of(value: float, fraction: float) -> float:
    """`fraction` of a value, for values <= 0 too (a kappa): value - (1 - fraction) * |value|."""
    return value - (1 - fraction) * abs(value)


def first_reaching(epochs, values, threshold: float) -> float:
    """The first epoch whose value is >= threshold; NaN when no value reaches it (NaN values left out)."""
    epochs = np.asarray(epochs, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(values)
    epochs, values = epochs[keep], values[keep]
    order = np.argsort(epochs, kind="stable")
    reached = np.flatnonzero(values[order] >= threshold)
    return float(epochs[order][reached[0]]) if reached.size else math.nan


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
