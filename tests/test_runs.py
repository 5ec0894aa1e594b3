"""Runs survive being killed, bad input never loses work (issue: resume and failures).

The training scripts resume from OUT/last.pt: a run killed with SIGKILL in the middle of an
epoch and started again ends with the weights and metrics.csv of a run never interrupted.
"""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import engine
import finetune_target
import models
import prepare_data

ROOT = Path(__file__).resolve().parents[1]


def _manifest(tmp_path, n=16):
    """A `folder` dataset of two learnable colours, 40x48 px, split by prepare_data.py."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for c, name in enumerate(("blue", "red")):
        (root / name).mkdir(parents=True)
        for i in range(n):
            colour = np.array([60, 60, 200]) if c == 0 else np.array([200, 60, 60])
            pixels = np.clip(colour + rng.normal(0, 40, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i}.png")
    prepare_data.main(prepare_data.get_args_parser().parse_args(
        ["--dataset", "folder", "--root", str(root), "--name", "tiny", "--domain", "hwsi",
         "--out", str(tmp_path / "manifests"), "--val-frac", "0.25", "--test-frac", "0.1"]))
    return tmp_path / "manifests" / "tiny.csv"


def _argv(manifest, out, *extra, epochs=3, workers=0):
    return ["--manifest", str(manifest), "--init", "random", "--out", str(out), "--image-size", "32",
            "--epochs", str(epochs), "--batch-size", "4", "--workers", str(workers), "--device", "cpu",
            "--hidden-dim", "16", "--log-every", "2", *extra]


def _run(argv):
    finetune_target.main(finetune_target.get_args_parser().parse_args(argv))


def _metrics(out):
    return pd.read_csv(out / "metrics.csv").drop(columns="seconds")


def _weights(path):
    return models.load_checkpoint(path)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    manifest = _manifest(tmp_path, n=20)
    command = [sys.executable, str(ROOT / "finetune_target.py")]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run([*command, *_argv(manifest, reference, workers=1)], check=True, capture_output=True, cwd=ROOT)

    # Start the same run and kill it as soon as epoch 1 is on disk: it is then inside epoch 2.
    process = subprocess.Popen([*command, *_argv(manifest, killed, workers=1)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "last.pt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    interrupted_at = models.load_checkpoint(killed / "last.pt")["epoch"]
    assert interrupted_at < 3 and not (killed / "summary.json").exists()
    assert _metrics(killed)["epoch"].max() == interrupted_at  # metrics.csv never runs ahead of last.pt

    resumed = subprocess.run([*command, *_argv(manifest, killed, workers=1)], check=True, capture_output=True,
                             text=True, cwd=ROOT)
    assert f"resuming after epoch {interrupted_at}" in resumed.stdout
    pd.testing.assert_frame_equal(_metrics(killed), _metrics(reference))  # no duplicate rows, same numbers
    _assert_same_weights(_weights(killed / "last.pt"), _weights(reference / "last.pt"))
    _assert_same_weights(_weights(killed / "best.pt"), _weights(reference / "best.pt"))


def test_same_seed_same_metrics_other_seed_other_metrics(tmp_path):
    manifest = _manifest(tmp_path)
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        _run(_argv(manifest, tmp_path / name, "--seed", seed, epochs=1, workers=1))
    pd.testing.assert_frame_equal(_metrics(tmp_path / "a"), _metrics(tmp_path / "b"))
    assert not _metrics(tmp_path / "a")["loss"].equals(_metrics(tmp_path / "c")["loss"])


def test_a_finished_run_is_not_redone_and_a_different_run_is_refused(tmp_path, capsys):
    manifest = _manifest(tmp_path)
    out = tmp_path / "run"
    _run(_argv(manifest, out, epochs=1))
    before = (out / "last.pt").read_bytes()
    _run(_argv(manifest, out, epochs=1))  # complete: nothing trained again, nothing duplicated
    assert (out / "last.pt").read_bytes() == before and len(_metrics(out)) == 2

    with pytest.raises(SystemExit) as info:  # same folder, other hyperparameters
        _run(_argv(manifest, out, "--lr", "3e-4", epochs=1))
    message = str(info.value)
    assert "different run" in message and "lr 0.0001 -> 0.0003" in message and "--no-resume" in message
    assert (out / "last.pt").read_bytes() == before  # refused before anything was written

    _run(_argv(manifest, out, "--lr", "3e-4", "--no-resume", epochs=1))
    assert models.load_checkpoint(out / "last.pt")["resume"]["lr"] == 3e-4


def test_a_checkpoint_of_another_kind_in_out_is_one_clear_line(tmp_path):
    manifest = _manifest(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(models.CheckpointError, match="last.pt: not a readable PyTorch checkpoint"):
        _run(_argv(manifest, out, epochs=1))
    torch.save({"model": {}, "meta": {}}, out / "last.pt")
    with pytest.raises(SystemExit, match="holds no resume information"):
        _run(_argv(manifest, out, epochs=1))


def test_a_failed_checkpoint_save_keeps_the_last_good_one_then_resumes(tmp_path, monkeypatch):
    manifest = _manifest(tmp_path)
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def save_then_fail_in_epoch_2(obj, f, *args, **kwargs):
        calls.append(obj["epoch"])
        if obj["epoch"] == 2:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError("No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_fail_in_epoch_2)
    with pytest.raises(OSError, match="No space left"):
        _run(_argv(manifest, out))
    monkeypatch.undo()
    assert models.load_checkpoint(out / "last.pt")["epoch"] == 1
    assert _metrics(out)["epoch"].max() == 1 and not list(out.glob("*.tmp"))
    _run(_argv(manifest, out))
    assert models.load_checkpoint(out / "last.pt")["epoch"] == 3 and len(_metrics(out)) == 6


def test_a_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    manifest = _manifest(tmp_path)
    out = tmp_path / "run"
    n_train = int((pd.read_csv(manifest)["split"] == "train").sum())
    steps_per_epoch = -(-n_train // 4) - (n_train % 4 == 1)  # batches of 4; a last batch of 1 is dropped
    calls = []

    class NanAtStepTwoOfEpochTwo(torch.nn.CrossEntropyLoss):
        def forward(self, logits, targets):
            training = torch.is_grad_enabled()
            calls.append(training)
            loss = super().forward(logits, targets)
            return loss * torch.nan if training and sum(calls) == steps_per_epoch + 2 else loss

    monkeypatch.setattr(engine, "make_criterion", lambda task, weights: NanAtStepTwoOfEpochTwo())
    with pytest.raises(SystemExit) as info:
        _run(_argv(manifest, out))
    assert f"NaN or infinite at step {steps_per_epoch + 2} (epoch 2)" in str(info.value)
    checkpoint = models.load_checkpoint(out / "last.pt")
    assert checkpoint["epoch"] == 1 and all(torch.isfinite(v).all() for v in checkpoint["model"].values()
                                            if v.is_floating_point())
    assert not (out / "summary.json").exists()


def test_skip_bad_leaves_out_unreadable_images_and_counts_them(tmp_path, capsys):
    manifest = _manifest(tmp_path)
    df = pd.read_csv(manifest)
    broken = df.loc[df.split == "train", "image"].iloc[:2].tolist()
    Path(broken[0]).write_bytes(b"")  # zero bytes
    Path(broken[1]).write_bytes(Path(broken[1]).read_bytes()[:60])  # truncated
    with pytest.raises(ValueError) as info:  # without --skip-bad: the first one met stops the run
        _run(_argv(manifest, tmp_path / "strict", epochs=1))
    assert any(str(info.value).startswith(f"{path}: cannot read the image") for path in broken)

    out = tmp_path / "run"
    _run(_argv(manifest, out, "--skip-bad", epochs=1))
    assert "skipping 2 unreadable image(s)" in capsys.readouterr().out
    skipped = pd.read_csv(out / "skipped.csv")
    assert sorted(skipped["image"]) == sorted(broken) and skipped["reason"].str.len().min() > 0
    assert json.loads((out / "summary.json").read_text())["skipped_images"] == 2
