"""Classification metrics for the study: one function per task, plain NumPy in, plain floats out.

Multi-class (targets are class indices, scores are softmax probabilities):
    accuracy, balanced_accuracy, kappa (Cohen), qwk (quadratic-weighted Cohen kappa, for the
    ordered diabetic-retinopathy grades), auroc (macro one-vs-rest over the classes present).
Multi-label (targets are 0/1 matrices, scores are sigmoid probabilities):
    auroc (macro over labels with both positives and negatives), map (mean average precision).

A metric that is undefined on the given data (AUROC with a single class present, kappa when
both raters use one class) is NaN rather than an exception: a tiny validation split should
not stop a run, and NaN shows up as an empty cell in the CSVs.
"""

import math
import warnings

import numpy as np
from sklearn.metrics import (average_precision_score, balanced_accuracy_score, cohen_kappa_score,
                             roc_auc_score)

MULTICLASS_METRICS = ("accuracy", "balanced_accuracy", "kappa", "qwk", "auroc")
MULTILABEL_METRICS = ("auroc", "map")


def metric_names(task: str) -> tuple[str, ...]:
    """The metric columns of metrics.csv for a task ('multiclass' or 'multilabel')."""
    if task == "multiclass":
        return MULTICLASS_METRICS
    if task == "multilabel":
        return MULTILABEL_METRICS
    raise ValueError(f"unknown task {task!r}; expected 'multiclass' or 'multilabel'")


def _kappa(targets: np.ndarray, preds: np.ndarray, weights: str | None) -> float:
    # sklearn returns NaN (with a warning) when both raters use a single identical class.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = cohen_kappa_score(targets, preds, weights=weights)
    return float(value)


def _macro_auroc(onehot: np.ndarray, scores: np.ndarray) -> float:
    """Mean over columns that hold both a positive and a negative; NaN if none does."""
    values = []
    for c in range(onehot.shape[1]):
        positives = onehot[:, c].sum()
        if 0 < positives < len(onehot):
            values.append(roc_auc_score(onehot[:, c], scores[:, c]))
    return float(np.mean(values)) if values else math.nan


def multiclass_metrics(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """probs: (N, C) class probabilities; targets: (N,) integer class indices."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(targets):
        raise ValueError(f"probs must be (N, C) and targets (N,); got {probs.shape} and {targets.shape}")
    if len(targets) == 0:
        return {name: math.nan for name in MULTICLASS_METRICS}
    preds = probs.argmax(axis=1)
    onehot = np.eye(probs.shape[1], dtype=np.int64)[targets]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        balanced = balanced_accuracy_score(targets, preds)
    return {
        "accuracy": float((preds == targets).mean()),
        "balanced_accuracy": float(balanced),
        "kappa": _kappa(targets, preds, None),
        "qwk": _kappa(targets, preds, "quadratic"),
        "auroc": _macro_auroc(onehot, probs),
    }


def multilabel_metrics(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """probs: (N, L) label probabilities; targets: (N, L) 0/1."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets).astype(np.int64)
    if probs.shape != targets.shape or probs.ndim != 2:
        raise ValueError(f"probs and targets must both be (N, L); got {probs.shape} and {targets.shape}")
    aps = [average_precision_score(targets[:, c], probs[:, c])
           for c in range(targets.shape[1]) if targets[:, c].any()]
    return {
        "auroc": _macro_auroc(targets, probs),
        "map": float(np.mean(aps)) if aps else math.nan,
    }


def compute_metrics(task: str, probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Dispatch on the task; keys are exactly metric_names(task)."""
    if task == "multiclass":
        return multiclass_metrics(probs, targets)
    if task == "multilabel":
        return multilabel_metrics(probs, targets)
    raise ValueError(f"unknown task {task!r}; expected 'multiclass' or 'multilabel'")
