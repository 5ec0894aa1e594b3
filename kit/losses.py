"""The losses of the study and their class weights (paper Section 5.2).

Multi-class sets train with cross-entropy; the paper balances EyePACS, Messidor and DeepDRiD
with class weights (their grades are very imbalanced) and weights no other set. Multi-label
sets (ChestX-ray14, the aggregated "All" set) train with binary cross-entropy over the labels
(the kit's inference: the paper calls the All set multi-label and one-hot, 5.2.3, and names no
loss), unweighted (the paper: no class weights for All, 5.4); labels marked unknown (NaN, see
``data.mask_unknown_labels``) are left out of the loss.
"""
import numpy as np
import torch
import torch.nn as nn

CLASS_WEIGHTS = ("auto", "balanced", "none")  # --class-weights; auto = the manifest's recommendation


def balanced_class_weights(targets: np.ndarray, num_classes: int) -> list[float]:
    """sklearn's 'balanced' weights n / (C * n_c); a class absent from training gets weight 0."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.round(6).tolist()


def class_weights(choice: str, data_meta: dict, targets: np.ndarray) -> list[float] | None:
    """The cross-entropy weights of --class-weights `choice` for these training targets: 'auto'
    follows the manifest's ``class_weights`` (balanced for EyePACS, Messidor and DeepDRiD as in
    the paper, none elsewhere); multi-label sets are never weighted. None = unweighted."""
    if choice not in CLASS_WEIGHTS:
        raise ValueError(f"--class-weights {choice!r}: choose from {CLASS_WEIGHTS}")
    weighting = data_meta.get("class_weights", "none") if choice == "auto" else choice
    if weighting != "balanced" or data_meta["task"] != "multiclass":
        return None
    return balanced_class_weights(targets, len(data_meta["classes"]))


class MultiLabelBCE(nn.Module):
    """Binary cross-entropy with logits over the annotated labels: NaN targets (not annotated,
    see data.mask_unknown_labels) are ignored. Without NaN it equals nn.BCEWithLogitsLoss()."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(targets)
        losses = nn.functional.binary_cross_entropy_with_logits(logits, targets.nan_to_num(0.0), reduction="none")
        return (losses * known).sum() / known.sum().clamp(min=1)


def make_criterion(task: str, class_weights: list[float] | None = None) -> nn.Module:
    """Cross-entropy (optionally class-weighted) for 'multiclass', MultiLabelBCE for 'multilabel'."""
    if task == "multilabel":
        return MultiLabelBCE()
    weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
    return nn.CrossEntropyLoss(weight=weight)


def to_probs(logits: torch.Tensor, task: str) -> torch.Tensor:
    """The probabilities the loss of `task` implies: softmax (multi-class) or sigmoid (multi-label)."""
    logits = logits.float()
    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=1)
