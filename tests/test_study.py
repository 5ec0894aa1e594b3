"""The study workflow (Snakefile, kit/study.py) end to end on a tiny demo (32 px, two epochs): every stage's
files of the whole study, no target picture in pretraining, the ImageNet arms from a stand-in file, a plan
without running (-n), a bad setting, Ctrl-C. The tiny study on one core and two, a killed study, a failed job
and a study without ImageNet weights: test_study_tiny.py; published backbones and the balanced All models as
arms: test_study_arms.py; your own target: the README's own-task block (test_readme.py).

A stand-in for torchvision's ImageNet DenseNet-121 file (real key names and shapes, old key style like
densenet121-a639ec97.pth, freshly initialised values) is written into a temporary TORCH_HOME, so the IN-based
models and arms run through the real loading path.
"""
import json
import math
import os
import re
import signal
import subprocess
import time

import pandas as pd
import pytest
import torch
from helpers import (
    ROOT,
    job_counts,
    run_study,
    study_command,
    write_imagenet_standin,
)

pytestmark = pytest.mark.slow  # every test here runs the workflow

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


def test_the_readme_layout_is_what_the_study_wrote(study):
    base, _ = study
    patterns = readme_layout()
    assert len(patterns) >= 10, patterns  # the block was read, not skipped
    for pattern in patterns:
        assert list((base / "out").glob(pattern)), f"README's Where runs go names OUT/{pattern}: not in the demo study"


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
