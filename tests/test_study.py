"""The study workflow (Snakefile, kit/study.py) end to end on a tiny demo (32 px, one or two epochs): every
stage's files, no target picture in pretraining, the ImageNet arms from a stand-in file or left out, a plan
without running (-n), the same numbers on one or two cores at one thread per run, a killed study continued by
the same command, a changed setting rerunning exactly what it reaches, a failed job, your own target.

A stand-in for torchvision's ImageNet DenseNet-121 file (real key names and shapes, old key style like
densenet121-a639ec97.pth, freshly initialised values) is written into a temporary TORCH_HOME, so the IN-based
models and arms run through the real loading path.
"""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time

import pandas as pd
import pytest
import torch
from helpers import (
    ROOT,
    graded_table,
    prepare,
    reference_densenet,
    run_study,
    study_command,
    write_imagenet_standin,
    write_layout,
)

pytestmark = pytest.mark.slow  # every test here runs the workflow
# Each long run apart (tests/conftest.py): the whole study and the tests reading it, the tiny study on one core
# and the tests reading it, the studies of one test each; the bad settings and Ctrl-C stay with the file.
WHOLE_STUDY = pytest.mark.xdist_group("whole_study")
TINY_STUDY_ON_ONE_CORE = pytest.mark.xdist_group("tiny_study_on_one_core")

TARGETS = ["shenzhen", "covid19_radiography", "kather2016", "messidor", "deepdrid"]
ARMS = ["IN", "Domain_RI", "Domain_IN", "All_RI", "All_IN"]
PRETRAINED = ["CXR_RI", "CXR_IN", "HWSI_RI", "HWSI_IN", "EFI_RI", "EFI_IN", "All_RI", "All_IN"]
SOURCES = ["chestxray14", "breakhis", "eyepacs"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The whole study: five targets, five arms (the IN ones from the stand-in), one seed, two fine-tuning epochs."""
    base = tmp_path_factory.mktemp("study")
    write_imagenet_standin(base / "torch_home")
    result = run_study(base / "out", targets=TARGETS, epochs_finetune=2, torch_home=base / "torch_home")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return base, result


@WHOLE_STUDY
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
    # one log per job
    assert {p.name for p in (out / "logs" / "finetune").iterdir()} >= {f"{t}_{a}_seed0.log" for t in TARGETS for a in ARMS}
    # the sources as the paper used them (no test split), the targets with a held-out test split
    for key in SOURCES + TARGETS:
        meta = json.loads((out / "manifests" / f"{key}.json").read_text())
        assert meta["protocol"] == ("paper" if key in SOURCES else "held-out-test"), key
        assert (meta["split_images"]["test"] == 0) == (key in SOURCES), key


def readme_layout():
    """The README's "Where runs go" block as glob patterns below OUT: <name> any name, [optional] left out,
    {best,last} the first, "a, b" two files of one folder."""
    text = (ROOT / "README.md").read_text().split("## Where runs go", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    patterns = []
    for line in text.strip().splitlines():
        line = re.sub(r"\{([^,}]*),[^}]*\}", r"\1", line)  # {best,last}: best
        for path in [column for column in re.split(r"\s{2,}", line) if column.startswith("OUT/")]:
            first, *more = [p.strip() for p in path.split(",")]
            folder = first.rsplit("/", 1)[0] + "/"
            for item in [first, *(folder + m for m in more)]:
                item = re.sub(r"<[^>]*>", "*", re.sub(r"\[[^]]*\]", "", item))
                patterns.append(item.removeprefix("OUT/").rstrip("/"))
    return patterns


@WHOLE_STUDY
def test_the_readme_layout_is_what_the_study_wrote(study):
    base, _ = study
    patterns = readme_layout()
    assert len(patterns) >= 10, patterns  # the block was read, not skipped
    for pattern in patterns:
        assert list((base / "out").glob(pattern)), f"README's Where runs go names OUT/{pattern}: not in the demo study"


@WHOLE_STUDY
def test_no_target_picture_is_seen_in_pretraining(study):
    """The demo's COVID-19 Radiography set holds two ChestX-ray14 radiographs and a twin, as the real one does:
    the radiographs stay out of the chest and All pretraining, every evaluation is checked, the report says so."""
    out = study[0] / "out"
    found = pd.read_csv(out / "overlap" / "overlap.csv")
    borrowed = found[found["source"] == "chestxray14"]
    assert borrowed["target"].tolist() == ["covid19_radiography"] * 2 and len(found) == 2
    for name in PRETRAINED:
        record = json.loads((out / "pretrain" / name / "seed0" / "args.json").read_text())["meta"]["overlap"]
        left_out = sum(record["left_out"].values())
        assert left_out == (2 if name.startswith(("CXR", "All")) else 0), name
        assert record["file"] == str((out / "overlap" / "overlap.csv").resolve())
    assert json.loads((out / "study.json").read_text())["overlap"] == "drop"
    assert json.loads((out / "manifests" / "covid19_radiography.json").read_text())["twins"]["groups"] == 1
    for path in (out / "eval").rglob("metrics.csv"):
        assert pd.read_csv(path)["seen_in_pretraining"].tolist() == [0], path
    report = (out / "report.md").read_text()
    section = report.split("## The same picture in a source and a target")[1].split("\n## ")[0]
    assert "| D2 COVID-19 Radiography | chestxray14 | 2 of " in section and "left out of pretraining" in section
    assert "D2 COVID-19 Radiography: every arm was tested on images no pretraining saw" in section


@WHOLE_STUDY
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


@WHOLE_STUDY
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


@WHOLE_STUDY
def test_the_in_arm_really_started_from_the_standin(study):
    base, _ = study
    args = (base / "out" / "finetune" / "kather2016" / "IN" / "seed0" / "args.json").read_text()
    assert "densenet121-a639ec97.pth" in args
    source = torch.load(base / "out" / "finetune" / "kather2016" / "Domain_RI" / "seed0" / "last.pt",
                        weights_only=True)["meta"]["source_checkpoint"]
    assert source.endswith(os.path.join("pretrain", "HWSI_RI", "seed0", "last.pt"))


@WHOLE_STUDY
def test_a_second_run_has_nothing_to_do_and_a_plan_runs_nothing(study):
    base, _ = study
    before = (base / "out" / "pretrain" / "CXR_RI" / "seed0" / "last.pt").stat().st_mtime_ns
    again = run_study(base / "out", targets=TARGETS, epochs_finetune=2, torch_home=base / "torch_home")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    assert (base / "out" / "pretrain" / "CXR_RI" / "seed0" / "last.pt").stat().st_mtime_ns == before
    # a changed setting: the plan (-n) names exactly the jobs it reaches, and runs none of them
    plan = run_study(base / "out", "-n", targets=TARGETS, epochs_finetune=3, torch_home=base / "torch_home")
    assert plan.returncode == 0, plan.stderr[-3000:]
    jobs = job_counts(plan.stdout)
    assert jobs == {"finetune": 25, "evaluate": 5, "study_record": 1, "report": 1, "all": 1}, jobs
    assert "Params have changed since last execution" in plan.stdout
    assert json.loads((base / "out" / "finetune" / "shenzhen" / "IN" / "seed0" / "args.json").read_text())[
        "args"]["epochs"] == 2


def job_counts(plan):
    """{rule: jobs} of a snakemake plan's job table."""
    lines = plan.split("Job stats:")[1].splitlines()[3:]
    counts = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


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


@TINY_STUDY_ON_ONE_CORE
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
    targets = ["covid19_radiography", "messidor"]  # a chest and a fundus target
    result = run_study(out, data=one_job_at_a_time / "demo_data", targets=targets, seeds=[3], train_fractions=[0.5, 1],
                       launch=f"{os.sys.executable} {launcher}", overlap="keep", torch_home=tmp_path / "empty",
                       env={"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"})  # offline
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    loud = [line for line in result.stderr.splitlines() if line.startswith("!!! NO IMAGENET WEIGHTS")]
    assert len(loud) == 1 and "imagenet_weights=" in loud[0]
    # only what the targets need: no histology target, no HWSI model (BreakHis still in All)
    assert sorted(p.name for p in (out / "pretrain").iterdir()) == ["All_RI", "CXR_RI", "EFI_RI"]
    assert sorted(p.name for p in (out / "finetune" / "messidor").iterdir()) == ["All_RI", "Domain_RI"]
    assert sorted(p.name for p in (out / "finetune" / "messidor" / "All_RI").iterdir()) == ["frac0.5_seed3", "seed3"]
    launched = (tmp_path / "launched.txt").read_text().split()
    assert launched.count("pretrain_source.py") == 2 and launched.count("pretrain_all.py") == 1
    assert launched.count("finetune_target.py") == 2 * 2 * 2  # targets x arms x fractions
    half = json.loads((out / "finetune" / "messidor" / "All_RI" / "frac0.5_seed3" / "args.json").read_text())["args"]
    full = json.loads((out / "finetune" / "messidor" / "All_RI" / "seed3" / "args.json").read_text())["args"]
    assert (half["train_fraction"], half["seed"], full["train_fraction"], full["seed"]) == (0.5, 3, 1.0, 3)
    assert half["init"].endswith(os.path.join("pretrain", "All_RI", "seed3", "last.pt"))
    table = pd.read_csv(out / "tables" / "table2.csv")
    assert len(table) == 2 * 5 and set(table["train_fraction"]) == {1.0}
    ran = table.arm.isin(["Domain_RI", "All_RI"])
    assert table.loc[ran, "val"].notna().all() and table.loc[~ran, ["train", "val"]].isna().all().all()
    summary = pd.read_csv(out / "tables" / "test_summary.csv")
    assert sorted(set(summary["train_fraction"])) == [0.5, 1.0]
    assert "(figures/label_efficiency.png)" in (out / "report.md").read_text()
    # overlap: keep, the paper's way: the pictures stay in pretraining, evaluations count them, the report flags it
    assert json.loads((out / "pretrain" / "CXR_RI" / "seed3" / "args.json").read_text())["meta"]["overlap"] is None
    seen = [pd.read_csv(p)["seen_in_pretraining"].iloc[0] for p in (out / "eval" / "covid19_radiography").rglob("metrics.csv")]
    assert seen and all(v >= 0 for v in seen)
    assert "**kept in pretraining** (overlap: keep" in (out / "report.md").read_text()


@pytest.mark.parametrize("setting, message", [
    ("image_size=7", "setting image_size=7: must be >= 32 px"),
    ("seeds=", "setting seeds is given empty"),
    ("data=", "setting data is given empty"),  # would have run the demo instead
    ("epochs_finetune=0", "setting epochs_finetune=0: must be >= 1"),
    ("device=gpu", "setting device='gpu': expected auto, cpu, cuda, cuda:N or mps"),
    ("targets=[shenzhen,nowhere]", "unknown target 'nowhere'"),
    ("batch_size=abc", "setting batch_size='abc': expected an integer"),
    ("no_such_setting=1", "unknown setting(s) no_such_setting"),
])
def test_a_bad_setting_is_one_line_and_writes_nothing(tmp_path, setting, message):
    out = tmp_path / "out"
    result = subprocess.run(study_command(out) + ["--config", setting], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert [line for line in result.stderr.splitlines() if line.strip()][-1].startswith("error: setting") or \
        "unknown setting" in result.stderr
    assert not out.exists()


@TINY_STUDY_ON_ONE_CORE
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
    assert jobs["cache"] == caches and jobs["pretrain_source"] == 1 and jobs["finetune"] == len(TINY_ARMS), jobs
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


@TINY_STUDY_ON_ONE_CORE
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


@pytest.mark.xdist_group("own_target_study")
def test_your_own_target_and_two_strategies_in_the_study(tmp_path):
    """Your target alone: the paper's targets next to one are the README's own-task block (tests/test_readme.py)."""
    path, _ = graded_table(tmp_path / "own")
    prepare("--dataset", "csv", "--root", str(path), "--image-col", "path", "--label-col", "grade", "--patient-col",
            "pid", "--domain", "other", "--task", "ordinal", "--name", "mytask",
            "--out", str(tmp_path / "own" / "manifests"))
    out = tmp_path / "out"
    result = run_study(out, cores=2, epochs_finetune=2, strategies=["full", "linear"],
                       targets=[f"mytask={tmp_path / 'own' / 'manifests' / 'mytask.csv'}"])
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


def test_a_ctrl_c_ends_the_study_with_the_line_every_script_ends_with(tmp_path):
    from kit import cli
    out = tmp_path / "out"
    process = subprocess.Popen(study_command(out, cores=1), cwd=ROOT, start_new_session=True, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not (out / "logs").exists():
        time.sleep(0.2)
    time.sleep(1)
    os.killpg(process.pid, signal.SIGINT)  # what a Ctrl-C in the terminal sends: the workflow and its jobs
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0 and cli.INTERRUPTED in stderr, stderr[-3000:]


@pytest.mark.xdist_group("published_backbones_study")
def test_published_backbones_and_balanced_all_models_are_arms_of_the_study(tmp_path):
    """Two external arms (stand-ins of two layouts) and the balanced All models, next to IN and Domain_RI."""
    net = reference_densenet(in_channels=1)
    chexnet = write_layout(tmp_path / "weights" / "chexnet.pth.tar", "chexnet", reference_densenet(out_channels=14))
    txv = write_layout(tmp_path / "weights" / "txv.pt", "torchxrayvision", net)
    write_imagenet_standin(tmp_path / "torch_home")
    out = tmp_path / "out"
    result = run_study(out, torch_home=tmp_path / "torch_home", arms=["IN", "Domain_RI"], balanced_all="domain",
                       extra_arms=f"CheXNet={chexnet} TXV={txv}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    arms = {"IN", "Domain_RI", "All_RI_bal", "All_IN_bal", "CheXNet", "TXV"}
    table = pd.read_csv(out / "tables" / "table2.csv")
    ran = table[table["test_last"].notna()]
    assert set(ran["arm"]) == arms and ran[["train", "val", "test_last"]].notna().all().all()
    paired = pd.read_csv(out / "tables" / "paired.csv")
    headline = paired[paired["method"] != "DeLong"]
    pairs = {frozenset(p) for p in zip(headline["arm"], headline["reference"])}
    assert len(pairs) == 15 and all(frozenset(p) in pairs for p in (("CheXNet", "IN"), ("TXV", "All_RI_bal")))
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
