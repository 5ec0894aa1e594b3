"""The stage scripts end to end on tiny folder datasets: fine-tune, evaluate, pretrain on the
aggregate, and the one-line errors users see for bad input."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import evaluate
import finetune_target
import models
import prepare_data
import pretrain_all
import pretrain_source


def _folder_dataset(root, classes, n=8, seed=0):
    """<root>/<class>/<i>.png, one flat colour per class with noise: learnable in an epoch."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            colour = np.array([200, 60, 60]) if c == 0 else np.array([60, 60, 200]) + 40 * c
            pixels = np.clip(colour + rng.normal(0, 25, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i}.png")
    return root


def _manifest(tmp_path, name, classes, domain="hwsi"):
    root = _folder_dataset(tmp_path / f"data_{name}", classes)
    args = prepare_data.get_args_parser().parse_args(
        ["--dataset", "folder", "--root", str(root), "--name", name, "--domain", domain,
         "--out", str(tmp_path / "manifests"), "--val-frac", "0.25", "--test-frac", "0.25"])
    prepare_data.main(args)
    return tmp_path / "manifests" / f"{name}.csv"


TINY = ["--image-size", "32", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu",
        "--hidden-dim", "16"]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("scripts")
    manifest = _manifest(tmp_path, "tiny", ["blue", "red"])
    out = tmp_path / "run"
    finetune_target.main(finetune_target.get_args_parser().parse_args(
        ["--manifest", str(manifest), "--init", "random", "--out", str(out), *TINY]))
    return tmp_path, manifest, out


def test_evaluate_reproduces_the_logged_validation_metrics(finetuned):
    tmp_path, manifest, run = finetuned
    evaluate.main(evaluate.get_args_parser().parse_args(
        ["--checkpoint", str(run / "last.pt"), "--manifest", str(manifest), "--split", "val",
         "--out", str(tmp_path / "eval"), "--workers", "0", "--device", "cpu"]))
    logged = pd.read_csv(run / "metrics.csv").query("split == 'val'").iloc[-1]
    measured = pd.read_csv(tmp_path / "eval" / "metrics.csv").iloc[0]
    for column in ("loss", "accuracy", "balanced_accuracy", "auroc"):
        assert measured[column] == pytest.approx(logged[column], abs=1e-6), column
    predictions = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    manifest_df = pd.read_csv(manifest)
    assert sorted(predictions["image"]) == sorted(manifest_df.loc[manifest_df.split == "val", "image"])
    assert np.allclose(predictions[["prob_blue", "prob_red"]].sum(axis=1), 1, atol=1e-5)


def test_evaluate_refuses_a_checkpoint_of_other_classes(finetuned, tmp_path):
    _, _, run = finetuned
    other = _manifest(tmp_path, "other", ["cat", "dog", "eel"])
    with pytest.raises(ValueError, match="classes"):
        evaluate.main(evaluate.get_args_parser().parse_args(
            ["--checkpoint", str(run / "best.pt"), "--manifest", str(other), "--out", str(tmp_path / "e"),
             "--workers", "0", "--device", "cpu"]))


def test_a_checkpoint_without_meta_is_one_clear_error(finetuned, tmp_path):
    _, _, run = finetuned
    bare = tmp_path / "bare.pt"
    torch.save({"model": torch.load(run / "last.pt", weights_only=True)["model"]}, bare)
    with pytest.raises(models.CheckpointError, match="bare.pt: checkpoint has no model description"):
        models.model_from_checkpoint(bare)


def test_finetune_from_a_pretrained_checkpoint_and_pretrain_all(tmp_path, capsys):
    first = _manifest(tmp_path, "first", ["a", "b"])
    second = _manifest(tmp_path, "second", ["x", "y", "z"], domain="efi")
    pretrain_all.main(pretrain_all.get_args_parser().parse_args(
        ["--manifests", str(first), str(second), "--init", "random", "--out", str(tmp_path / "All_RI"),
         "--label-mask", *TINY]))
    assert "own dataset labels only (--label-mask)" in capsys.readouterr().out
    assert pd.read_json(tmp_path / "All_RI" / "args.json", typ="series")["args"]["label_mask"] is True
    checkpoint = torch.load(tmp_path / "All_RI" / "last.pt", weights_only=True)
    assert checkpoint["meta"]["classes"] == ["first/a", "first/b", "second/x", "second/y", "second/z"]
    assert checkpoint["meta"]["task"] == "multilabel"
    assert list(pd.read_csv(tmp_path / "All_RI" / "metrics.csv").columns[2:5]) == ["loss", "auroc", "map"]

    pretrain_source.main(pretrain_source.get_args_parser().parse_args(
        ["--manifest", str(second), "--init", "random", "--out", str(tmp_path / "EFI_RI"), *TINY]))
    finetune_target.main(finetune_target.get_args_parser().parse_args(
        ["--manifest", str(first), "--init", str(tmp_path / "All_RI" / "last.pt"), "--out",
         str(tmp_path / "arm"), *TINY]))
    arm = torch.load(tmp_path / "arm" / "best.pt", weights_only=True)
    backbone = "features.denseblock4.denselayer16.layers.conv2.weight"
    # one epoch of fine-tuning moved the backbone, but it started from All_RI's, not from random
    start = checkpoint["model"][backbone]
    assert arm["meta"]["source_checkpoint"].endswith("last.pt")
    assert torch.nn.functional.cosine_similarity(arm["model"][backbone].flatten(), start.flatten(), dim=0) > 0.9


def test_an_unreadable_image_is_one_line_naming_the_file(tmp_path, capsys):
    manifest = _manifest(tmp_path, "broken", ["blue", "red"])
    df = pd.read_csv(manifest)
    victim = df.loc[df.split == "train", "image"].iloc[0]
    open(victim, "wb").write(b"this is not a png")
    args = finetune_target.get_args_parser().parse_args(
        ["--manifest", str(manifest), "--init", "random", "--out", str(tmp_path / "run"), *TINY])
    with pytest.raises(ValueError) as info:
        finetune_target.main(args)
    message = str(info.value)
    assert message.startswith(f"{victim}: cannot read the image") and "\n" not in message
    assert not (tmp_path / "run" / "summary.json").exists()


def test_scripts_reject_impossible_arguments(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,label,patient,split\n")
    parser = finetune_target.get_args_parser()
    base = ["--manifest", str(manifest), "--init", "random", "--out", str(tmp_path / "o")]
    for bad, words in ((["--epochs", "0"], "--epochs"), (["--epochs", "-3"], "--epochs"),
                       (["--image-size", "16"], "--image-size"), (["--dropout", "1.0"], "--dropout"),
                       (["--batch-size", "-2"], "--batch-size"), (["--lr", "-1e-4"], "--lr"),
                       (["--lr", "nan"], "--lr"), (["--weight-decay", "-1"], "--weight-decay"),
                       (["--workers", "-1"], "--workers"), (["--train-fraction", "0"], "--train-fraction"),
                       (["--train-fraction", "1.5"], "--train-fraction"), (["--log-every", "0"], "--log-every"),
                       (["--manifest", str(tmp_path / "missing.csv")], "no such file"),
                       (["--init", str(tmp_path / "CXR_RI" / "last.pt")], "no such file"),
                       (["--imagenet-weights", str(tmp_path / "w.pth")], "no such file")):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, *bad])
        assert words in capsys.readouterr().err, bad
    assert math.isclose(parser.parse_args(base).lr, 1e-4)
    assert parser.parse_args(base).resume and not parser.parse_args([*base, "--no-resume"]).resume
