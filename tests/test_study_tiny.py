"""The study workflow on the tiny demo (helpers.TINY_STUDY: shenzhen, 32 px, one epoch each), run on one core
once for the module: the same numbers on two cores at one thread per run, a killed study continued by the same
command, a changed setting rerunning exactly what it reaches, a failed job; and, on its demo data, a study
without ImageNet weights (the IN arms left out, not faked).
"""
import json
import os
import shutil
import signal
import subprocess
import time

import pandas as pd
import pytest
from helpers import ROOT, job_counts, run_study, study_command

pytestmark = pytest.mark.slow  # every test here runs the workflow

# The tiny study's arms (helpers.TINY_STUDY: shenzhen, 32 px, one epoch each): Domain_RI after the CXR_RI
# pretraining and the random-init floor RI, which can run beside that pretraining.
TINY_ARMS = ["Domain_RI", "RI"]


@pytest.fixture(scope="module")
def one_job_at_a_time(tmp_path_factory):
    """The tiny study on one core, one job at a time: its OUT. The two-core test compares with it, the failing-job
    test breaks a copy of it, the no-ImageNet study reads its demo data as a data folder."""
    out = tmp_path_factory.mktemp("one") / "out"
    result = run_study(out, cores=1, arms=TINY_ARMS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_without_imagenet_weights_the_in_arms_are_left_out_not_faked(one_job_at_a_time, tmp_path):
    """Also: a second train fraction (nested subsets, label-efficiency figure), a seed other than 0, a launch
    prefix that starts the training scripts (a recording stand-in for torchrun) and overlap: keep."""
    out = tmp_path / "out"
    launcher = tmp_path / "launcher.py"
    launcher.write_text("import os, runpy, sys\n"
                        f"open({str(tmp_path / 'launched.txt')!r}, 'a').write(sys.argv[1] + '\\n')\n"
                        "sys.argv = sys.argv[1:]\n"
                        "sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))\n"
                        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    result = run_study(out, data=one_job_at_a_time / "demo_data", targets=["covid19_radiography"],
                       arms=["IN", "Domain_RI"], seeds=[3], train_fractions=[0.5, 1],
                       launch=f"{os.sys.executable} {launcher}", overlap="keep", torch_home=tmp_path / "empty",
                       env={"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"})  # offline
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    loud = [line for line in result.stderr.splitlines() if line.startswith("!!! NO IMAGENET WEIGHTS")]
    assert len(loud) == 1 and "imagenet_weights=" in loud[0]
    # only what the arms need: Domain_RI of a chest target, so CXR_RI alone
    assert sorted(p.name for p in (out / "pretrain").iterdir()) == ["CXR_RI"]
    runs = out / "finetune" / "covid19_radiography"
    assert sorted(p.name for p in runs.iterdir()) == ["Domain_RI"]
    assert sorted(p.name for p in (runs / "Domain_RI").iterdir()) == ["frac0.5_seed3", "seed3"]
    launched = (tmp_path / "launched.txt").read_text().split()
    assert launched.count("pretrain_source.py") == 1 and launched.count("pretrain_all.py") == 0
    assert launched.count("finetune_target.py") == 2  # one arm x two fractions
    half = json.loads((runs / "Domain_RI" / "frac0.5_seed3" / "args.json").read_text())["args"]
    full = json.loads((runs / "Domain_RI" / "seed3" / "args.json").read_text())["args"]
    assert (half["train_fraction"], half["seed"], full["train_fraction"], full["seed"]) == (0.5, 3, 1.0, 3)
    assert half["init"].endswith(os.path.join("pretrain", "CXR_RI", "seed3", "last.pt"))
    table = pd.read_csv(out / "tables" / "table2.csv")
    assert len(table) == 5 and set(table["train_fraction"]) == {1.0}
    ran = table.arm == "Domain_RI"
    assert table.loc[ran, "val"].notna().all() and table.loc[~ran, ["train", "val"]].isna().all().all()
    summary = pd.read_csv(out / "tables" / "test_summary.csv")
    assert sorted(set(summary["train_fraction"])) == [0.5, 1.0]
    assert "(figures/label_efficiency.png)" in (out / "report.md").read_text()
    # overlap: keep, the paper's way: the pictures stay in pretraining, evaluations count them, the report flags it
    assert json.loads((out / "pretrain" / "CXR_RI" / "seed3" / "args.json").read_text())["meta"]["overlap"] is None
    seen = [pd.read_csv(p)["seen_in_pretraining"].iloc[0] for p in (out / "eval" / "covid19_radiography").rglob("metrics.csv")]
    assert seen and all(v >= 0 for v in seen)
    assert "**kept in pretraining** (overlap: keep" in (out / "report.md").read_text()


def test_one_core_and_two_give_the_same_numbers_and_a_killed_study_continues(one_job_at_a_time, tmp_path):
    # two at a time, killed as soon as the first fine-tuning is under way ...
    two = tmp_path / "two"
    process = subprocess.Popen(study_command(two, cores=2, arms=TINY_ARMS), cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 1500
    while time.time() < deadline and process.poll() is None and not list((two / "finetune").glob("*/*/*/last.pt")):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    # ... continued by the same command: the killed run resumes from its last.pt, the tables equal one core's
    again = run_study(two, cores=2, arms=TINY_ARMS)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (one_job_at_a_time / "tables" / "table2.csv").read_text() == (two / "tables" / "table2.csv").read_text()
    threads = [line for log in (two / "logs").rglob("*.log") for line in log.read_text().splitlines()
               if line.startswith("CPU threads:")]
    assert threads and all(line.startswith("CPU threads: 1 ") for line in threads), threads
    # a changed setting reaches exactly what depends on it: a new image size every cache and training run (the
    # plan, -n) ...
    plan = run_study(two, "-n", cores=2, arms=TINY_ARMS, image_size=48)
    assert plan.returncode == 0, plan.stderr[-3000:]
    jobs = job_counts(plan.stdout)
    caches = len(list((two / "manifests" / "cache").glob("*_32.ready")))  # one per data set, at 32 px
    # the three sources' caches in one job, the target's in one
    assert (jobs["cache_sources"], jobs["cache"]) == (1, caches - 3), jobs
    assert jobs["pretrain_source"] == 1 and jobs["finetune"] == len(TINY_ARMS), jobs
    # ... more fine-tuning epochs the fine-tunings alone, which start over rather than resume the old checkpoint
    pretrained = (two / "pretrain" / "CXR_RI" / "seed0" / "last.pt").stat().st_mtime_ns
    longer = run_study(two, cores=2, arms=TINY_ARMS, epochs_finetune=2)
    assert longer.returncode == 0, longer.stderr[-3000:]
    epochs = {p.parent.parent.name: json.loads(p.read_text())["args"]["epochs"]
              for p in (two / "finetune").glob("*/*/*/args.json")}
    assert epochs == {arm: 2 for arm in TINY_ARMS}, epochs
    assert (two / "pretrain" / "CXR_RI" / "seed0" / "last.pt").stat().st_mtime_ns == pretrained
    logs = "".join(p.read_text() for p in (two / "logs" / "finetune").glob("*.log"))
    assert "starting over (--restart-if-changed)" in logs


def test_a_failing_job_stops_the_study_with_its_log_and_keeps_the_rest(one_job_at_a_time, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(one_job_at_a_time, out, symlinks=True)  # a finished study (times kept: nothing to redo)
    report = (out / "report.md").read_text()
    # break one fine-tuning's pretrained model: the arm is redone (its input changed) and fails
    (out / "pretrain" / "CXR_RI" / "seed0" / "last.pt").write_bytes(b"not a checkpoint")
    with open(out / "pretrain" / "CXR_RI" / "seed0" / "summary.json", "a") as summary:  # as a redone run would:
        summary.write("\n")  # new content (snakemake compares a small input's checksum, not only its time)
    failed = run_study(out, cores=2, arms=TINY_ARMS)
    assert failed.returncode != 0
    printed = failed.stdout + failed.stderr
    assert "Error in rule finetune" in printed and "not a readable PyTorch checkpoint" in printed  # the log shown
    assert (out / "finetune" / "shenzhen" / "RI" / "seed0" / "summary.json").is_file()
    assert (out / "report.md").read_text() == report
