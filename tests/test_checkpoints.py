"""kit.checkpoints: atomic saves that refuse what cannot be loaded, loads that never run code from
the file, and one clear line for every unreadable file."""
import argparse
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import (
    ROOT,
    colour_folder,
    one_line,
    payloads,
    prepare_colour,
    run_script,
    script_error,
    train_argv,
)

from kit.checkpoints import (
    CheckpointError,
    first_keys,
    load_checkpoint,
    save_checkpoint,
    torch_load,
)
from kit.files import first_line
from kit.models import build_model

# --- loading ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("obj,words", [
    ([1, 2], "found list"),
    ({"state_dict": {}}, "found a dict with keys state_dict"),
])
def test_not_a_checkpoint(obj, words, tmp_path):
    path = tmp_path / "x.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=words):
        load_checkpoint(path)


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"model": build_model(2).state_dict(), "meta": {"args": argparse.Namespace(lr=0.1)}}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "argparse.Namespace" in message
    assert "tensors and plain values only" in message and "\n" not in message


# --- save_checkpoint --------------------------------------------------------------------------------

def test_save_round_trip_plain_values(tmp_path):
    obj = {"model": build_model(2).state_dict(), "epoch": 3, "best_metric": 0.5, "name": "x", "none": None,
           "flag": True, "tuple": (1, 2.0), "list": [torch.ones(2)], "set": {1, 2}, "bytes": b"ab",
           "param": nn.Parameter(torch.ones(2)), "dtype": torch.float16, "device": torch.device("cpu"), "size": torch.Size([2, 3]),
           "optimizer": {"state": {0: {"step": torch.tensor(1.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
           "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist()[:4]}}
    path = tmp_path / "ckpt.pt"
    save_checkpoint(obj, path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    loaded = load_checkpoint(path)
    assert loaded.keys() == obj.keys() and loaded["set"] == {1, 2} and loaded["size"] == torch.Size([2, 3])
    assert torch.equal(loaded["model"]["head.out.weight"], obj["model"]["head.out.weight"])


def test_save_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "meta": {"epoch": 1}}, path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "meta": {"epoch": 2}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no last.pt.tmp left behind
    monkeypatch.undo()
    assert load_checkpoint(path)["meta"] == {"epoch": 1}


@pytest.mark.parametrize("value,words", [
    (argparse.Namespace(lr=0.1), "checkpoint['meta']['args'] of type argparse.Namespace"),
    (np.zeros(3), "numpy.ndarray"),
    (np.float64(0.5), "numpy.float64"),
    (frozenset([1]), "builtins.frozenset"),
])
def test_save_refuses_what_cannot_be_loaded(value, words, tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {}, "meta": {}}, path)
    with pytest.raises(CheckpointError, match=words.replace("[", r"\[").replace("]", r"\]")):
        save_checkpoint({"model": {}, "meta": {"args": value}}, path)
    assert load_checkpoint(path)["meta"] == {}
    torch.save({"model": {}, "meta": {"args": value}}, tmp_path / "raw.pt")
    with pytest.raises(CheckpointError, match="plain values only"):  # the guard matches what loading refuses
        load_checkpoint(tmp_path / "raw.pt")


# --- one line per failure ------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["missing", "truncated", "text", "empty"])
def test_load_of_an_unreadable_file_is_one_line(content, tmp_path):
    path = tmp_path / "last.pt"
    if content == "truncated":
        save_checkpoint({"model": {"w": torch.ones(1000)}, "meta": {}}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content != "missing":
        path.write_text("" if content == "empty" else "epoch,loss\n1,0.5\n")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(
        f"{path}: no such file" if content == "missing" else f"{path}: not a readable PyTorch checkpoint")
    assert isinstance(info.value, ValueError)  # cli.user_errors turns it into `error: <message>`


def test_torch_load_names_what_it_reads_and_message_helpers(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_text("<html>")
    with pytest.raises(CheckpointError, match=r"weights\.pth: not a readable PyTorch ImageNet weights file"):
        torch_load(path, "ImageNet weights file")
    torch.save({"a": torch.ones(1)}, path)
    assert torch.equal(torch_load(path, "file")["a"], torch.ones(1))
    assert first_keys(["f", "b", "a"]) == "a, b, f"
    assert first_keys([f"k{i}" for i in range(8)]) == "k0, k1, k2, k3, k4 and 3 more"
    assert first_line(OSError("first line\nsecond line")) == "OSError: first line"


@pytest.mark.slow
def test_pickled_payloads_are_refused_on_every_loading_path(tmp_path):
    """Every payload on every path that loads a checkpoint: the scripts run in this process (script_error)."""
    manifest = prepare_colour(colour_folder(tmp_path / "data", n=8), tmp_path / "m")
    marker = tmp_path / "PWNED"
    for name, payload in payloads(marker).items():
        evil = tmp_path / f"evil_{name.split()[0]}.pt"
        torch.save({"model": {}, "meta": {}, "x": payload}, evil)
        outs = tmp_path / f"o_{name.split()[0]}"
        outs.mkdir()
        (outs / "resume").mkdir()
        torch.save({"model": {}, "resume": payload}, outs / "resume" / "last.pt")
        commands = {
            "--init": train_argv(manifest, outs / "init", "--init", evil),
            "resume": train_argv(manifest, outs / "resume"),
            "evaluate": ["evaluate.py", "--checkpoint", evil, "--manifest", manifest, "--out", outs / "eval"],
            "--imagenet-weights": [*train_argv(manifest, outs / "in"), "--init", "imagenet", "--imagenet-weights", evil],
        }
        for path, (script, *argv) in commands.items():
            line = script_error(script, *argv)
            assert "\n" not in line, (name, path, line)  # one line, no traceback
            assert "contains Python objects that could run code" in line and "refused" in line, (name, path, line)
            assert "weights_only" not in line, line
        assert not marker.exists(), name
    from kit import models
    with pytest.raises(ValueError, match="could run code"):
        models.model_from_checkpoint(evil)
    assert not marker.exists()


@pytest.mark.slow
def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    manifest = prepare_colour(colour_folder(tmp_path / "data", n=12), tmp_path / "m")
    out = tmp_path / "run"
    assert run_script(*train_argv(manifest, out)).returncode == 0  # a process of its own: its lock on out ends with it
    size = (out / "last.pt").stat().st_size
    before = (out / "last.pt").read_bytes()

    def limit_file_size():  # writes past the limit fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    result = subprocess.run([sys.executable, *map(str, train_argv(manifest, out, "--no-resume"))], cwd=ROOT,
                            capture_output=True, text=True, preexec_fn=limit_file_size)
    line = one_line(result)
    assert "last.pt" in line and "could not be written" in line and "is intact" in line, line
    assert (out / "last.pt").read_bytes() == before
    assert not list(out.glob("*.tmp"))
