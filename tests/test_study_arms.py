"""The study workflow with arms beyond the paper's: published DenseNet-121 files and the balanced All models
(tiny demo, 32 px). Your own target of domain other with two fine-tuning strategies, and a published backbone
added to a finished study: the README's own-task and backbone blocks (tests/test_readme.py).
"""
import json
import subprocess

import pandas as pd
import pytest
import torch
from helpers import (
    ROOT,
    reference_densenet,
    run_study,
    study_command,
    write_imagenet_standin,
    write_layout,
)

pytestmark = pytest.mark.slow  # every test here runs the workflow


def test_published_backbones_and_balanced_all_models_are_arms_of_the_study(tmp_path):
    """Two external arms (stand-ins of two layouts) and the balanced All models, next to IN."""
    net = reference_densenet(in_channels=1)
    chexnet = write_layout(tmp_path / "weights" / "chexnet.pth.tar", "chexnet", reference_densenet(out_channels=14))
    txv = write_layout(tmp_path / "weights" / "txv.pt", "torchxrayvision", net)
    write_imagenet_standin(tmp_path / "torch_home")
    out = tmp_path / "out"
    result = run_study(out, torch_home=tmp_path / "torch_home", arms=["IN"], balanced_all="domain",
                       extra_arms=f"CheXNet={chexnet} TXV={txv}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    arms = {"IN", "All_RI_bal", "All_IN_bal", "CheXNet", "TXV"}
    table = pd.read_csv(out / "tables" / "table2.csv")
    ran = table[table["test_last"].notna()]
    assert set(ran["arm"]) == arms and ran[["train", "val", "test_last"]].notna().all().all()
    assert sorted(p.name for p in (out / "pretrain").iterdir()) == ["All_IN_bal", "All_RI_bal"]  # what the arms need
    paired = pd.read_csv(out / "tables" / "paired.csv")
    headline = paired[paired["method"] != "DeLong"]
    pairs = {frozenset(p) for p in zip(headline["arm"], headline["reference"])}
    assert len(pairs) == 10 and all(frozenset(p) in pairs for p in (("CheXNet", "IN"), ("TXV", "All_RI_bal")))
    found = pd.read_csv(out / "tables" / "claims.csv")
    assert set(found.loc[found["claim"].str.startswith("x"), "title"]) == {
        f"{arm} beats IN (beyond the paper)" for arm in ("All_RI_bal", "All_IN_bal", "CheXNet", "TXV")}
    assert "--balance domain: draws per epoch" in (out / "logs" / "pretrain" / "All_RI_bal_seed0.log").read_text()
    record = json.loads((out / "study.json").read_text())
    assert record["balanced_all"] == "domain" and record["extra_arms"]["TXV"]["layout"] == "torchxrayvision"
    meta = torch.load(out / "finetune" / "shenzhen" / "CheXNet" / "seed0" / "last.pt", weights_only=True)["meta"]
    assert meta["pretraining"]["layout"] == "chexnet" and meta["pretraining"]["sha256"] == \
        record["extra_arms"]["CheXNet"]["sha256"]
    report = (out / "report.md").read_text()
    assert "CheXNet = chexnet DenseNet-121 `chexnet.pth.tar` (sha256 " in report
    assert "All_IN_bal = All_IN pretrained with each source drawn by --balance domain" in report
    assert "(x3) CheXNet beats IN (beyond the paper)" in report
    answer = [line for line in report.splitlines() if line.startswith("- D1 Shenzhen CXR (")][0]
    assert all(arm in answer for arm in ("CheXNet", "TXV", "All_RI_bal", "All_IN_bal"))
    table2 = (out / "tables" / "table2.md").read_text()
    assert all(arm in table2 for arm in ("CheXNet", "TXV", "All_RI_bal", "All_IN_bal"))
    # a file that is not a DenseNet-121 stops the study before anything runs, in one line naming the setting
    wrong = tmp_path / "weights" / "resnet.pth"
    torch.save({"layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}, wrong)
    bad = subprocess.run(study_command(tmp_path / "bad", "-n") + ["--config", f"extra_arms=R={wrong}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and f"error: setting extra_arms: R={wrong}: not a DenseNet-121: a ResNet" in bad.stderr
