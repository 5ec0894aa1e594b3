"""Smoke test: study.sh end to end on a tiny demo (32 px, one epoch), all five arms, one seed; the
run without ImageNet weights also covers a second train fraction, another seed and LAUNCH.

A stand-in for torchvision's ImageNet DenseNet-121 file (real key names and shapes, old key
style like densenet121-a639ec97.pth, freshly initialised values) is written into a temporary
TORCH_HOME, so the IN-based models and arms run through the real loading path.
"""
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import (
    ROOT,
    graded_table,
    image_sizes,
    run_script,
    run_tiny_study,
    study_env,
    wait_until_free,
    write_imagenet_standin,
)

pytestmark = pytest.mark.slow  # every test here runs study.sh

TARGETS = ["shenzhen", "covid19_radiography", "kather2016", "messidor", "deepdrid"]
ARMS = ["IN", "Domain_RI", "Domain_IN", "All_RI", "All_IN"]
PRETRAINED = ["CXR_RI", "CXR_IN", "HWSI_RI", "HWSI_IN", "EFI_RI", "EFI_IN", "All_RI", "All_IN"]
SOURCES = ["chestxray14", "breakhis", "eyepacs"]


def run_study(out: Path, torch_home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "TORCH_HOME": str(torch_home), "IMAGE_SIZE": "32",
           "EPOCHS_PRETRAIN": "1", "EPOCHS_FINETUNE": "2", "BATCH_SIZE": "16", "DEMO_SCALE": "0.3",
           "WORKERS": "0", "DEVICE": "cpu"}
    env.pop("DATA", None)
    env.pop("IMAGENET_WEIGHTS", None)
    return subprocess.run(["bash", str(ROOT / "study.sh")], env=env, capture_output=True, text=True,
                          timeout=3000)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    write_imagenet_standin(base / "torch_home")
    result = run_study(base / "out", base / "torch_home")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return base, result


def test_every_stage_wrote_its_files(study):
    base, _ = study
    out = base / "out"
    for key in SOURCES + TARGETS:
        assert (out / "manifests" / f"{key}.csv").is_file()
        assert (out / "manifests" / f"{key}.json").is_file()
    for name in PRETRAINED:
        for f in ("args.json", "metrics.csv", "last.pt", "best.pt", "summary.json"):
            assert (out / "pretrain" / name / "seed0" / f).is_file(), f"pretrain/{name}/seed0/{f}"
    for target in TARGETS:
        assert (out / "figures" / f"{target}.png").stat().st_size > 10_000
        for arm in ARMS:
            run = out / "finetune" / target / arm / "seed0"
            for f in ("args.json", "metrics.csv", "last.pt", "best.pt"):
                assert (run / f).is_file(), f"finetune/{target}/{arm}/seed0/{f}"
            for kind in ("best", "last"):
                for f in ("predictions.csv", "metrics.csv", "per_class.csv", "confusion.csv", "confusion.png"):
                    assert (out / "eval" / target / arm / "seed0" / kind / f).is_file(), f"eval/{target}/{arm}/{kind}/{f}"
    for f in ("table2.md", "table2.csv", "paired.csv", "convergence.csv", "runs.csv", "test_summary.csv"):
        assert (out / "tables" / f).is_file(), f
    assert (out / "figures" / "forest.png").is_file() and (out / "report.md").is_file()
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.tmp.*"))
    # the sources as the paper used them (no test split), the targets with a held-out test split
    for key in SOURCES + TARGETS:
        meta = json.loads((out / "manifests" / f"{key}.json").read_text())
        assert meta["protocol"] == ("paper" if key in SOURCES else "held-out-test"), key
        assert (meta["split_images"]["test"] == 0) == (key in SOURCES), key


def test_metrics_csv_columns(study):
    base, _ = study
    out = base / "out"
    multiclass = ["epoch", "split", "loss", "accuracy", "balanced_accuracy", "kappa", "qwk", "auroc", "seconds", "lr"]
    multilabel = ["epoch", "split", "loss", "auroc", "map", "seconds", "lr"]
    assert list(pd.read_csv(out / "pretrain" / "CXR_RI" / "seed0" / "metrics.csv").columns) == multilabel
    assert list(pd.read_csv(out / "pretrain" / "All_IN" / "seed0" / "metrics.csv").columns) == multilabel
    assert list(pd.read_csv(out / "pretrain" / "EFI_RI" / "seed0" / "metrics.csv").columns) == multiclass
    log = pd.read_csv(out / "finetune" / "messidor" / "Domain_IN" / "seed0" / "metrics.csv")
    assert list(log.columns) == multiclass
    assert log[["epoch", "split"]].values.tolist() == [[1, "train"], [1, "val"], [2, "train"], [2, "val"]]
    evaluation = pd.read_csv(out / "eval" / "shenzhen" / "IN" / "seed0" / "best" / "metrics.csv")
    assert evaluation.loc[0, "split"] == "test" and evaluation.loc[0, "n"] > 0
    assert evaluation.loc[0, "accuracy_ci_low"] <= evaluation.loc[0, "accuracy"] <= evaluation.loc[0, "accuracy_ci_high"]
    assert evaluation.loc[0, "checkpoint"].endswith(os.path.join("IN", "seed0", "best.pt"))
    predictions = pd.read_csv(out / "eval" / "shenzhen" / "IN" / "seed0" / "best" / "predictions.csv")
    assert {"image", "patient", "target", "pred", "prob_normal", "prob_tuberculosis"} <= set(predictions.columns)
    assert len(predictions) == evaluation.loc[0, "n"]


def test_table2_has_25_finite_values(study):
    base, _ = study
    table = pd.read_csv(base / "out" / "tables" / "table2.csv")
    assert list(table.columns[:5]) == ["target", "arm", "metric", "train", "val"]
    assert len(table) == 25
    assert sorted(zip(table.target, table.arm)) == sorted((t, a) for t in TARGETS for a in ARMS)
    assert all(math.isfinite(v) for v in table["val"]) and all(math.isfinite(v) for v in table["train"])
    assert set(table.loc[table.target == "messidor", "metric"]) == {"kappa"}
    assert set(table.loc[table.target == "shenzhen", "metric"]) == {"accuracy"}
    assert table["test"].notna().all() and table["test_last"].notna().all()
    # an interval where every class has enough test patients; the demo's few: the estimate alone
    enough = table["min_class_patients"] >= 10
    assert ((table["test_ci_low"] <= table["test"]) & (table["test"] <= table["test_ci_high"]) | ~enough).all()
    assert table.loc[~enough, "test_ci_low"].isna().all()
    paired = pd.read_csv(base / "out" / "tables" / "paired.csv")
    headline = paired[(paired["checkpoint"] == "best") & (paired["method"] != "DeLong")]
    assert len(headline) == 5 * 10  # per target: all 10 pairs of the five arms
    assert set(paired.loc[paired["method"] == "DeLong", "target"]) == {"shenzhen"}  # the one binary target
    assert (headline["p_value"].between(0, 1) | (headline["min_class_patients"] < 10)).all()
    convergence = pd.read_csv(base / "out" / "tables" / "convergence.csv")
    assert len(convergence) == 25 and convergence["epochs_to_95"].between(1, 2).all()
    report = (base / "out" / "report.md").read_text()
    assert "## Paired comparisons" in report and "(figures/forest.png)" in report


def test_the_in_arm_really_started_from_the_standin(study):
    base, _ = study
    args = (base / "out" / "finetune" / "kather2016" / "IN" / "seed0" / "args.json").read_text()
    assert "densenet121-a639ec97.pth" in args
    source = torch.load(base / "out" / "finetune" / "kather2016" / "Domain_RI" / "seed0" / "last.pt",
                        weights_only=True)["meta"]["source_checkpoint"]
    assert source.endswith(os.path.join("pretrain", "HWSI_RI", "seed0", "last.pt"))


def test_second_run_skips_finished_stages(study):
    base, _ = study
    before = (base / "out" / "pretrain" / "CXR_RI" / "seed0" / "last.pt").stat().st_mtime_ns
    result = run_study(base / "out", base / "torch_home")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pretrain CXR_RI seed 0: done, skipped" in result.stdout
    assert "finetune deepdrid/All_IN/seed0: done, skipped" in result.stdout
    evaluations = [line for line in result.stdout.splitlines() if "evaluate" in line]
    assert evaluations and all(line.endswith("done, skipped") for line in evaluations), evaluations
    assert (base / "out" / "pretrain" / "CXR_RI" / "seed0" / "last.pt").stat().st_mtime_ns == before


def test_without_imagenet_weights_the_in_arms_are_skipped_not_faked(study, tmp_path):
    """Also: a second train fraction (nested subsets, label-efficiency figure), a seed other than 0 and a
    LAUNCH prefix that starts the training scripts (a recording stand-in for torchrun)."""
    base, _ = study
    out = tmp_path / "out"
    launcher = tmp_path / "launcher.py"
    launcher.write_text("import os, runpy, sys\n"
                        f"open({str(tmp_path / 'launched.txt')!r}, 'a').write(sys.argv[1] + '\\n')\n"
                        "sys.argv = sys.argv[1:]\n"
                        "sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))\n"
                        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    env = {**os.environ, "OUT": str(out), "DATA": str(base / "out" / "demo_data"),
           "TORCH_HOME": str(tmp_path / "empty_torch_home"), "IMAGE_SIZE": "32", "EPOCHS_PRETRAIN": "1",
           "EPOCHS_FINETUNE": "1", "BATCH_SIZE": "16", "WORKERS": "0", "DEVICE": "cpu", "SEEDS": "3",
           "TRAIN_FRACTIONS": "0.5 1", "LAUNCH": f"python {launcher}",
           # offline for certain: the download attempt is refused at once
           "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    env.pop("IMAGENET_WEIGHTS", None)
    result = subprocess.run(["bash", str(ROOT / "study.sh")], env=env, capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    loud = [line for line in result.stderr.splitlines() if line.startswith("!!! NO IMAGENET WEIGHTS")]
    assert len(loud) == 1 and "IMAGENET_WEIGHTS=" in loud[0]
    assert sorted(p.name for p in (out / "pretrain").iterdir()) == ["All_RI", "CXR_RI", "EFI_RI", "HWSI_RI"]
    assert sorted(p.name for p in (out / "finetune" / "messidor").iterdir()) == ["All_RI", "Domain_RI"]
    assert sorted(p.name for p in (out / "finetune" / "messidor" / "All_RI").iterdir()) == ["frac0.5_seed3", "seed3"]
    launched = (tmp_path / "launched.txt").read_text().split()
    assert launched.count("pretrain_source.py") == 3 and launched.count("pretrain_all.py") == 1
    assert launched.count("finetune_target.py") == 5 * 2 * 2  # targets x arms x fractions
    half = json.loads((out / "finetune" / "messidor" / "All_RI" / "frac0.5_seed3" / "args.json").read_text())["args"]
    full = json.loads((out / "finetune" / "messidor" / "All_RI" / "seed3" / "args.json").read_text())["args"]
    assert (half["train_fraction"], half["seed"], full["train_fraction"], full["seed"]) == (0.5, 3, 1.0, 3)
    assert half["init"].endswith(os.path.join("pretrain", "All_RI", "seed3", "last.pt"))
    table = pd.read_csv(out / "tables" / "table2.csv")
    assert len(table) == 25 and set(table["train_fraction"]) == {1.0}
    ran = table.arm.isin(["Domain_RI", "All_RI"])
    assert table.loc[ran, "val"].notna().all() and table.loc[~ran, ["train", "val"]].isna().all().all()
    markdown = (out / "tables" / "table2.md").read_text()
    assert markdown.count("n/a") >= 30  # 3 missing arms x 2 rows x 5 targets in Table 2
    summary = pd.read_csv(out / "tables" / "test_summary.csv")
    assert sorted(set(summary["train_fraction"])) == [0.5, 1.0]
    assert (out / "figures" / "label_efficiency.png").is_file()
    assert "(figures/label_efficiency.png)" in (out / "report.md").read_text()


def test_a_given_but_missing_weights_file_is_an_error(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "DATA": str(tmp_path / "data"),
           "IMAGENET_WEIGHTS": str(tmp_path / "nope.pth")}
    (tmp_path / "data").mkdir()
    result = subprocess.run(["bash", str(ROOT / "study.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "nope.pth is not a file" in result.stderr


def test_other_settings_in_the_same_folder_are_refused(study):
    base, _ = study
    env = {**os.environ, "OUT": str(base / "out"), "TORCH_HOME": str(base / "torch_home"), "IMAGE_SIZE": "48",
           "EPOCHS_PRETRAIN": "1", "EPOCHS_FINETUNE": "2", "BATCH_SIZE": "16", "DEMO_SCALE": "0.3"}
    env.pop("DATA", None)
    result = subprocess.run(["bash", str(ROOT / "study.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert "holds a study with other settings" in result.stderr and "image_size=48" in result.stderr
    assert (base / "out" / "study_settings.txt").read_text().split()[3] == "image_size=32"


@pytest.mark.slow
def test_study_force_and_changed_settings_redo_everything_and_a_plain_run_continues(tmp_path):
    out = tmp_path / "out"
    first = run_tiny_study(out)
    assert first.returncode == 0, first.stderr[-3000:]
    assert set(image_sizes(out).values()) == {32}
    refused = run_tiny_study(out, IMAGE_SIZE="48")
    assert refused.returncode == 2 and "FORCE=1" in refused.stderr
    # the remedy the message names, interrupted after its first pretraining ...
    process = subprocess.Popen(["bash", str(ROOT / "study.sh")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=study_env(out, IMAGE_SIZE="48", FORCE="1"), start_new_session=True)
    summary = out / "pretrain" / "CXR_RI" / "seed0" / "summary.json"
    deadline = time.time() + 900
    while time.time() < deadline and process.poll() is None:
        if summary.exists() and json.loads((summary.parent / "args.json").read_text())["meta"]["image_size"] == 48:
            break
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    wait_until_free(out / ".study.lock")  # the killed stages' processes end a moment after the script
    # ... then continued by the plain command with the new settings: every run ends at 48 px, none resumed a 32 px one
    resumed = run_tiny_study(out, IMAGE_SIZE="48")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "holds the checkpoint of a different run" not in resumed.stderr
    assert set(image_sizes(out).values()) == {48}, image_sizes(out)
    again = run_tiny_study(out, IMAGE_SIZE="48")
    assert again.returncode == 0 and "pretrain CXR_RI seed 0: done, skipped" in again.stdout
    # FORCE=1 retrains (never "resuming after epoch 1") and a plain run afterwards skips
    forced = run_tiny_study(out, IMAGE_SIZE="48", FORCE="1")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "resuming after" not in forced.stdout and "done, skipped" not in forced.stdout


@pytest.mark.slow
def test_two_jobs_give_the_numbers_of_one_and_a_killed_parallel_study_continues(tmp_path):
    one = run_tiny_study(tmp_path / "one", JOBS="1")
    assert one.returncode == 0, one.stderr[-3000:]
    # two at a time, killed as soon as the first fine-tuning is under way ...
    two = tmp_path / "two"
    process = subprocess.Popen(["bash", str(ROOT / "study.sh")], env=study_env(two, JOBS="2"), start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 1500
    while time.time() < deadline and process.poll() is None and not list((two / "finetune").glob("*/*/*/last.pt")):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(2)  # the killed stages' processes end a moment after the script
    # ... and continued by the same command
    again = run_tiny_study(two, JOBS="2")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "start report" in again.stdout and "done  report" in again.stdout
    assert (tmp_path / "one" / "tables" / "table2.csv").read_text() == (two / "tables" / "table2.csv").read_text()
    # each job printed its CPU threads: cores split among the jobs, as THREADS says
    # (the jobs the second command ran; those finished before the kill now log "done, skipped")
    threads = [line for log in (two / ".study" / "logs").glob("*.log") for line in log.read_text().splitlines()
               if line.startswith("CPU threads:")]
    assert threads and all(line.startswith("CPU threads: 1 ") for line in threads), threads


@pytest.mark.slow
def test_a_failing_run_stops_the_study_with_its_log_and_keeps_the_rest(tmp_path):
    out = tmp_path / "out"
    first = run_tiny_study(out, JOBS="2", TARGETS="shenzhen")
    assert first.returncode == 0, first.stderr[-3000:]
    report = (out / "report.md").read_text()
    # break one fine-tuning: its pretrained model is not a checkpoint any more (newer: the arm is redone)
    init = out / "pretrain" / "All_RI" / "seed0" / "last.pt"
    (out / "pretrain" / "All_RI" / "seed0" / "summary.json").touch()
    init.write_bytes(b"not a checkpoint")
    failed = run_tiny_study(out, JOBS="2", TARGETS="shenzhen")
    assert failed.returncode != 0
    assert "=== FAILED: finetune_shenzhen_All_RI_seed0" in failed.stderr
    assert "not a readable PyTorch checkpoint" in failed.stderr  # the log's last lines
    assert "the study stopped at a failed stage" in failed.stderr.splitlines()[-1]
    # the other arm's results are intact and the report was not rewritten
    assert (out / "finetune" / "shenzhen" / "Domain_RI" / "seed0" / "summary.json").is_file()
    assert (out / "report.md").read_text() == report


@pytest.mark.slow
def test_your_own_target_and_two_strategies_in_the_study(tmp_path):
    path, _ = graded_table(tmp_path / "own")
    assert run_script("prepare_data.py", "--dataset", "csv", "--root", path, "--image-col", "path", "--label-col",
                      "grade", "--patient-col", "pid", "--domain", "other", "--task", "ordinal", "--name", "mytask",
                      "--out", tmp_path / "own" / "manifests").returncode == 0
    out = tmp_path / "out"
    result = run_tiny_study(out, EPOCHS_FINETUNE="2", JOBS="2", STRATEGIES="full linear",
                            TARGETS=f"shenzhen mytask={tmp_path / 'own' / 'manifests' / 'mytask.csv'}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for folder in (out, out / "strategies" / "linear"):
        table = pd.read_csv(folder / "tables" / "table2.csv")
        mine = table[(table["target"] == "mytask") & table["test_last"].notna()]
        assert set(mine["arm"]) == {"RI", "All_RI"}  # domain other: no Domain arms; RI is the floor
        paired = pd.read_csv(folder / "tables" / "paired.csv")
        assert {("All_RI", "RI")} <= set(zip(paired.loc[paired["target"] == "mytask", "arm"],
                                               paired.loc[paired["target"] == "mytask", "reference"]))
        assert (folder / "figures" / "forest.png").stat().st_size > 10_000
        assert (folder / "figures" / "mytask.png").is_file()
    report = (out / "report.md").read_text()
    assert "## Fine-tuning strategies side by side" in report and "| mytask | All_RI |" in report
    assert "mytask is of domain *other*" in report
    assert "strategies/linear/report.md" in report
