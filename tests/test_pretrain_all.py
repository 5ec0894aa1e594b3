"""pretrain_all.py end to end: the sources aggregated into one multi-label set, with --label-mask."""
import json
import re

import pandas as pd
import pytest
import torch

import pretrain_all
from helpers import TINY, assert_same_weights, checkpoint_weights, folder_manifest


@pytest.mark.slow
def test_pretrain_all_with_label_mask(pretrained_all):
    _, first, second, out, printed = pretrained_all
    assert pd.read_json(out / "args.json", typ="series")["args"]["label_mask"] is True
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    assert checkpoint["meta"]["classes"] == ["first/a", "first/b", "second/x", "second/y", "second/z"]
    assert checkpoint["meta"]["task"] == "multilabel"
    assert list(pd.read_csv(out / "metrics.csv").columns[2:5]) == ["loss", "auroc", "map"]
    assert checkpoint["meta"]["loss_weights"] is None  # never class-weighted (paper 5.2.3)
    assert checkpoint["meta"]["domains"] == {"first": "hwsi", "second": "efi"}
    assert json.loads((out / "args.json").read_text())["args"]["manifests"] == [str(first.resolve()),
                                                                               str(second.resolve())]
    assert "own dataset labels only (--label-mask)" in printed  # the run says what it does


def test_pretrain_all_arguments(tmp_path, capsys):
    manifests = [tmp_path / "a.csv", tmp_path / "b.csv"]
    for path in manifests:
        path.write_text("image,labels,patient,split\n")
    parser = pretrain_all.get_args_parser()
    args = parser.parse_args(["--manifests", *map(str, manifests), "--out", str(tmp_path / "o")])
    assert (args.init, args.label_mask, args.warmup_epochs, args.lr) == ("random", False, 0, 3e-4)
    assert not hasattr(args, "class_weights")
    with pytest.raises(SystemExit):
        parser.parse_args(["--manifests", str(manifests[0]), "--out", "o", "--class-weights", "balanced"])
    assert "unrecognized arguments: --class-weights" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--manifests", str(manifests[0]), "--out", "o", "--init", str(manifests[1])])
    assert "invalid choice" in capsys.readouterr().err  # pretraining starts from random or ImageNet only


@pytest.mark.slow
def test_balance_none_reproduces_the_unbalanced_run_and_domain_changes_the_draws(tmp_path, capsys):
    first = folder_manifest(tmp_path, "first", ["a", "b"])
    second = folder_manifest(tmp_path, "second", ["x", "y", "z"], domain="efi")
    runs = {}
    for name, extra in (("plain", []), ("none", ["--balance", "none"]), ("domain", ["--balance", "domain"])):
        pretrain_all.main(pretrain_all.get_args_parser().parse_args(
            ["--manifests", str(first), str(second), "--init", "random", "--out", str(tmp_path / name), *extra,
             *TINY]))
        runs[name] = checkpoint_weights(tmp_path / name / "last.pt")
    assert_same_weights(runs["plain"], runs["none"])  # --balance none is today's run, bit for bit
    key = "features.conv0.weight"
    assert not torch.equal(runs["plain"][key], runs["domain"][key])
    printed = capsys.readouterr().out
    assert re.search(r"--balance domain: draws per epoch first (\d+) \(50.0 %\), second \1 \(50.0 %\)", printed), printed
    assert json.loads((tmp_path / "domain" / "args.json").read_text())["args"]["balance"] == "domain"
