"""pretrain_source.py end to end: one source manifest, multi-class (class-weighted where the manifest
says so) or multi-label."""
import json

import pandas as pd
import pytest
import torch
from helpers import TINY

import pretrain_source


@pytest.mark.slow
def test_pretrain_source_trains_and_records_its_run(pretrained_all):
    tmp_path, _, second, _, _ = pretrained_all
    out = tmp_path / "EFI_RI"
    pretrain_source.main(pretrain_source.get_args_parser().parse_args(
        ["--manifest", str(second), "--init", "random", "--out", str(out), "--class-weights", "balanced", *TINY]))
    for name in ("args.json", "metrics.csv", "last.pt", "best.pt", "summary.json"):
        assert (out / name).is_file(), name
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    assert checkpoint["meta"]["classes"] == ["x", "y", "z"] and checkpoint["meta"]["task"] == "multiclass"
    assert len(checkpoint["meta"]["loss_weights"]) == 3  # --class-weights balanced
    assert checkpoint["resume"]["class_weights"] == "balanced"
    assert list(pd.read_csv(out / "metrics.csv")["split"]) == ["train", "val"]
    assert json.loads((out / "args.json").read_text())["args"]["manifest"] == str(second.resolve())


def test_pretrain_source_arguments(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,label,patient,split\n")
    parser = pretrain_source.get_args_parser()
    args = parser.parse_args(["--manifest", str(manifest), "--out", str(tmp_path / "o")])
    assert (args.init, args.class_weights, args.warmup_epochs, args.lr, args.epochs) == ("random", "auto", 0, 3e-4, 30)
    for bad, words in ((["--init", "resnet"], "--init"), (["--class-weights", "equal"], "--class-weights"),
                       (["--warmup-epochs", "-1"], "--warmup-epochs"), (["--image-size", "31"], "must be >= 32 px")):
        with pytest.raises(SystemExit):
            parser.parse_args(["--manifest", str(manifest), "--out", "o", *bad])
        assert words in capsys.readouterr().err, bad
