"""kit.runtime: device, precision, seeds and RNG state, the place of a process in a torchrun job; and
training under a real `torchrun --nproc_per_node=2` (gloo on CPU) with DistributedDataParallel.

The run's logged validation metrics are those of the whole val split (gathered across the two
processes, each image once), so evaluate.py on the saved checkpoint in one process gives the
same numbers; the checkpoint has no `module.` prefix; a killed DDP run resumes under torchrun.
"""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import ROOT, assert_same_weights, hold_lock, read_metrics, two_colour_manifest

import evaluate
from kit import checkpoints, metrics, runtime

# --------------------------------------------------------------------------- torchrun

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _command(manifest, out, epochs=2):
    # 24 train images over 2 processes of batch 4: 3 steps each; 8 val images: 4 per process
    return [*TORCHRUN, str(ROOT / "finetune_target.py"), "--manifest", str(manifest), "--init", "random",
            "--out", str(out), "--image-size", "32", "--epochs", str(epochs), "--batch-size", "4",
            "--workers", "0", "--device", "cpu", "--hidden-dim", "16"]


def _kill_all(marker: str) -> None:
    """SIGKILL every process whose command line holds `marker` (torchrun starts its workers in
    their own sessions, so killing torchrun's process group would leave them running)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on a small CPU


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ddp")
    manifest = two_colour_manifest(tmp_path, n=17)
    out = tmp_path / "run"
    start = time.time()
    done = subprocess.run(_command(manifest, out), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"torchrun --nproc_per_node=2 (gloo), 2 epochs: {time.time() - start:.1f} s")
    return tmp_path, manifest, out, done


@pytest.mark.slow
def test_torchrun_two_processes_complete_and_rank_0_alone_writes(ddp_run):
    _, _, out, done = ddp_run
    # the run folder's lock file stays, released (removing a lock file another process may be opening is a race)
    assert sorted(p.name for p in out.iterdir()) == [".lock", "args.json", "best.pt", "last.pt", "metrics.csv",
                                                     "summary.json"]
    hold_lock(out / ".lock").close()
    assert done.stdout.count("epoch 2/2:") == 1  # one process prints
    assert "x 2 process(es)" in done.stdout
    log = pd.read_csv(out / "metrics.csv")
    assert log[["epoch", "split"]].values.tolist() == [[1, "train"], [1, "val"], [2, "train"], [2, "val"]]


@pytest.mark.slow
def test_logged_val_metrics_equal_evaluate_py_in_one_process(ddp_run):
    tmp_path, manifest, out, _ = ddp_run
    checkpoint = checkpoints.load_checkpoint(out / "last.pt")
    assert not any(key.startswith(("module.", "_orig_mod.")) for key in checkpoint["model"])
    evaluate.main(evaluate.get_args_parser().parse_args(  # a plain single-process model from the checkpoint
        ["--checkpoint", str(out / "last.pt"), "--manifest", str(manifest), "--split", "val", "--out",
         str(tmp_path / "eval"), "--bootstrap", "0", "--batch-size", "3", "--workers", "0", "--device", "cpu"]))
    measured = pd.read_csv(tmp_path / "eval" / "metrics.csv").iloc[0]
    logged = pd.read_csv(out / "metrics.csv").query("split == 'val' and epoch == 2").iloc[0]
    assert measured["n"] == 8  # the whole val split, each image once (no sampler padding)
    for name in metrics.metric_names("multiclass"):
        assert logged[name] == pytest.approx(measured[name], abs=1e-6), name
    assert logged["loss"] == pytest.approx(measured["loss"], abs=2e-3)  # bf16: batch size may move the last digits


@pytest.mark.slow
def test_a_killed_torchrun_job_resumes_to_the_same_result(ddp_run):
    tmp_path, manifest, reference, _ = ddp_run
    out = tmp_path / "killed"
    job = subprocess.Popen(_command(manifest, out), cwd=ROOT, env=_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "last.pt").exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    _kill_all(str(out))  # torchrun and both workers at once, as on a pre-empted node
    job.wait()
    assert checkpoints.load_checkpoint(out / "last.pt")["epoch"] == 1 and not (out / "summary.json").exists()

    done = subprocess.run(_command(manifest, out), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming after epoch 1" in done.stdout
    pd.testing.assert_frame_equal(read_metrics(out), read_metrics(reference))
    assert_same_weights(checkpoints.load_checkpoint(out / "last.pt")["model"],
                         checkpoints.load_checkpoint(reference / "last.pt")["model"])


# --------------------------------------------------------------------------- one process

def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    runtime.seed_everything(3)
    checkpoints.save_checkpoint({"model": {}, "rng": runtime.rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    runtime.seed_everything(99)
    runtime.set_rng_state(checkpoints.load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_devices_and_precision(monkeypatch):
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device cuda:1: no CUDA device is visible"):
        runtime.resolve_device("cuda:1")
    assert runtime.autocast_dtype(torch.device("cpu"), False) is None
    assert runtime.autocast_dtype(torch.device("cpu"), True) in (None, torch.bfloat16)  # bf16 only where native


def test_a_plain_process_is_rank_0_of_1(monkeypatch, capsys):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info, device = runtime.init_distributed("cpu")
    assert info == runtime.Distributed() and (info.rank, info.world_size, info.enabled) == (0, 1, False)
    assert info.is_main_process and runtime.is_main_process() and device == torch.device("cpu")
    assert runtime.gather({"a": 1}, info) == [{"a": 1}]
    runtime.log("printed once")
    monkeypatch.setenv("RANK", "1")
    runtime.log("not by rank 1")
    assert capsys.readouterr().out == "printed once\n" and not runtime.is_main_process()
    assert runtime.Distributed(rank=1, world_size=2).enabled and not runtime.Distributed(rank=1, world_size=2).is_main_process


def test_threads_are_the_cores_divided_among_the_processes_that_share_them(monkeypatch, capsys):
    from kit import cli

    cores, before = cli.available_cores(), torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        for sharing, expected in ((1, cores), (cores, 1)):  # processes on this machine (torchrun's LOCAL_WORLD_SIZE)
            monkeypatch.setattr(runtime, "_THREADS_CHOSEN", [])  # chosen once per process: a fresh process here
            monkeypatch.setenv("LOCAL_WORLD_SIZE", str(sharing))
            assert runtime.set_cpu_threads() == expected == torch.get_num_threads()
            assert f"CPU threads: {expected} ({cores} cores / {sharing} process(es))" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)
    # OMP_NUM_THREADS is read as torch starts: a process of its own
    code = ("import sys; sys.path.insert(0, {root!r}); from kit import runtime; import torch; "
            "runtime.set_cpu_threads(); print(torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "LOCAL_WORLD_SIZE"}
    told = subprocess.run([sys.executable, "-c", code.format(root=str(ROOT))],
                          env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert told.stdout.split()[-1] == "1" and "(OMP_NUM_THREADS)" in told.stdout
