"""kit.losses: class weights, the masked multi-label BCE, the criterion per task, probabilities."""
import numpy as np
import pytest
import torch
from helpers import masked_targets

from kit import losses


def test_balanced_class_weights_match_sklearn_formula():
    targets = np.array([0, 0, 0, 1])  # n / (C * n_c) = 4/(2*3), 4/(2*1); class 2 absent -> 0
    assert losses.balanced_class_weights(targets, 3) == pytest.approx([2 / 3, 2.0, 0.0])


def test_class_weights_follow_the_choice_and_the_manifest():
    targets = np.array([0, 0, 0, 1])
    balanced = {"task": "multiclass", "classes": ["a", "b"], "class_weights": "balanced"}  # EyePACS, Messidor, DeepDRiD
    plain = {"task": "multiclass", "classes": ["a", "b"], "class_weights": "none"}
    assert losses.class_weights("auto", balanced, targets) == pytest.approx([2 / 3, 2.0])
    assert losses.class_weights("auto", plain, targets) is None
    assert losses.class_weights("balanced", plain, targets) == pytest.approx([2 / 3, 2.0])
    assert losses.class_weights("none", balanced, targets) is None
    assert losses.class_weights("auto", {"task": "multiclass", "classes": ["a", "b"]}, targets) is None
    multilabel = {"task": "multilabel", "classes": ["a", "b"], "class_weights": "balanced"}
    assert losses.class_weights("balanced", multilabel, np.zeros((4, 2))) is None  # never weighted
    with pytest.raises(ValueError, match="--class-weights 'equal'"):
        losses.class_weights("equal", plain, targets)


def test_make_criterion_per_task():
    weighted = losses.make_criterion("multiclass", [0.5, 2.0])
    assert isinstance(weighted, torch.nn.CrossEntropyLoss) and weighted.weight.tolist() == [0.5, 2.0]
    assert losses.make_criterion("multiclass").weight is None
    assert isinstance(losses.make_criterion("multilabel", [1.0, 1.0]), losses.MultiLabelBCE)


def test_masked_bce_ignores_unknown_labels():
    plain, masked = masked_targets()

    logits = torch.tensor([[2.0, -1.0, 3.0], [0.5, 0.1, -4.0], [9.0, 9.0, 1.0]])
    criterion = losses.make_criterion("multilabel", None)
    # without NaN it is exactly BCEWithLogitsLoss; with NaN only the known entries count
    assert criterion(logits, torch.tensor(plain)).item() == pytest.approx(
        torch.nn.BCEWithLogitsLoss()(logits, torch.tensor(plain)).item())
    known = ~np.isnan(masked)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[torch.tensor(known)], torch.tensor(masked[known]))
    assert criterion(logits, torch.tensor(masked)).item() == pytest.approx(expected.item())
    logits.requires_grad_(True)
    criterion(logits, torch.tensor(masked)).backward()
    assert logits.grad[torch.tensor(~known)].abs().max() == 0  # unknown labels get no gradient


def test_to_probs():
    logits = torch.tensor([[0.0, 0.0], [2.0, -2.0]], dtype=torch.bfloat16)
    softmax = losses.to_probs(logits, "multiclass")
    assert softmax.dtype == torch.float32 and softmax.sum(dim=1).tolist() == pytest.approx([1.0, 1.0])
    assert losses.to_probs(logits, "multilabel")[1].tolist() == pytest.approx(torch.sigmoid(torch.tensor([2.0, -2.0])).tolist())
