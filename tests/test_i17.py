"""Scratch: issue 17 tests (parallel study, threads, slim best.pt), to be distributed."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env(out, **settings):
    env = {**os.environ, "OUT": str(out), "IMAGE_SIZE": "32", "EPOCHS_PRETRAIN": "1", "EPOCHS_FINETUNE": "2",
           "BATCH_SIZE": "16", "DEMO_SCALE": "0.3", "WORKERS": "0", "DEVICE": "cpu", "TARGETS": "shenzhen messidor",
           "TORCH_HOME": str(Path(out).parent / "no_torch_home"), "THREADS": "1", **settings}
    for name in ("DATA", "IMAGENET_WEIGHTS", "OMP_NUM_THREADS"):
        env.pop(name, None)
    return env


def _study(out, **settings):
    return subprocess.run(["bash", str(ROOT / "study.sh")], env=_env(out, **settings), capture_output=True, text=True,
                          timeout=3000)


@pytest.mark.slow
def test_two_jobs_give_the_numbers_of_one_and_a_killed_parallel_study_continues(tmp_path):
    one = _study(tmp_path / "one", JOBS="1")
    assert one.returncode == 0, one.stderr[-3000:]
    # two at a time, killed as soon as the first fine-tuning is under way ...
    two = tmp_path / "two"
    process = subprocess.Popen(["bash", str(ROOT / "study.sh")], env=_env(two, JOBS="2"), start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 1500
    while time.time() < deadline and process.poll() is None and not list((two / "finetune").glob("*/*/*/last.pt")):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(2)  # the killed stages' processes end a moment after the script
    # ... and continued by the same command
    again = _study(two, JOBS="2")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "start report" in again.stdout and "done  report" in again.stdout
    assert (tmp_path / "one" / "tables" / "table2.csv").read_text() == (two / "tables" / "table2.csv").read_text()
    # each job printed its CPU threads: cores split among the jobs, as THREADS says
    assert "CPU threads: 1" in (two / ".study" / "logs" / "finetune_shenzhen_Domain_RI_seed0.log").read_text()


@pytest.mark.slow
def test_a_failing_run_stops_the_study_with_its_log_and_keeps_the_rest(tmp_path):
    out = tmp_path / "out"
    first = _study(out, JOBS="2", TARGETS="shenzhen")
    assert first.returncode == 0, first.stderr[-3000:]
    report = (out / "report.md").read_text()
    # break one fine-tuning: its pretrained model is not a checkpoint any more (newer: the arm is redone)
    init = out / "pretrain" / "All_RI" / "seed0" / "last.pt"
    (out / "pretrain" / "All_RI" / "seed0" / "summary.json").touch()
    init.write_bytes(b"not a checkpoint")
    failed = _study(out, JOBS="2", TARGETS="shenzhen")
    assert failed.returncode != 0
    assert "=== FAILED: finetune_shenzhen_All_RI_seed0" in failed.stderr
    assert "not a readable PyTorch checkpoint" in failed.stderr  # the log's last lines
    assert "the study stopped at a failed stage" in failed.stderr.splitlines()[-1]
    # the other arm's results are intact and the report was not rewritten
    assert (out / "finetune" / "shenzhen" / "Domain_RI" / "seed0" / "summary.json").is_file()
    assert (out / "report.md").read_text() == report


def test_best_pt_holds_the_model_and_meta_only(tmp_path):
    sys.path.insert(0, str(ROOT))
    from kit import loop
    assert set(loop.BEST_KEYS) == {"model", "meta", "epoch", "best_metric", "best_epoch", "trained_on"}


def test_threads_are_the_cores_divided_among_the_processes_that_share_them():
    code = ("import sys; sys.path.insert(0, {root!r}); from kit import runtime, cli; import torch; "
            "runtime.set_cpu_threads(); print(torch.get_num_threads(), cli.available_cores())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "STUDY_JOBS", "LOCAL_WORLD_SIZE")}
    alone = subprocess.run([sys.executable, "-c", code.format(root=str(ROOT))], env=env, capture_output=True,
                           text=True)
    threads, cores = map(int, alone.stdout.split()[-2:])
    assert threads == cores and f"CPU threads: {cores} ({cores} cores / 1 process(es))" in alone.stdout
    shared = subprocess.run([sys.executable, "-c", code.format(root=str(ROOT))], env={**env, "STUDY_JOBS": str(cores)},
                            capture_output=True, text=True)
    assert shared.stdout.split()[-2] == "1"
    told = subprocess.run([sys.executable, "-c", code.format(root=str(ROOT))],
                          env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert told.stdout.split()[-2] == "1" and "(OMP_NUM_THREADS)" in told.stdout
