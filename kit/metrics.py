"""Classification metrics: plain NumPy in, plain floats out.

Multi-class (targets are class indices, scores are softmax probabilities):
    accuracy, balanced_accuracy, kappa (Cohen), qwk (quadratic-weighted Cohen kappa over the
    full ordered class range, for the diabetic-retinopathy grades), auroc (macro one-vs-rest
    over the classes present). Computed from the confusion matrix and ranks (no per-call
    scikit-learn overhead), because the bootstrap (stats.py) calls them thousands of times.
Multi-label (targets are 0/1 matrices, scores are sigmoid probabilities):
    auroc (macro over labels with both positives and negatives), map (mean average precision).
Per class: confusion_matrix, per_class_report (precision, recall, F1, support).

A metric that is undefined on the given data (AUROC with a single class present, kappa when
both raters use one class) is NaN rather than an exception: a tiny validation split should
not stop a run, and NaN shows up as an empty cell in the CSVs.
"""


import math

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score

MULTICLASS_METRICS = ("accuracy", "balanced_accuracy", "kappa", "qwk", "auroc")
MULTILABEL_METRICS = ("auroc", "map")


def metric_names(task: str) -> tuple[str, ...]:
    """The metric columns of metrics.csv for a task ('multiclass' or 'multilabel')."""
    if task == "multiclass":
        return MULTICLASS_METRICS
    if task == "multilabel":
        return MULTILABEL_METRICS
    raise ValueError(f"unknown task {task!r}; expected 'multiclass' or 'multilabel'")


# --------------------------------------------------------------------------- point metrics

def confusion_matrix(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    targets = np.asarray(targets, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    return np.bincount(targets * num_classes + preds, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def _kappa(confusion: np.ndarray, weights: str | None) -> float:
    """Cohen's kappa, 1 - observed / chance-expected (weighted) disagreement; NaN when no
    disagreement is possible by chance (both raters use one class). Quadratic weights use the
    class index distance over all C classes, also those absent from this sample."""
    n = confusion.sum()
    if n == 0:
        return math.nan
    i, j = np.indices(confusion.shape)
    w = (i != j).astype(np.float64) if weights is None else (i - j).astype(np.float64) ** 2
    expected = np.outer(confusion.sum(axis=1), confusion.sum(axis=0)) / n
    chance = float((w * expected).sum())
    return 1.0 - float((w * confusion).sum()) / chance if chance > 0 else math.nan


def binary_auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUROC (ties count one half); NaN without both positives and negatives."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _macro_auroc(onehot: np.ndarray, scores: np.ndarray) -> float:
    """Mean over columns that hold both a positive and a negative; NaN if none does."""
    values = [binary_auroc(onehot[:, c], scores[:, c]) for c in range(onehot.shape[1])]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def multiclass_metrics(probs: np.ndarray, targets: np.ndarray,
                       names: tuple[str, ...] = MULTICLASS_METRICS) -> dict[str, float]:
    """probs: (N, C) class probabilities; targets: (N,) integer class indices. `names` picks a
    subset (the bootstrap asks for the one it needs)."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(targets):
        raise ValueError(f"probs must be (N, C) and targets (N,); got {probs.shape} and {targets.shape}")
    if len(targets) == 0:
        return {name: math.nan for name in names}
    num_classes = probs.shape[1]
    preds = probs.argmax(axis=1)
    confusion = confusion_matrix(targets, preds, num_classes)
    support = confusion.sum(axis=1)
    values = {}
    for name in names:
        if name == "accuracy":
            values[name] = float(np.trace(confusion) / len(targets))
        elif name == "balanced_accuracy":  # mean recall over the classes present in targets
            values[name] = float(np.mean(np.diag(confusion)[support > 0] / support[support > 0]))
        elif name == "kappa":
            values[name] = _kappa(confusion, None)
        elif name == "qwk":
            values[name] = _kappa(confusion, "quadratic")
        elif name == "auroc":
            values[name] = _macro_auroc(np.eye(num_classes, dtype=np.int64)[targets], probs)
        else:
            raise ValueError(f"unknown multi-class metric {name!r}; expected one of {MULTICLASS_METRICS}")
    return values


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


def per_class_report(targets: np.ndarray, preds: np.ndarray) -> list[dict]:
    """Precision, recall, F1 and support per class (or label), from 0/1 matrices (N, C) of the
    truth and of the decisions (argmax for multi-class, p >= 0.5 for multi-label). 0/0 is NaN."""
    targets = np.asarray(targets, dtype=bool)
    preds = np.asarray(preds, dtype=bool)
    true_pos = (targets & preds).sum(axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = true_pos / preds.sum(axis=0)
        recall = true_pos / targets.sum(axis=0)
        f1 = 2 * true_pos / (preds.sum(axis=0) + targets.sum(axis=0))
    return [{"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for p, r, f, s in zip(precision, recall, f1, targets.sum(axis=0))]


def per_class_rows(classes, targets: np.ndarray, preds: np.ndarray) -> list[dict]:
    """per_class_report as the rows of evaluate.py's per_class.csv: class, precision, recall, f1,
    support, note. A value that is 0/0 is left empty (None), as scikit-learn's zero_division=np.nan
    leaves it undefined rather than 0, and `note` says why: a class never predicted has no precision,
    a class absent from the split no recall (and, never predicted either, no F1)."""
    rows = []
    for name, values in zip(classes, per_class_report(targets, preds)):
        notes = []
        if math.isnan(values["precision"]):
            notes.append("never predicted: precision 0/0 left empty")
        if math.isnan(values["recall"]):
            notes.append("absent from the split: recall 0/0 left empty")
        rows.append({"class": name, **{k: None if isinstance(v, float) and math.isnan(v) else v
                                       for k, v in values.items()}, "note": "; ".join(notes)})
    return rows


def prediction_columns(task: str, classes: list[str], probs: np.ndarray) -> dict[str, list]:
    """The `pred` and `prob_<class>` columns of a predictions.csv (evaluate.py, predict.py): the
    decision (argmax; multi-label: the `|`-joined labels with p >= 0.5) and each probability,
    rounded to 6 decimals."""
    if task == "multiclass":
        columns = {"pred": [classes[p] for p in probs.argmax(axis=1)]}
    else:
        columns = {"pred": ["|".join(c for c, p in zip(classes, row) if p >= 0.5) for row in probs]}
    for i, name in enumerate(classes):
        columns[f"prob_{name}"] = probs[:, i].astype(np.float64).round(6).tolist()
    return columns
