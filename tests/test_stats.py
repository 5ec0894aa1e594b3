"""kit.stats: the patient bootstrap as multiplicities (every resample at once), the tests that add the seeds'
spread (two_level, t_test), Holm, DeLong, convergence and stability."""
import math

import numpy as np
import pytest
from scipy.stats import norm
from scipy.stats import t as student_t
from sklearn.metrics import roc_auc_score

from kit import metrics, stats


def answers(correct, classes=2):
    """(probs, targets) of a network right exactly where `correct` is True."""
    correct = np.asarray(correct, dtype=bool)
    targets = np.arange(len(correct)) % classes
    pred = np.where(correct, targets, (targets + 1) % classes)
    return np.eye(classes)[pred] * 0.9 + 0.1 / classes, targets


def accuracy_distribution(correct, groups, n_resamples, seed=0):
    probs, targets = answers(correct)
    return stats.resampled_metrics("multiclass", ("accuracy",), [probs], targets, groups, n_resamples, seed)[:, 0, 0]


# --------------------------------------------------------------------------- the patient bootstrap

def test_bootstrap_hand_case_three_patients():
    # Resampling 3 patients with values [0, 0, 1]: the mean is k/3 with binomial(3, 1/3) frequencies: 1 with
    # probability 1/27 = 3.7 % > 2.5 % (so the 97.5th percentile is 1), 0 with 8/27 (the 2.5th is 0).
    distribution = accuracy_distribution([False, False, True], 3, 4000, seed=1)
    values, counts = np.unique(np.round(distribution * 3).astype(int), return_counts=True)
    assert list(values) == [0, 1, 2, 3]
    assert counts / 4000 == pytest.approx([8 / 27, 12 / 27, 6 / 27, 1 / 27], abs=0.025)
    assert [float(v) for v in stats.percentile_interval(distribution)] == [0.0, 1.0]


def test_bootstrap_matches_the_normal_approximation_of_a_proportion():
    correct = np.r_[np.ones(320), np.zeros(80)]  # accuracy 0.8 on 400 independent images
    low, high = stats.percentile_interval(accuracy_distribution(correct, 400, 2000))
    half = 1.96 * math.sqrt(0.8 * 0.2 / 400)  # 0.039
    assert low == pytest.approx(0.8 - half, abs=0.01) and high == pytest.approx(0.8 + half, abs=0.01)


def test_resample_weights_are_seeded_whole_and_independent_of_the_chunk_size():
    chunks = list(stats.resample_weights(7, 2500, seed=3, chunk=1000))
    assert [len(c) for c in chunks] == [1000, 1000, 500] and all(c.dtype == np.float32 for c in chunks)
    weights = np.concatenate(chunks)
    assert (weights.sum(axis=1) == 7).all() and (weights >= 0).all()  # 7 draws of 7 patients each time
    assert np.array_equal(weights, np.concatenate(list(stats.resample_weights(7, 2500, seed=3, chunk=300))))
    assert not np.array_equal(weights, np.concatenate(list(stats.resample_weights(7, 2500, seed=4))))
    # each patient is drawn once per resample on average
    assert weights.mean(axis=0) == pytest.approx(np.ones(7), abs=0.06)


def test_resampling_moves_whole_patients():
    groups = np.array(["a"] * 5 + ["b"] * 1 + ["c"] * 3)
    inverse, n = stats.patient_index(groups)
    assert n == 3 and list(inverse) == [0] * 5 + [1] + [2] * 3
    # accuracy of a network right on a's images only: every resample holds all of a's 5 images or none
    correct = np.r_[np.ones(5), np.zeros(4)].astype(bool)
    distribution = accuracy_distribution(correct, groups, 500)
    weights = next(stats.resample_weights(3, 500, seed=0))
    images = weights[:, inverse].sum(axis=1)
    assert distribution == pytest.approx(5 * weights[:, 0] / images)


@pytest.mark.parametrize("classes", [2, 4])
def test_every_metric_of_every_resample_equals_kit_metrics_on_the_drawn_rows(classes):
    rng = np.random.default_rng(classes)
    n = 120
    probs = [rng.dirichlet(np.ones(classes), n).round(2) for _ in range(3)]  # rounded: tied scores
    targets = rng.integers(0, classes, n)
    groups = np.repeat(np.arange(60), 2)
    found = stats.resampled_metrics("multiclass", metrics.MULTICLASS_METRICS, probs, targets, groups, 40, seed=5)
    inverse, n_patients = stats.patient_index(groups)
    weights = next(stats.resample_weights(n_patients, 40, seed=5))
    for r in range(40):
        rows = np.repeat(np.arange(n), weights[r, inverse].astype(int))  # each image as often as drawn
        for k, p in enumerate(probs):
            expected = metrics.multiclass_metrics(p[rows], targets[rows])
            assert found[r, k] == pytest.approx([expected[m] for m in metrics.MULTICLASS_METRICS], nan_ok=True)


def test_multilabel_metrics_of_every_resample():
    rng = np.random.default_rng(0)
    targets = (rng.uniform(size=(90, 5)) < 0.2).astype(int)
    targets[:, 4] = 0  # a label never present: left out of both macro means, as kit/metrics.py does
    probs = rng.uniform(size=(90, 5)).round(1)
    found = stats.resampled_metrics("multilabel", ("auroc", "map"), [probs], targets, 90, 30, seed=2)
    weights = next(stats.resample_weights(90, 30, seed=2))
    for r in range(30):
        rows = np.repeat(np.arange(90), weights[r].astype(int))
        expected = metrics.multilabel_metrics(probs[rows], targets[rows])
        assert found[r, 0] == pytest.approx([expected["auroc"], expected["map"]])
    with pytest.raises(ValueError, match="unknown multilabel metric 'kappa'"):
        stats.resampled_metrics("multilabel", ("kappa",), [probs], targets, 90, 2, seed=0)


def test_confusion_metrics_by_hand():
    confusion = np.array([[[8, 2], [1, 9]], [[0, 0], [0, 5]]])  # the second: one class only, no chance disagreement
    found = stats.confusion_metrics(confusion)
    assert found["accuracy"] == pytest.approx([17 / 20, 1.0])
    assert found["balanced_accuracy"] == pytest.approx([(0.8 + 0.9) / 2, 1.0])
    expected = 1 - (3 / 20) / ((10 * 9 + 10 * 11) / 400)  # 1 - observed / chance disagreement
    assert found["kappa"][0] == pytest.approx(expected) and math.isnan(found["kappa"][1])


def test_patient_level_interval_is_wider_when_a_patients_images_agree():
    # 60 patients x 10 images; a patient's images are all right or all wrong (accuracy 0.5). Image-level
    # resampling sees 600 independent images (sd 0.020); patient-level sees 60 patients (sd 0.065).
    correct = np.repeat(np.arange(60) % 2, 10).astype(bool)
    by_image = stats.percentile_interval(accuracy_distribution(correct, 600, 2000))
    by_patient = stats.percentile_interval(accuracy_distribution(correct, np.repeat(np.arange(60), 10), 2000))
    width_img, width_pat = by_image[1] - by_image[0], by_patient[1] - by_patient[0]
    assert width_img == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 600), rel=0.15)
    assert width_pat == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 60), rel=0.15)
    assert width_pat / width_img == pytest.approx(math.sqrt(10), rel=0.2)


def test_percentile_interval_ignores_undefined_resamples():
    low, high = stats.percentile_interval(np.array([np.nan, 0.2, 0.4, np.nan, 0.3]), 0.5)
    assert (low, high) == (pytest.approx(0.25), pytest.approx(0.35))
    assert all(math.isnan(v) for v in stats.percentile_interval(np.full(5, np.nan)))


def test_bootstrap_p_value_by_hand():
    assert stats.bootstrap_p_value(np.array([-1.0, 1.0, 2.0, 3.0])) == pytest.approx(2 * 2 / 5)
    assert stats.bootstrap_p_value(np.ones(1000)) == pytest.approx(2 / 1001)  # the smallest p of 1000 resamples
    assert stats.bootstrap_p_value(np.zeros(10)) == 1.0 and math.isnan(stats.bootstrap_p_value(np.array([np.nan])))


# --------------------------------------------------------------------------- seeds and patients together

def test_t_test_by_hand():
    # estimate 2, seed variance 1 with 2 df, no test noise: t = 2 with 2 df
    found = stats.t_test(2.0, 1.0, 2, 0.0)
    assert found["se"] == 1.0 and found["df"] == pytest.approx(2.0)
    assert found["p_value"] == pytest.approx(2 * student_t.sf(2.0, 2))  # 0.1835
    assert found["ci_high"] - 2.0 == pytest.approx(student_t.ppf(0.975, 2))
    # Welch-Satterthwaite: (1 + 3)^2 / (1^2 / 2) = 32 degrees of freedom once the test noise joins
    mixed = stats.t_test(2.0, 1.0, 2, 3.0)
    assert mixed["se"] == 2.0 and mixed["df"] == pytest.approx(32.0)
    # no seed part: the normal distribution
    assert stats.t_test(1.96, 0.0, 2, 1.0)["p_value"] == pytest.approx(2 * norm.sf(1.96))
    assert stats.t_test(0.0, 0.0, 2, 0.0)["p_value"] == 1.0 and stats.t_test(1.0, 0.0, 2, 0.0)["p_value"] == 0.0
    assert stats.one_sided_p(3.0, 1.0, 1.0, math.inf) == pytest.approx(norm.sf(2.0))


def test_two_level_adds_the_seeds_spread_to_the_test_noise():
    rng = np.random.default_rng(0)
    points = np.array([0.02, 0.05, 0.08])                      # three seeds' differences
    resampled = points + rng.normal(0, 0.01, (4000, 1))          # the same patient draw moves every seed alike
    found = stats.two_level(points, resampled)
    seed_var = np.var(points, ddof=1) / 3
    test_var = np.var(resampled.mean(axis=1), ddof=1)
    assert found["estimate"] == pytest.approx(0.05) and found["n_seeds"] == 3
    assert found["se"] == pytest.approx(math.sqrt(seed_var + test_var))
    assert found["df"] == pytest.approx((seed_var + test_var) ** 2 / (seed_var ** 2 / 2))
    assert found["seed_sd"] == pytest.approx(0.03) and found["test_se"] == pytest.approx(0.01, rel=0.05)
    # the patient bootstrap alone would call this clearly non-zero; with the seeds it is not
    assert stats.bootstrap_p_value(resampled.mean(axis=1)) < 0.001 and found["p_value"] > 0.05
    # one seed: the percentile interval and bootstrap p of that network
    one = stats.two_level(points[:1], resampled[:, :1])
    assert one["df"] == math.inf and math.isnan(one["seed_sd"])
    assert (one["ci_low"], one["ci_high"]) == pytest.approx(tuple(stats.percentile_interval(resampled[:, 0])))
    # a network against itself: nothing to see, p = 1
    same = stats.two_level(np.zeros(3), np.zeros((100, 3)))
    assert same["p_value"] == 1.0 and same["ci_low"] == same["ci_high"] == 0.0


def test_value_se():
    assert stats.value_se("accuracy", 100) == pytest.approx(0.05)  # 50 / sqrt(100) points
    assert stats.value_se("kappa", 100) == pytest.approx(0.10)
    assert math.isnan(stats.value_se("accuracy", None)) and math.isnan(stats.value_se("accuracy", 0))


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005, math.nan]
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4 = 0.02, x3 = 0.03, x2 = 0.06, x1 = 0.04 -> running max 0.06
    assert np.allclose(stats.holm(p)[:4], [0.03, 0.06, 0.06, 0.02]) and math.isnan(stats.holm(p)[4])
    assert np.allclose(stats.holm([0.5, 0.6]), [1.0, 1.0]) and stats.holm([]).size == 0


# --------------------------------------------------------------------------- DeLong

def test_delong_single_model_hand_case():
    # positives 0.9, 0.6; negatives 0.7, 0.2: V10 = [1, 0.5], V01 = [0.5, 1], AUROC 0.75,
    # var = var(V10)/2 + var(V01)/2 = 0.125/2 + 0.125/2 (sample variances)
    positive = np.array([1, 1, 0, 0])
    scores = np.array([0.9, 0.6, 0.7, 0.2])
    v10, v01 = stats._delong_components(positive.astype(bool), scores)
    assert list(v10) == [1.0, 0.5] and list(v01) == [0.5, 1.0]
    # against a perfect model (V10 = V01 = 1, no variance, no covariance): z = -0.25 / sqrt(0.125)
    perfect = np.array([0.9, 0.8, 0.1, 0.2])
    result = stats.delong_test(positive, scores, perfect)
    assert result["auroc_a"] == 0.75 and result["auroc_b"] == 1.0
    assert result["se"] == pytest.approx(math.sqrt(0.125))
    assert result["z"] == pytest.approx(-0.25 / math.sqrt(0.125))
    assert result["p_value"] == pytest.approx(2 * norm.sf(0.25 / math.sqrt(0.125)))  # 0.4795
    assert result["ci_low"] == pytest.approx(-0.25 - 1.959964 * math.sqrt(0.125), abs=1e-5)


def test_delong_auroc_is_mann_whitney_and_self_comparison_is_p_1():
    rng = np.random.default_rng(3)
    positive = rng.uniform(size=150) < 0.4
    scores_a = positive * 0.8 + rng.normal(0, 0.6, 150)
    scores_b = np.round(positive * 0.5 + rng.normal(0, 0.6, 150), 1)  # ties
    result = stats.delong_test(positive, scores_a, scores_b)
    assert result["auroc_a"] == pytest.approx(roc_auc_score(positive, scores_a))
    assert result["auroc_b"] == pytest.approx(roc_auc_score(positive, scores_b))
    assert stats.delong_test(positive, scores_a, scores_a)["p_value"] == 1.0
    # several seeds: the test of the seed-averaged AUROCs, the seeds' spread added to DeLong's variance
    seeds = stats.delong_test(positive, np.stack([scores_a, scores_a]), np.stack([scores_b, scores_a]))
    assert seeds["auroc_b"] == pytest.approx((result["auroc_b"] + result["auroc_a"]) / 2)
    spread = (result["difference"] - 0.0) ** 2 / 2 / 2  # var of the two seeds' differences / 2 seeds
    assert seeds["se"] > math.sqrt(spread) and seeds["df"] < 100
    # a perfect and a perfectly wrong ranking of 4 images: DeLong's variance estimate is 0, the p-value undefined
    degenerate = stats.delong_test(np.array([1, 1, 0, 0]), [0.9, 0.8, 0.1, 0.2], [0.1, 0.2, 0.9, 0.8])
    assert degenerate["difference"] == 1.0 and math.isnan(degenerate["p_value"]) and degenerate["ci_high"] == 1.0
    with pytest.raises(ValueError, match="both positive and negative"):
        stats.delong_test(np.ones(4), scores_a[:4], scores_b[:4])


# --------------------------------------------------------------------------- learning curves

def test_convergence_hand_case():
    result = stats.convergence([1, 2, 3, 4, 5], [0.2, 0.5, 0.96, 1.0, 0.8])
    assert result["best"] == 1.0 and result["best_epoch"] == 4
    assert result["epochs_to_target"] == 3  # first value >= 0.95
    # trapezoids (0.35 + 0.73 + 0.98 + 0.9) over a span of 4 epochs
    assert result["curve_auc"] == pytest.approx(2.96 / 4)
    # a curve that never gets above 0 (a kappa): 95 % of the best means 5 % of |best| below it
    assert stats.convergence([1, 2, 3], [-0.5, -0.21, -0.2])["epochs_to_target"] == 2
    # undefined epochs are left out; one epoch is its own area
    result = stats.convergence([1, 2, 3], [np.nan, 0.5, 0.6])
    assert result["epochs_to_target"] == 3 and result["curve_auc"] == pytest.approx(0.55)
    assert stats.convergence([4], [0.7])["curve_auc"] == 0.7
    assert math.isnan(stats.convergence([1], [np.nan])["best"])


def test_first_reaching_a_common_threshold():
    assert stats.first_reaching([3, 1, 2], [0.9, 0.5, 0.8], 0.8) == 2  # epochs in any order
    assert math.isnan(stats.first_reaching([1, 2], [0.5, 0.6], 0.7))  # never
    assert stats.share_of(80.0, 0.95) == pytest.approx(76.0) and stats.share_of(-10.0, 0.95) == pytest.approx(-10.5)


def test_stability_by_hand():
    unsteady = [0.50, 0.55, 0.60, 0.70, 0.62, 0.75, 0.80, 0.82, 0.86, 0.88]
    found = stats.stability(range(1, 11), unsteady)
    assert found["max_drop"] == pytest.approx(0.08) and found["late_gain"] == pytest.approx(0.88 - 0.75)
    assert found["tail_sd"] == pytest.approx(np.std(unsteady[-4:], ddof=1))  # ceil(10 / 3) = 4 epochs
    two = stats.stability([1, 2], [0.5, 0.4])
    assert two["max_drop"] == pytest.approx(0.1) and math.isnan(two["tail_sd"]) and two["late_gain"] == pytest.approx(-0.1)
    assert math.isnan(stats.stability([1], [0.5])["max_drop"])
