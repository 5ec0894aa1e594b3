"""finetune_target.py end to end on tiny folder datasets: fine-tuning from a pretrained checkpoint, the
one-line errors users see for bad input, and a recipe edited in the script alone (SGD, a frozen
backbone)."""
import json
import math
import re
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import ROOT, TINY, folder_manifest, run_finetune, run_main, script_error
from PIL import Image

import finetune_target
from kit import checkpoints

SCRIPT = (ROOT / "finetune_target.py").read_text()


@pytest.mark.slow
def test_finetune_from_a_pretrained_checkpoint(pretrained_all):
    tmp_path, first, _, all_ri, _ = pretrained_all
    checkpoint = torch.load(all_ri / "last.pt", weights_only=True)
    run_finetune(["--manifest", str(first), "--init", str(all_ri / "last.pt"), "--out", str(tmp_path / "arm"), *TINY])
    arm = torch.load(tmp_path / "arm" / "best.pt", weights_only=True)
    backbone = "features.denseblock4.denselayer16.layers.conv2.weight"
    # one epoch of fine-tuning moved the backbone, but it started from All_RI's, not from random
    start = checkpoint["model"][backbone]
    assert arm["meta"]["source_checkpoint"].endswith("last.pt")
    assert torch.nn.functional.cosine_similarity(arm["model"][backbone].flatten(), start.flatten(), dim=0) > 0.9
    assert arm["meta"]["classes"] == ["a", "b"] and arm["model"]["head.out.weight"].shape[0] == 2  # a new head
    recorded = json.loads((tmp_path / "arm" / "args.json").read_text())["args"]
    assert recorded["init"] == str((all_ri / "last.pt").resolve())  # absolute paths, whatever the cwd was
    assert recorded["manifest"] == str(first.resolve())


@pytest.mark.slow
def test_an_unreadable_image_is_one_line_naming_the_file(tmp_path, capsys):
    manifest = folder_manifest(tmp_path, "broken", ["blue", "red"])
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
                       (["--warmup-epochs", "-1"], "--warmup-epochs"),
                       (["--manifest", str(tmp_path / "missing.csv")], "no such file"),
                       (["--init", str(tmp_path / "CXR_RI" / "last.pt")], "no such file"),
                       (["--imagenet-weights", str(tmp_path / "w.pth")], "no such file")):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, *bad])
        assert words in capsys.readouterr().err, bad
    assert math.isclose(parser.parse_args(base).lr, 1e-4)
    assert parser.parse_args(base).resume and not parser.parse_args([*base, "--no-resume"]).resume
    assert parser.parse_args(base).warmup_epochs == 0


def _edited_copy(folder, *replacements):
    """finetune_target.py copied into `folder` with (line pattern, new lines) replacements: each pattern (a regular
    expression for a whole line, e.g. the optimizer line whatever it holds now) matches one line of main(); the
    new lines are a text, or a function of the line found."""
    text = SCRIPT
    for pattern, new in replacements:
        found = re.findall(rf"^{pattern}$", text, flags=re.M)
        assert len(found) == 1, (pattern, found)
        text = re.sub(rf"^{pattern}$", lambda match: new(match[0]) if callable(new) else new, text, flags=re.M)
    folder.mkdir()
    (folder / "finetune_target.py").write_text(text)
    return folder / "finetune_target.py"


@pytest.mark.slow
def test_the_recipe_is_editable_in_the_script_alone(tmp_path):
    """Copy the script, edit the optimizer lines as its comments say, run it from elsewhere with the kit
    on PYTHONPATH: SGD with momentum trains with momentum buffers; a frozen backbone keeps every backbone
    weight of its initialisation bit for bit while the head learns."""
    manifest = folder_manifest(tmp_path, "tiny", ["blue", "red"])
    save_init = (r"    model\.to\(device\)",  # the initial weights, to compare with (not part of the recipe)
                 "    model.to(device)\n    torch.save(model.state_dict(), args.out + '.init.pt')")
    save_optimizer = (r"             meta=meta, run=run, .*",  # the optimizer as trained (a finished last.pt has none)
                      lambda line: f"{line}\n    torch.save(optimizer.state_dict(), args.out + '.optimizer.pt')")
    sgd = _edited_copy(tmp_path / "sgd", save_init, save_optimizer,
                       (r"    optimizer = .*", "    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9)"))
    frozen = _edited_copy(tmp_path / "frozen", save_init, save_optimizer, (  # what trains, chosen by hand
        r"    params = .*", "    params = model.head.parameters()\n    model.features.requires_grad_(False)"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for script in (sgd, frozen):
        out = script.parent / "run" if script is frozen else tmp_path / "OUT" / "finetune" / "tiny" / "IN" / "seed0"
        done = subprocess.run([sys.executable, str(script), "--manifest", str(manifest), "--init", "random",
                               "--out", str(out), *TINY], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert (out / "summary.json").is_file()

    sgd_run = tmp_path / "OUT" / "finetune" / "tiny" / "IN" / "seed0"
    sgd_state = torch.load(f"{sgd_run}.optimizer.pt", weights_only=True)
    assert sgd_state["state"] and all("momentum_buffer" in s and "exp_avg" not in s for s in sgd_state["state"].values())
    assert sgd_state["param_groups"][0]["momentum"] == 0.9
    # the recipe as it ran: in args.json, in the report, and in the resume fingerprint (the script as shipped,
    # with AdamW, refuses to continue the SGD run, naming the optimizer)
    recorded = json.loads((sgd_run / "args.json").read_text())["meta"]["recipe"]
    assert recorded["optimizer"]["class"] == "SGD" and recorded["optimizer"]["param_groups"][0]["momentum"] == 0.9
    assert recorded["schedule"]["class"] == "CosineAnnealingLR" and recorded["loss"]["class"] == "CrossEntropyLoss"
    refused = script_error("finetune_target.py", "--manifest", manifest, "--init", "random", "--out", sgd_run, *TINY)
    assert "optimizer SGD -> AdamW" in refused, refused
    run_main("plot_results.py", "--runs", tmp_path / "OUT", "--out", tmp_path / "OUT")
    report = (tmp_path / "OUT" / "report.md").read_text()
    line = next(line for line in report.splitlines() if line.startswith("- **optimizer and learning rate**"))
    assert "this study trained with SGD: lr 0.0001, momentum 0.9" in line, line

    run = checkpoints.load_checkpoint(tmp_path / "frozen" / "run" / "last.pt")
    init = torch.load(tmp_path / "frozen" / "run.init.pt", weights_only=True)
    optimizer = torch.load(tmp_path / "frozen" / "run.optimizer.pt", weights_only=True)
    state = optimizer["state"]
    assert all("exp_avg" in s for s in state.values())  # still AdamW
    assert len(state) == len(optimizer["param_groups"][0]["params"]) == 6  # head: fc, bn, out x (weight, bias)
    convs = [key for key in run["model"] if key.startswith("features.") and key.endswith(".weight")
             and key.split(".")[-2].startswith("conv")]
    assert len(convs) == 120  # DenseNet-121: the stem, 2 per dense layer (58 layers), 3 transitions
    for key in convs:
        assert torch.equal(run["model"][key], init[key]), key
    for key in ("features.norm5.weight", "features.norm5.bias", "features.denseblock2.denselayer3.layers.norm1.weight"):
        assert torch.equal(run["model"][key], init[key]), key  # BatchNorm's affine parameters are frozen too
    for key in ("head.fc.weight", "head.bn.weight", "head.out.weight", "head.out.bias"):
        assert not torch.equal(run["model"][key], init[key]), key  # the head learned


@pytest.mark.slow
@pytest.mark.parametrize("strategy,frozen", [("linear", "features."), ("partial", "features.denseblock1.")])
def test_a_frozen_part_keeps_every_weight_and_batchnorm_statistic(tmp_path, strategy, frozen):
    sys.path.insert(0, str(ROOT))
    from kit import models

    root = tmp_path / "data"
    for cls, colour in (("blue", (60, 60, 200)), ("red", (200, 60, 60))):
        for i in range(12):
            pixels = np.clip(np.array(colour) + np.random.default_rng(i).normal(0, 40, (40, 48, 3)), 0, 255)
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(root / cls / f"{i}.png")
    run_main("prepare_data.py", "--dataset", "folder", "--root", root, "--domain", "hwsi", "--name", "t", "--out",
             tmp_path / "m")
    init = tmp_path / "init.pt"
    torch.manual_seed(3)
    start = models.build_model(2)
    torch.save({"model": start.state_dict(), "meta": {}}, init)
    run_main("finetune_target.py", "--manifest", tmp_path / "m" / "t.csv", "--init", init, "--out", tmp_path / "r",
             "--image-size", "32", "--epochs", "2", "--batch-size", "4", "--workers", "0", "--device", "cpu",
             "--strategy", strategy)
    trained = models.load_checkpoint(tmp_path / "r" / "last.pt")["model"]
    before = start.state_dict()
    kept = [k for k in trained if k.startswith(frozen)]
    assert kept and all(torch.equal(trained[k], before[k]) for k in kept)  # weights and running_mean/var alike
    assert any("running_mean" in k for k in kept)
    assert not torch.equal(trained["head.fc.weight"], before["head.fc.weight"])
    if strategy == "partial":
        assert not torch.equal(trained["features.denseblock4.denselayer1.layers.conv1.weight"],
                               before["features.denseblock4.denselayer1.layers.conv1.weight"])
