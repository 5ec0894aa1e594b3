"""Training under a real `torchrun --nproc_per_node=2` (gloo on CPU) with DistributedDataParallel.

The run's logged validation metrics are those of the whole val split (gathered across the two
processes, each image once), so evaluate.py on the saved checkpoint in one process gives the
same numbers; the checkpoint has no `module.` prefix; a killed DDP run resumes under torchrun.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import evaluate
import metrics as metrics_lib
import models
from test_resume import _assert_same_weights, _manifest, _metrics

ROOT = Path(__file__).resolve().parents[1]
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
    manifest = _manifest(tmp_path, n=17)
    out = tmp_path / "run"
    start = time.time()
    done = subprocess.run(_command(manifest, out), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"torchrun --nproc_per_node=2 (gloo), 2 epochs: {time.time() - start:.1f} s")
    return tmp_path, manifest, out, done


def test_torchrun_two_processes_complete_and_rank_0_alone_writes(ddp_run):
    _, _, out, done = ddp_run
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "best.pt", "last.pt", "metrics.csv", "summary.json"]
    assert done.stdout.count("epoch 2/2:") == 1  # one process prints
    assert "x 2 process(es)" in done.stdout
    log = pd.read_csv(out / "metrics.csv")
    assert log[["epoch", "split"]].values.tolist() == [[1, "train"], [1, "val"], [2, "train"], [2, "val"]]


def test_logged_val_metrics_equal_evaluate_py_in_one_process(ddp_run):
    tmp_path, manifest, out, _ = ddp_run
    checkpoint = models.load_checkpoint(out / "last.pt")
    assert not any(key.startswith(("module.", "_orig_mod.")) for key in checkpoint["model"])
    evaluate.main(evaluate.get_args_parser().parse_args(  # a plain single-process model from the checkpoint
        ["--checkpoint", str(out / "last.pt"), "--manifest", str(manifest), "--split", "val", "--out",
         str(tmp_path / "eval"), "--bootstrap", "0", "--batch-size", "3", "--workers", "0", "--device", "cpu"]))
    measured = pd.read_csv(tmp_path / "eval" / "metrics.csv").iloc[0]
    logged = pd.read_csv(out / "metrics.csv").query("split == 'val' and epoch == 2").iloc[0]
    assert measured["n"] == 8  # the whole val split, each image once (no sampler padding)
    for name in metrics_lib.metric_names("multiclass"):
        assert logged[name] == pytest.approx(measured[name], abs=1e-6), name
    assert logged["loss"] == pytest.approx(measured["loss"], abs=2e-3)  # bf16: batch size may move the last digits


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
    assert models.load_checkpoint(out / "last.pt")["epoch"] == 1 and not (out / "summary.json").exists()

    done = subprocess.run(_command(manifest, out), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming after epoch 1" in done.stdout
    pd.testing.assert_frame_equal(_metrics(out), _metrics(reference))
    _assert_same_weights(models.load_checkpoint(out / "last.pt")["model"],
                         models.load_checkpoint(reference / "last.pt")["model"])
