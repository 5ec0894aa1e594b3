"""kit.metrics against values worked out by hand."""
import math

import numpy as np
import pytest

from kit import metrics


def test_multiclass_binary_hand_case():
    # preds argmax: [0, 1, 1, 1]; targets [0, 0, 1, 1]
    probs = np.array([[0.9, 0.1], [0.25, 0.75], [0.3, 0.7], [0.2, 0.8]])
    targets = np.array([0, 0, 1, 1])
    m = metrics.multiclass_metrics(probs, targets)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    # p_o = 0.75, p_e = 0.5*0.25 + 0.5*0.75 = 0.5 -> kappa = 0.25 / 0.5
    assert m["kappa"] == pytest.approx(0.5)
    # positives {0.7, 0.8} vs negatives {0.1, 0.75}: 3 of 4 pairs ordered, for both classes
    assert m["auroc"] == pytest.approx(0.75)
    assert set(m) == set(metrics.metric_names("multiclass"))


def test_quadratic_kappa_hand_case():
    targets = np.array([0, 1, 2, 2])
    preds = np.array([0, 2, 2, 1])
    probs = np.eye(3)[preds] * 0.9 + 0.05
    m = metrics.multiclass_metrics(probs, targets)
    # observed weighted disagreement 0.5/4; expected 5.5/16 with w = (i-j)^2 / 4 -> 1 - 0.125/0.34375
    assert m["qwk"] == pytest.approx(7 / 11)
    assert m["accuracy"] == pytest.approx(0.5)


def test_undefined_metrics_are_nan_not_errors():
    probs = np.array([[0.8, 0.2], [0.7, 0.3]])
    m = metrics.multiclass_metrics(probs, np.array([0, 0]))
    assert m["accuracy"] == 1.0
    assert math.isnan(m["auroc"])  # one class present
    assert math.isnan(m["kappa"])  # both raters use a single class


def test_multilabel_hand_case():
    targets = np.array([[1, 0], [0, 0], [1, 0], [0, 1]])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.3], [0.1, 0.9]])
    m = metrics.multilabel_metrics(probs, targets)
    # label 0: AUROC 3/4; AP = (1 + 2/3) / 2.  label 1: perfect -> AUROC 1, AP 1
    assert m["auroc"] == pytest.approx((0.75 + 1.0) / 2)
    assert m["map"] == pytest.approx(((1 + 2 / 3) / 2 + 1.0) / 2)


def test_multilabel_skips_labels_without_positives():
    targets = np.array([[1, 0], [0, 0], [1, 0]])
    probs = np.array([[0.9, 0.5], [0.1, 0.5], [0.8, 0.5]])
    m = metrics.multilabel_metrics(probs, targets)
    assert m["auroc"] == pytest.approx(1.0)
    assert m["map"] == pytest.approx(1.0)


def test_bad_shapes_and_task():
    with pytest.raises(ValueError, match="unknown task"):
        metrics.compute_metrics("regression", np.zeros((2, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="probs"):
        metrics.multiclass_metrics(np.zeros((3, 2)), np.zeros(2))


def test_fast_metrics_agree_with_scikit_learn():
    from sklearn.metrics import (
        balanced_accuracy_score,
        cohen_kappa_score,
        roc_auc_score,
    )

    rng = np.random.default_rng(0)
    for num_classes in (2, 5):
        probs = rng.dirichlet(np.ones(num_classes), 300)
        targets = rng.integers(0, num_classes, 300)
        preds = probs.argmax(axis=1)
        m = metrics.multiclass_metrics(probs, targets)
        assert m["kappa"] == pytest.approx(cohen_kappa_score(targets, preds))
        assert m["qwk"] == pytest.approx(cohen_kappa_score(targets, preds, weights="quadratic"))
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(targets, preds))
        expected_auroc = (roc_auc_score(targets, probs[:, 1]) if num_classes == 2
                          else roc_auc_score(targets, probs, multi_class="ovr"))
        assert m["auroc"] == pytest.approx(expected_auroc)
    assert metrics.multiclass_metrics(probs, targets, ("kappa",)) == {"kappa": m["kappa"]}
    with pytest.raises(ValueError, match="unknown multi-class metric"):
        metrics.multiclass_metrics(probs, targets, ("map",))


def test_confusion_matrix_and_per_class_report_hand_case():
    targets = np.array([0, 0, 1, 1])
    preds = np.array([0, 1, 1, 1])
    assert metrics.confusion_matrix(targets, preds, 3).tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    eye = np.eye(3, dtype=bool)
    report = metrics.per_class_report(eye[targets], eye[preds])
    # class 0: 1 of 1 predicted right, 1 of 2 found; class 1: 2 of 3, 2 of 2; class 2: never seen
    assert report[0] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert report[1] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8), "support": 2}
    assert math.isnan(report[2]["precision"]) and math.isnan(report[2]["f1"]) and report[2]["support"] == 0
