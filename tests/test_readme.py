"""README.md and docs/*.md say what the code does.

* slow: the README's "stages one by one" block runs as written, in a new shell (no environment
  active: each block activates .venv itself) in a copy of the repository after its documented
  set-up (every path a command reads was written by an earlier command), and its report has numbers
  where the stages made them; then its clinical commands (predict, heat maps, export) and its
  Python snippet run on the checkpoint the stages wrote; and its own-task and backbone blocks run
  on a generated table.
* fast: every script, module, shell script and make target the documents name exists; every flag
  written after a script in a command is in that script's --help; every README block that runs the
  kit opens by activating its environment; README.md stays short; the documents name nothing
  outside the repository.
"""
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import reference_densenet, write_layout
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
STAGES_MARKER = "<!-- stages: run by tests/test_readme.py -->"
CLINICAL_MARKER = "<!-- clinical: run by tests/test_readme.py -->"
COMMANDS_MARKER = "<!-- clinical-commands: run by tests/test_readme.py -->"
OWN_TASK_MARKER = "<!-- own-task: run by tests/test_readme.py -->"
BACKBONE_MARKER = "<!-- backbone: run by tests/test_readme.py -->"
ACTIVATE = "source .venv/bin/activate"  # the environment `make setup` (or make study / make test) built
RUN = "OUT/finetune/shenzhen/Domain_RI/seed0/best.pt"
EVAL = "OUT/eval/shenzhen/Domain_RI/seed0/best"
COMMAND_TIMEOUT = 1200  # seconds for one stage on a slow, busy CPU
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}


# --------------------------------------------------------------------------- reading the documents

def fenced_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, body, offset of the opening fence) of every ``` block."""
    return [(m["lang"].strip().lower(), m["body"], m.start())
            for m in re.finditer(r"^```(?P<lang>[^\n]*)\n(?P<body>.*?)^```[ \t]*$", text, re.M | re.S)]


def block_after(text: str, marker: str, language: str) -> str:
    """The body of the fenced block that directly follows `marker` (only blank lines between)."""
    assert text.count(marker) == 1, f"README.md must hold the line {marker!r} exactly once"
    after = text.index(marker) + len(marker)
    match = re.match(r"\s*```(?P<lang>[^\n]*)\n(?P<body>.*?)^```[ \t]*$", text[after:], re.M | re.S)
    assert match, f"no fenced block right after {marker!r}"
    assert match["lang"].strip().lower() == language, f"the block after {marker!r} must be ```{language}"
    return match["body"]


def commands(body: str) -> list[str]:
    """A shell block's commands: continuation lines (ending in a backslash) joined, comments and
    blank lines dropped."""
    out, current = [], ""
    for line in body.splitlines():
        if current:
            current += " " + line.strip()
        elif line.strip() and not line.lstrip().startswith("#"):
            current = line.strip()
        else:
            continue
        if current.endswith("\\"):
            current = current[:-1].rstrip()
        else:
            out.append(current)
            current = ""
    if current:
        out.append(current)
    return out


def inline_code(text: str) -> list[str]:
    """The `...` spans outside fenced blocks."""
    outside = re.sub(r"^```.*?^```[ \t]*$", "", text, flags=re.M | re.S)
    return re.findall(r"`([^`\n]+)`", outside)


def code_commands(text: str) -> list[str]:
    """Every command in the shell blocks, and every inline code span, of a document."""
    found = [c for lang, body, _ in fenced_blocks(text) if lang in SHELL_LANGUAGES for c in commands(body)]
    return found + inline_code(text)


def tokens(command: str) -> list[str]:
    try:
        return shlex.split(command, comments=True)
    except ValueError:  # an unbalanced quote in prose-like code: split on blanks
        return command.split()


def invocations(command: str) -> list[tuple[str, str, list[str]]]:
    """(kind, name, words after it) for each `python X.py`, `python -m M`, `torchrun ... X.py`,
    `bash X.sh` and `make T` in a command; kind is script, module, shell or make."""
    words = tokens(command)
    found = []
    for i, word in enumerate(words):
        rest = words[i + 1:]
        if re.fullmatch(r"python3?", word) and rest:
            if rest[0] == "-m" and len(rest) > 1:
                found.append(("module", rest[1], rest[2:]))
            elif rest[0].endswith(".py"):
                found.append(("script", rest[0], rest[1:]))
        elif word == "torchrun":
            script = next((j for j, w in enumerate(rest) if w.endswith(".py")), None)
            if script is not None:
                found.append(("script", rest[script], rest[script + 1:]))
        elif word == "bash" and rest and rest[0].endswith(".sh"):
            found.append(("shell", rest[0], rest[1:]))
        elif word == "make" and (i == 0 or words[i - 1] in {"&&", ";", "|"}):
            found += [("make", target, []) for target in rest if re.fullmatch(r"[A-Za-z][\w-]*", target)]
    return found


def in_repository(module: str) -> bool:
    """Whether `python -m module` names a module of this repository (not e.g. pytest)."""
    top = module.split(".", 1)[0]
    return (ROOT / top).is_dir() or (ROOT / f"{top}.py").is_file()


def flags(words: list[str]) -> list[str]:
    """The --flags among a command's words, up to the end of this command (`;`, `&&`, `|`, `#`)."""
    out = []
    for word in words:
        if word in {";", "&&", "||", "|"} or word.startswith("#"):
            break
        if re.fullmatch(r"--[A-Za-z][\w-]*(=.*)?", word):
            out.append(word.split("=", 1)[0])
    return out


@functools.lru_cache(maxsize=None)
def help_text(kind: str, name: str) -> str:
    """`<name> --help`: a Python script's parser asked in this process (every script builds it in
    get_args_parser()), anything else run."""
    if kind == "script" and name.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"_help_{Path(name).stem}", ROOT / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if hasattr(module, "get_args_parser"):
            return module.get_args_parser().format_help()
    command = [sys.executable, "-m", name, "--help"] if kind == "module" else (
        ["bash", name, "--help"] if kind == "shell" else [sys.executable, name, "--help"])
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command[1:])} failed:\n{result.stderr[-2000:]}"
    return result.stdout


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m[1] for m in re.finditer(r"^([A-Za-z][\w-]*)\s*:(?!=)", text, re.M)}


# --------------------------------------------------------------------------- fast checks

@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_named_scripts_modules_and_make_targets_exist(document):
    text = document.read_text()
    targets = makefile_targets()
    missing = []
    for command in code_commands(text):
        for kind, name, _ in invocations(command):
            if kind in ("script", "shell") and not (ROOT / name).is_file():
                missing.append(f"{name} (in `{command}`)")
            elif kind == "module" and in_repository(name) and not any((ROOT / (name.replace(".", "/") + suffix)).is_file()
                                              for suffix in (".py", "/__main__.py")):
                missing.append(f"python -m {name} (in `{command}`)")
            elif kind == "make" and name not in targets:
                missing.append(f"make {name}: no such Makefile target")
    # plain file names in code spans, e.g. `kit/loop.py`, `transforms.py`
    for span in inline_code(text):
        for path in re.findall(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.(?:py|sh))(?![\w/])", span):
            if not (ROOT / path).is_file() and not list(ROOT.glob(f"*/{path}")):
                missing.append(f"{path} (in `{span}`)")
    assert not missing, f"{document.name} names what does not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_flags_after_a_script_are_in_its_help(document):
    unknown = []
    for command in code_commands(document.read_text()):
        for kind, name, rest in invocations(command):
            if kind == "make" or (kind == "module" and not in_repository(name)) or (
                    kind != "module" and not (ROOT / name).is_file()):
                continue  # a missing file is the other test's finding; installed modules are not ours
            wanted = [flag for flag in flags(rest) if flag != "--help"]
            if not wanted:
                continue
            text = help_text(kind, name)
            unknown += [f"{flag} (in `{command}`)" for flag in wanted
                        if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)]
    assert not unknown, f"{document.name}: flags not in the script's --help:\n" + "\n".join(unknown)


def test_readme_is_short_and_documents_stay_inside_the_repository():
    lines = len(README.read_text().splitlines())
    assert lines <= 260, f"README.md has {lines} lines; keep it under 260 (move detail to docs/)"
    assert (ROOT / "docs").is_dir() and len(DOCUMENTS) > 1
    forbidden = ["../shared", "DESIGN.md", "DEVELOPERS.md", "STYLE.md", "before:", "target ≥"]
    found = [f"{document.relative_to(ROOT)}: {word!r}" for document in DOCUMENTS
             for word in forbidden if word in document.read_text()]
    assert not found, "\n".join(found)


def test_documents_link_to_files_that_exist():
    broken = []
    for document in DOCUMENTS:
        for target in re.findall(r"\]\(([^)\s]+)\)", document.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = document.parent / path if path else document
            if path and not linked.exists():
                broken.append(f"{document.relative_to(ROOT)} -> {target}")
            elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
                broken.append(f"{document.relative_to(ROOT)} -> {target}: no such heading")
    assert not broken, "\n".join(broken)


def heading_anchors(document):
    """The anchors a Markdown renderer gives the headings of `document` (lower case, punctuation dropped,
    spaces as hyphens)."""
    return {re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", line.lstrip("#").strip().lower()))
            for line in document.read_text().splitlines() if line.startswith("#")}


def test_each_fact_has_one_source():
    """The README's settings table names exactly the settings both config files define; the strategies it
    and the config comments name are kit.paper.STRATEGIES."""
    import yaml

    from kit.paper import STRATEGIES

    text = README.read_text()
    table = text.split("| setting |", 1)[1].split("\n\n", 1)[0]
    named = {key for row in table.splitlines()[2:] for key in re.findall(r"`(\w+)`", row.split("|")[1])}
    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    full = yaml.safe_load((ROOT / "config" / "full.yaml").read_text())
    assert set(demo) == set(full), set(demo) ^ set(full)
    assert named and named <= set(demo), f"README's settings table names unknown settings: {named - set(demo)}"
    assert f"--strategy {'|'.join(STRATEGIES)}" in text
    for config in ("demo.yaml", "full.yaml"):
        assert f"fine-tuning strategies, a set of arms each: {', '.join(STRATEGIES)}" in (ROOT / "config" / config).read_text()


def test_the_blocks_the_slow_test_runs_are_there():
    text = README.read_text()
    stages = commands(block_after(text, STAGES_MARKER, "bash"))
    assert stages[0] == ACTIVATE and stages[1:] and all(c.startswith("python ") for c in stages[1:]), stages
    assert "model_from_checkpoint" in block_after(text, CLINICAL_MARKER, "python")
    clinical = commands(block_after(text, COMMANDS_MARKER, "bash"))
    assert clinical[0] == ACTIVATE and [c.split()[1] for c in clinical[1:]] == [
        "predict.py", "evaluate.py", "export.py", "export.py"]
    own = commands(block_after(text, OWN_TASK_MARKER, "bash"))
    assert len(own) == 4 and own[0] == ACTIVATE and "--dataset csv" in own[1] and own[2].startswith("snakemake ")
    backbone = commands(block_after(text, BACKBONE_MARKER, "bash"))
    assert len(backbone) == 2 and backbone[0] == ACTIVATE and backbone[1].startswith("snakemake ")
    assert "extra_arms=" in backbone[1]


def test_every_block_that_runs_the_kit_activates_its_environment_first():
    """A new shell has no environment: a README block running python, snakemake, torchrun or pytest opens
    with `source .venv/bin/activate` (the make targets activate it themselves)."""
    forgot = []
    for language, body, _ in fenced_blocks(README.read_text()):
        found = commands(body) if language in SHELL_LANGUAGES else []
        runs_the_kit = any(re.match(r"(python3?|snakemake|torchrun|pytest)\b", command) for command in found)
        if runs_the_kit and found[0] != ACTIVATE:
            forgot.append(found[0])
    assert not forgot, f"README blocks that do not open with {ACTIVATE!r}: {forgot}"


def test_a_new_shell_has_no_python_with_the_kits_packages(tmp_path):
    """What the slow tests run the blocks in: without `source .venv/bin/activate`, `python` is not the kit's."""
    result = subprocess.run(["bash", "-c", "python -c 'import pandas'"], env=new_shell(tmp_path), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and "source .venv/bin/activate" in result.stderr, result.stderr


# --------------------------------------------------------------------------- the README, run

def copy_repository(dest: Path) -> Path:
    """The repository's files (tracked and untracked-but-not-ignored; else everything but .git,
    virtual environments, runs and caches) in `dest`."""
    listed = None
    if shutil.which("git") and (ROOT / ".git").exists():
        result = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=ROOT, capture_output=True)
        if result.returncode == 0:
            listed = [name for name in result.stdout.decode().split("\0") if name]
    if listed is None:
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "OUT", "__pycache__",
                                                                    ".pytest_cache", "*.pyc"))
        return dest
    for name in listed:
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def new_shell(tmp_path: Path) -> dict:
    """The environment of a new terminal: this one without any virtual environment (no VIRTUAL_ENV, no
    PYTHONPATH, no environment's bin folder on PATH) and, first on PATH, a `python`, `python3`, `pip`,
    `snakemake`, `pytest` and `torchrun` that refuse to run. A block that does not activate .venv fails here,
    even on a machine whose system python holds the kit's packages."""
    guard = tmp_path / "no_environment"
    guard.mkdir(exist_ok=True)
    for name in ("python", "python3", "pip", "pip3", "snakemake", "pytest", "torchrun"):
        stub = guard / name
        stub.write_text(f'#!/bin/sh\necho "{name}: no environment is active here (source .venv/bin/activate)" >&2\n'
                        "exit 127\n")
        stub.chmod(stub.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    env = {key: value for key, value in os.environ.items()
           if key not in {"VIRTUAL_ENV", "VIRTUAL_ENV_PROMPT", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX",
                          "CONDA_DEFAULT_ENV"}}
    folders = [folder for folder in env.get("PATH", "").split(os.pathsep) if folder and not environment_bin(folder)]
    env["PATH"] = os.pathsep.join([str(guard), *folders])
    env["MPLBACKEND"] = "Agg"
    return env


def environment_bin(folder: str) -> bool:
    """Whether `folder` is the bin folder of a virtual or conda environment (this Python's included)."""
    path = Path(folder)
    return ((path.parent / "pyvenv.cfg").is_file() or (path.parent / "conda-meta").is_dir()
            or path.resolve() == Path(sys.executable).parent.resolve())


def documented_setup(repo: Path) -> None:
    """`make setup` in the copy (README, Quick start): `.venv` holding PyTorch, the requirements and the kit.
    Stood in for by what that set-up produces here: `.venv` is a link to the environment `make setup` built
    for this checkout (ROOT/.venv), else to the virtual environment running these tests; where there is
    neither (the tests run in another kind of environment), a virtual environment is made in the copy from
    this Python's packages, with the copy installed (editable) and a `snakemake` command."""
    import site

    for built in (ROOT / ".venv", Path(sys.prefix)):
        if (built / "bin" / "activate").is_file() and (built / "bin" / "python").exists():
            (repo / ".venv").symlink_to(built.resolve(), target_is_directory=True)
            return
    venv = repo / ".venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # this Python's packages (torch, MONAI) by a .pth file naming their folders: the .pth files inside those
    # folders (this Python's own editable kit) are not run, so the copy's install is the one imported
    Path(purelib, "parent_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "-e",
                             str(repo)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    launcher = venv / "bin" / "snakemake"
    launcher.write_text('#!/bin/sh\nexec "$(dirname "$0")/python" -m snakemake "$@"\n')
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def paths_read(command: str) -> list[str]:
    """The OUT paths a stage command reads: every OUT/... word except the value of --out."""
    words = tokens(command)
    return [word for i, word in enumerate(words)
            if (word == "OUT" or word.startswith("OUT/")) and not (i and words[i - 1] == "--out")]


def run(command, cwd, env, **kwargs):
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                          **kwargs)


def run_block(body, repo, env, what):
    """A block as printed, in one new `bash` (its `source .venv/bin/activate` holds for the commands after it),
    stopping at the first command that fails and naming it; returns the finished process."""
    trap = "trap 'echo \"failed (exit $?): $BASH_COMMAND\" >&2' ERR\n"
    result = subprocess.run(["bash", "-c", "set -e\n" + trap + body], cwd=repo, env=env, capture_output=True,
                            text=True, timeout=COMMAND_TIMEOUT * len(commands(body)))
    assert result.returncode == 0, (f"{what} failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n"
                                    f"{result.stderr[-3000:]}")
    return result


@pytest.mark.slow
def test_readme_stages_then_clinical_blocks_run_as_written(tmp_path):
    """The stages block, then the clinical commands, each as printed in a new shell (new_shell: no environment
    active) in a copy of the repository after its documented set-up (documented_setup); then the Python
    snippet. The report the stages end in has numbers wherever they made them, and names its data."""
    text = README.read_text()
    stages = block_after(text, STAGES_MARKER, "bash")
    clinical = block_after(text, COMMANDS_MARKER, "bash")
    snippet = block_after(text, CLINICAL_MARKER, "python")
    assert [c.split()[1] for c in commands(clinical)[1:]] == ["predict.py", "evaluate.py", "export.py", "export.py"]
    repo = copy_repository(tmp_path / "repo")
    documented_setup(repo)
    env = new_shell(tmp_path)
    run_block(stages, repo, env, "stages")
    evaluated = pd.read_csv(repo / EVAL / "predictions.csv")
    out = repo / "OUT"

    # report.md: Domain_RI's values (validation, test at the best and at the last epoch: Table 2 and the answers
    # read the last) where the other arms, not run, read n/a; the data named from what the manifests record
    table = pd.read_csv(out / "tables/table2.csv").set_index("arm")
    assert table.loc["Domain_RI", ["train", "val", "test", "test_last"]].notna().all()
    report = (out / "report.md").read_text()
    assert "Data: generated demo data** (seed 0, scale 1)" in report
    next_to_paper = report.split("## The paper's Table 2 next to this run", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in next_to_paper.splitlines() if line.startswith("| D1 Shenzhen CXR | Domain_RI |"))
    assert "n/a" not in row, row
    held_out = report.split("### Held-out test", 1)[1].split("\n\n", 2)[1]  # its table: best-val, last epoch
    rows = [line for line in held_out.splitlines() if line.startswith("| D1 Shenzhen CXR |")]
    assert len(rows) == 2 and all(re.search(r"\| \d+\.\d", line) for line in rows), held_out

    run_block(clinical, repo, env, "clinical")

    # predict.py: every demo image of the folder, with its heat map; nothing skipped
    folder = out / "demo_data/shenzhen/ChinaSet_AllFiles/CXR_png"
    predicted = pd.read_csv(out / "predict/shenzhen/predictions.csv")
    assert list(predicted.columns) == ["image", "pred", "prob_normal", "prob_tuberculosis", "cam"]
    assert sorted(Path(p).name for p in predicted["image"]) == sorted(p.name for p in folder.glob("*.png"))
    assert pd.read_csv(out / "predict/shenzhen/skipped.csv").empty
    np.testing.assert_allclose(predicted[["prob_normal", "prob_tuberculosis"]].sum(axis=1), 1, atol=2e-6)
    assert set(predicted["pred"]) <= {"normal", "tuberculosis"}
    for path in predicted["cam"].sample(3, random_state=0):
        with Image.open(repo / path) as png:
            assert png.format == "PNG" and png.size[0] // 2 < png.size[1] < png.size[0]  # input | map, a caption below
    # ... and on the test images, evaluate.py's numbers: same rows, to 1e-6 when predict.py reads the
    # test images (a CSV); the folder run batches them with other images, which bf16 kernels may round
    # differently, so it is held to 1e-3
    by_name = predicted.assign(name=predicted["image"].map(lambda p: Path(p).name)).set_index("name")
    names = evaluated["image"].map(lambda p: Path(p).name)
    columns = ["prob_normal", "prob_tuberculosis"]
    np.testing.assert_allclose(by_name.loc[names, columns].to_numpy(), evaluated[columns].to_numpy(), atol=1e-3)
    evaluated[["image"]].to_csv(out / "test_images.csv", index=False)
    result = run(["bash", "-c", f"{ACTIVATE} && python predict.py --checkpoint {RUN} OUT/test_images.csv "
                                "--out OUT/predict/test --workers 0"], repo, env)
    assert result.returncode == 0, result.stderr[-3000:]
    on_test = pd.read_csv(out / "predict/test/predictions.csv")
    assert on_test["image"].tolist() == evaluated["image"].tolist()
    assert on_test["pred"].tolist() == evaluated["pred"].tolist()
    np.testing.assert_allclose(on_test[columns].to_numpy(), evaluated[columns].to_numpy(), rtol=0, atol=1e-6)

    # evaluate.py --cam 2: the same evaluation, now with heat maps per class and outcome
    again = pd.read_csv(repo / EVAL / "predictions.csv")
    np.testing.assert_allclose(again[columns].to_numpy(), evaluated[columns].to_numpy(), rtol=0, atol=1e-6)
    listed = pd.read_csv(repo / EVAL / "cam/cam.csv")
    assert set(listed["folder"]) <= {f"{c}/{o}" for c in ("normal", "tuberculosis") for o in ("correct", "wrong")}
    assert listed.groupby("folder").size().max() <= 2 and len(listed) >= 2
    assert all((repo / EVAL / "cam" / file).is_file() for file in listed["file"])

    # export.py: TorchScript with its description, the bundle with the test metrics and CIs, the backbone
    extra = {"meta.json": ""}
    import torch

    model = torch.jit.load(str(out / "export/shenzhen/model.ts"), _extra_files=extra)
    assert json.loads(extra["meta.json"])["classes"] == ["normal", "tuberculosis"]
    assert model(torch.zeros(1, 1, 64, 64, dtype=torch.uint8)).shape == (1, 2)
    bundle = out / "export/shenzhen/bundle"
    metrics = pd.read_csv(repo / EVAL / "metrics.csv").iloc[0]
    assert f"| accuracy | {metrics['accuracy']:.4f} | {metrics['accuracy_ci_low']:.4f}" in \
        (bundle / "docs/README.md").read_text()
    assert json.loads((bundle / "configs/metadata.json").read_text())["network_data_format"]["outputs"]["pred"][
        "channel_def"] == {"0": "normal", "1": "tuberculosis"}
    assert (bundle / "models/model.pt").is_file() and (bundle / "configs/inference.json").is_file()
    from kit.models import load_backbone

    assert load_backbone(out / "export/CXR_RI/backbone.pt")(torch.rand(1, 3, 64, 64)).shape == (1, 1024, 2, 2)

    # the Python snippet, with the installed names, from the copy's root
    result = run(["bash", "-c", f"{ACTIVATE} && python -"], repo, env, input=snippet)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = dict(re.findall(r"^(.+?):\s*([0-9]*\.[0-9]+)\s*$", result.stdout, re.M))
    assert set(printed) == {"normal", "tuberculosis"} and abs(sum(map(float, printed.values())) - 1) < 1e-3


def write_own_table(repo: Path) -> None:
    """mydata/labels.csv as the README's own-task block reads it: a path, a grade (0-3) and a patient
    column, two pictures per patient, paths relative to the table."""
    rows = []
    for patient in range(24):
        for k in range(2):
            name = f"images/p{patient}_{k}.png"
            pixels = np.random.default_rng(patient * 2 + k).integers(0, 255, (48, 64, 3), dtype=np.uint8)
            (repo / "mydata" / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(repo / "mydata" / name)
            rows.append({"path": name, "grade": patient % 4, "patient": f"P{patient}"})
    pd.DataFrame(rows).to_csv(repo / "mydata" / "labels.csv", index=False)


@pytest.mark.slow
def test_readme_own_task_block_runs_as_written(tmp_path):
    """The block as written, in a new shell after the documented set-up, on a generated table; the study's size
    comes from a Snakemake profile (SNAKEMAKE_PROFILE: a tiny demo, 32 px, one epoch, two runs at a time), as a
    user would shrink it."""
    own = block_after(README.read_text(), OWN_TASK_MARKER, "bash")
    repo = copy_repository(tmp_path / "repo")
    documented_setup(repo)
    write_own_table(repo)
    profile = tmp_path / "tiny"
    profile.mkdir()
    (profile / "tiny.yaml").write_text("image_size: 32\nepochs_pretrain: 1\nepochs_finetune: 1\nbatch_size: 16\n"
                                       "demo_scale: 0.3\nworkers: 0\ndevice: cpu\nthreads: 1\n")
    (profile / "profile.yaml").write_text(f"cores: 2\nconfigfile: [{repo / 'config' / 'demo.yaml'}, "
                                          f"{profile / 'tiny.yaml'}]\n")
    env = {**new_shell(tmp_path), "SNAKEMAKE_PROFILE": str(profile), "TORCH_HOME": str(tmp_path / "no_torch_home")}
    env.pop("OMP_NUM_THREADS", None)
    printed = run_block(own, repo, env, "own-task block").stdout
    meta = json.loads((repo / "mydata/manifests/mytask.json").read_text())
    assert meta["ordinal"] and meta["classes"] == ["0", "1", "2", "3"] and meta["domain"] == "other"
    out = repo / "runs/demo"
    report = (out / "report.md").read_text()
    assert printed.endswith("".join(report.splitlines(keepends=True)[:40]))  # head shows the report
    assert "## Fine-tuning strategies side by side" in report and "| mytask | All_RI |" in report
    assert "mytask is of domain *other*" in report
    for folder in (out, out / "strategies" / "linear"):  # full fine-tuning, and the linear probe of every arm
        table = pd.read_csv(folder / "tables/table2.csv")
        ran = table[table["test_last"].notna()]
        # domain other: no Domain arms, RI is the floor (no ImageNet weights here: no IN arms)
        assert set(ran.loc[ran["target"] == "mytask", "arm"]) == {"RI", "All_RI"}, folder
        assert set(ran.loc[ran["target"] == "shenzhen", "arm"]) == {"Domain_RI", "All_RI"}, folder
        paired = pd.read_csv(folder / "tables/paired.csv")
        mine = paired[paired["target"] == "mytask"]
        assert ("All_RI", "RI") in set(zip(mine["arm"], mine["reference"])), folder
        assert (folder / "figures/forest.png").stat().st_size > 10_000 and (folder / "figures/mytask.png").is_file()
    kept = {p: p.stat().st_mtime_ns for p in (out / "finetune" / "shenzhen").glob("*/*/summary.json")}
    assert len(kept) == 4, kept  # two arms, two strategies

    # "Compare a published backbone": its block as written, with a CheXNet-style stand-in where it names one
    write_layout(repo / "chexnet.pth.tar", "chexnet", reference_densenet(out_channels=14))
    run_block(block_after(README.read_text(), BACKBONE_MARKER, "bash"), repo, env, "backbone block")
    table = pd.read_csv(out / "tables/table2.csv")
    assert table.loc[(table["target"] == "shenzhen") & (table["arm"] == "CheXNet"), "test_last"].notna().all()
    report = (out / "report.md").read_text()
    assert "CheXNet = chexnet DenseNet-121 `chexnet.pth.tar`" in report and "CheXNet beats IN" in report
    # the CheXNet arm alone was trained: the shenzhen runs of the block before are kept as they were
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert sorted(p.name for p in (out / "finetune" / "shenzhen").iterdir()) == ["All_RI", "CheXNet", "Domain_RI"]
