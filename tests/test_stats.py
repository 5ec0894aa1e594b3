"""kit.stats: bootstrap CIs (by patient), paired tests, DeLong, convergence."""
import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from kit import metrics, stats


def mean_of(values):
    values = np.asarray(values, dtype=float)
    return lambda rows: values[rows].mean()


def test_bootstrap_hand_case_three_patients():
    # Resampling 3 patients with values [0, 0, 1]: the mean is 1 only when all three draws are the
    # last patient, probability 1/27 = 3.7 % > 2.5 %, so the 97.5th percentile is 1; the mean is 0
    # with probability 8/27 > 2.5 %, so the 2.5th percentile is 0.
    point, low, high = stats.bootstrap_ci(mean_of([0, 0, 1]), 3, n_resamples=4000, seed=1)
    assert (point, low, high) == (pytest.approx(1 / 3), 0.0, 1.0)
    # ... and the resampled means take exactly the four values k/3 with binomial(3, 1/3) frequencies.
    distribution = stats.bootstrap_distribution(mean_of([0, 0, 1]), 3, n_resamples=4000, seed=1)
    values, counts = np.unique(np.round(distribution * 3).astype(int), return_counts=True)
    assert list(values) == [0, 1, 2, 3]
    assert counts / 4000 == pytest.approx([8 / 27, 12 / 27, 6 / 27, 1 / 27], abs=0.025)


def test_bootstrap_matches_the_normal_approximation_of_a_proportion():
    correct = np.r_[np.ones(320), np.zeros(80)]  # accuracy 0.8 on 400 independent images
    point, low, high = stats.bootstrap_ci(mean_of(correct), len(correct), n_resamples=2000, seed=0)
    half = 1.96 * math.sqrt(0.8 * 0.2 / 400)  # 0.039
    assert point == 0.8
    assert low == pytest.approx(0.8 - half, abs=0.01) and high == pytest.approx(0.8 + half, abs=0.01)


def test_bootstrap_is_seeded():
    groups = np.repeat(np.arange(20), 3)
    values = np.random.default_rng(0).uniform(size=60)
    first = stats.bootstrap_ci(mean_of(values), groups, seed=7)
    assert stats.bootstrap_ci(mean_of(values), groups, seed=7) == first
    assert stats.bootstrap_ci(mean_of(values), groups, seed=8) != first


def test_resampling_moves_whole_patients():
    groups = np.array(["a"] * 5 + ["b"] * 1 + ["c"] * 3)
    for rows in stats.resample_indices(groups, 200, seed=0):
        drawn = groups[rows]
        counts = {g: int((drawn == g).sum()) for g in "abc"}
        assert counts["a"] % 5 == 0 and counts["c"] % 3 == 0  # all of a patient's images, or none
        assert len(rows) == 5 * counts["a"] // 5 + counts["b"] + counts["c"]
        # the images of one drawn patient are its own rows
        assert set(rows[drawn == "a"]) <= {0, 1, 2, 3, 4}


def test_patient_level_interval_is_wider_when_a_patients_images_agree():
    # 60 patients x 10 images; a patient's images are all right or all wrong (accuracy 0.5). Image-level
    # resampling sees 600 independent images (sd 0.020); patient-level sees 60 patients (sd 0.065).
    correct = np.repeat(np.arange(60) % 2, 10).astype(float)
    patients = np.repeat(np.arange(60), 10)
    _, low_img, high_img = stats.bootstrap_ci(mean_of(correct), len(correct), n_resamples=2000, seed=0)
    _, low_pat, high_pat = stats.bootstrap_ci(mean_of(correct), patients, n_resamples=2000, seed=0)
    width_img, width_pat = high_img - low_img, high_pat - low_pat
    assert width_img == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 600), rel=0.15)
    assert width_pat == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 60), rel=0.15)
    assert width_pat / width_img == pytest.approx(math.sqrt(10), rel=0.2)


def test_percentile_interval_ignores_undefined_resamples():
    low, high = stats.percentile_interval(np.array([np.nan, 0.2, 0.4, np.nan, 0.3]), 0.5)
    assert (low, high) == (pytest.approx(0.25), pytest.approx(0.35))
    assert all(math.isnan(v) for v in stats.percentile_interval(np.full(5, np.nan)))


def test_paired_bootstrap_of_a_model_with_itself_is_p_1():
    rng = np.random.default_rng(0)
    probs, targets = rng.dirichlet(np.ones(3), 90), rng.integers(0, 3, 90)
    kappa = lambda rows: metrics.multiclass_metrics(probs[rows], targets[rows], ("kappa",))["kappa"]  # noqa: E731
    result = stats.paired_bootstrap(kappa, kappa, np.repeat(np.arange(30), 3), seed=0)
    assert result["difference"] == 0 and result["ci_low"] == 0 and result["ci_high"] == 0
    assert result["p_value"] == 1.0


def test_paired_bootstrap_detects_a_clear_difference_and_its_sign():
    truth = np.random.default_rng(1).uniform(size=200) < 0.9  # A right on 90 %, B on 50 %
    other = np.random.default_rng(2).uniform(size=200) < 0.5
    result = stats.paired_bootstrap(mean_of(truth), mean_of(other), 200, seed=0)
    assert result["difference"] == pytest.approx(truth.mean() - other.mean())
    assert 0 < result["ci_low"] < result["difference"] < result["ci_high"]
    assert result["p_value"] == pytest.approx(2 / 1001)  # no resample at or below 0: the smallest p
    assert stats.bootstrap_p_value(np.array([-1.0, 1.0, 2.0, 3.0])) == pytest.approx(2 * 2 / 5)


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
    # several seeds: the test of the seed-averaged AUROCs
    seeds = stats.delong_test(positive, np.stack([scores_a, scores_a]), np.stack([scores_b, scores_a]))
    assert seeds["auroc_b"] == pytest.approx((result["auroc_b"] + result["auroc_a"]) / 2)
    # a perfect and a perfectly wrong ranking of 4 images: DeLong's variance estimate is 0, the p-value undefined
    degenerate = stats.delong_test(np.array([1, 1, 0, 0]), [0.9, 0.8, 0.1, 0.2], [0.1, 0.2, 0.9, 0.8])
    assert degenerate["difference"] == 1.0 and math.isnan(degenerate["p_value"]) and degenerate["ci_high"] == 1.0
    with pytest.raises(ValueError, match="both positive and negative"):
        stats.delong_test(np.ones(4), scores_a[:4], scores_b[:4])


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
