"""engine.py: targets, class weights, and one real fit on tiny generated images."""
import argparse
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import engine
import metrics
import models


def test_encode_targets_multiclass_and_multilabel():
    df = pd.DataFrame({"label": [0, 2, 1]})
    assert engine.encode_targets(df, "multiclass", ["a", "b", "c"]).tolist() == [0, 2, 1]
    df = pd.DataFrame({"labels": ["a|c", "", "b"]})
    out = engine.encode_targets(df, "multilabel", ["a", "b", "c"])
    assert out.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match="'d'"):
        engine.encode_targets(pd.DataFrame({"labels": ["d"]}), "multilabel", ["a"])
    with pytest.raises(ValueError, match="out of range"):
        engine.encode_targets(pd.DataFrame({"label": [3]}), "multiclass", ["a", "b"])


def test_balanced_class_weights_match_sklearn_formula():
    targets = np.array([0, 0, 0, 1])  # n / (C * n_c) = 4/(2*3), 4/(2*1); class 2 absent -> 0
    assert engine.balanced_class_weights(targets, 3) == pytest.approx([2 / 3, 2.0, 0.0])


def test_argparse_types_reject_impossible_values():
    assert engine.positive_int("3") == 3 and engine.fraction("1") == 1.0 and engine.dropout_rate("0") == 0.0
    for parse, text, words in ((engine.positive_int, "0", "must be >= 1, got 0"),
                               (engine.positive_int, "2.5", "expected an integer"),
                               (engine.image_size, "16", "must be >= 32 px, got 16"),
                               (engine.fraction, "0", "must be > 0 and <= 1, got 0"),
                               (engine.positive_float, "inf", "must be > 0"),
                               (engine.dropout_rate, "1", "must be >= 0 and < 1")):
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            parse(text)


def _tiny_manifest(tmp_path, n_per_class=10):
    """Two visually distinct classes of 40x40 RGB PNGs, split 6/4 per class into train/val."""
    rows = []
    rng = np.random.default_rng(0)
    for label, colour in enumerate([(200, 40, 40), (40, 40, 200)]):
        for i in range(n_per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            path = tmp_path / f"c{label}_{i}.png"
            Image.fromarray(pixels).save(path)
            rows.append({"image": str(path), "label": label, "patient": f"p{label}_{i}",
                         "split": "train" if i < 6 else "val"})
    meta = {"key": "tiny", "domain": "hwsi", "task": "multiclass", "classes": ["red", "blue"],
            "headline_metric": "accuracy", "class_weights": "balanced"}
    return pd.DataFrame(rows), meta


def _args(out, **overrides):
    values = dict(out=str(out), epochs=2, batch_size=4, lr=1e-3, weight_decay=0.0, workers=0, seed=0,
                  device="cpu", amp=True, channels_last=True, class_weights="auto", hidden_dim=32, dropout=0.1,
                  image_size=32, init="random", manifest=str(out / "m.csv"), resume=True, skip_bad=False,
                  compile=False, log_every=50, sync_bn=False, imagenet_weights=None)
    values.update(overrides)
    return argparse.Namespace(**values)


def test_fit_writes_the_run_folder(tmp_path):
    df, data_meta = _tiny_manifest(tmp_path)
    args = _args(tmp_path / "run")
    engine.seed_everything(args.seed)
    train_set, val_set = engine.split_datasets(df, data_meta, args.image_size)
    model = models.build_model(2, hidden_dim=args.hidden_dim, dropout=args.dropout)
    meta = engine.run_meta(data_meta, args, init_description="random")
    summary = engine.fit(model, train_set, val_set, meta=meta, args=args)

    out = tmp_path / "run"
    for name in ("args.json", "metrics.csv", "last.pt", "best.pt", "summary.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.tmp"))
    log = pd.read_csv(out / "metrics.csv")
    assert list(log.columns) == ["epoch", "split", "loss", *metrics.MULTICLASS_METRICS, "seconds", "lr"]
    assert log[["epoch", "split"]].values.tolist() == [[1, "train"], [1, "val"], [2, "train"], [2, "val"]]
    assert np.isfinite(log["loss"]).all() and log["accuracy"].between(0, 1).all()

    checkpoint = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 2
    assert checkpoint["meta"]["classes"] == ["red", "blue"]
    assert checkpoint["meta"]["loss_weights"] == pytest.approx([1.0, 1.0])  # 6 + 6 train images
    restored = models.build_model(2, hidden_dim=32, dropout=0.1)
    restored.load_state_dict(checkpoint["model"])
    assert summary["best_epoch"] in (1, 2) and math.isfinite(summary["best_val_score"])


def test_fit_is_reproducible_for_a_seed(tmp_path):
    df, data_meta = _tiny_manifest(tmp_path)
    logs = []
    for name in ("a", "b"):
        args = _args(tmp_path / name, epochs=1)
        engine.seed_everything(args.seed)
        train_set, val_set = engine.split_datasets(df, data_meta, args.image_size)
        model = models.build_model(2, hidden_dim=32, dropout=0.1)
        engine.fit(model, train_set, val_set, meta=engine.run_meta(data_meta, args, init_description="random"),
                   args=args)
        logs.append(pd.read_csv(tmp_path / name / "metrics.csv").drop(columns="seconds"))
    pd.testing.assert_frame_equal(logs[0], logs[1])


def test_split_datasets_needs_two_images(tmp_path):
    df, data_meta = _tiny_manifest(tmp_path, n_per_class=1)
    df["split"] = ["train", "val"]
    with pytest.raises(SystemExit, match="train split has 1 images"):
        engine.split_datasets(df, data_meta, 32)


def test_label_mask_marks_other_datasets_labels_unknown_and_the_loss_ignores_them():
    df = pd.DataFrame({"labels": ["a/x", "", "b/z"], "source": ["a", "a", "b"]})
    meta = {"label_groups": {"a": ["a/x", "a/y"], "b": ["b/z"]}}
    classes = ["a/x", "a/y", "b/z"]
    plain = engine.encode_targets(df, "multilabel", classes)
    masked = engine.encode_targets(engine.mask_unknown_labels(df, meta), "multilabel", classes)
    assert plain.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]
    assert np.isnan(masked).tolist() == [[False, False, True], [False, False, True], [True, True, False]]
    assert np.nan_to_num(masked).tolist() == plain.tolist()

    logits = torch.tensor([[2.0, -1.0, 3.0], [0.5, 0.1, -4.0], [9.0, 9.0, 1.0]])
    criterion = engine.make_criterion("multilabel", None)
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


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    engine.seed_everything(3)
    models.save_checkpoint({"model": {}, "rng": engine.rng_state()}, tmp_path / "c.pt")
    expected = (engine.random.random(), np.random.rand(), torch.rand(1).item())
    engine.seed_everything(99)
    engine.set_rng_state(models.load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (engine.random.random(), np.random.rand(), torch.rand(1).item()) == expected
