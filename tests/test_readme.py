"""README.md and docs/*.md say what the code does.

* slow: the README's "stages one by one" block runs as written, command by command, in a copy of
  the repository (every path a command reads was written by an earlier command), and its
  clinical block then runs on the checkpoint the stages wrote and prints class probabilities.
* fast: every script, module, shell script and make target the documents name exists; every flag
  written after a script in a command is in that script's --help; README.md stays short; the
  documents name nothing outside the repository.
"""
import functools
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
STAGES_MARKER = "<!-- stages: run by tests/test_readme.py -->"
CLINICAL_MARKER = "<!-- clinical: run by tests/test_readme.py -->"
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
            path = target.split("#", 1)[0]
            if path and not (document.parent / path).exists():
                broken.append(f"{document.relative_to(ROOT)} -> {target}")
    assert not broken, "\n".join(broken)


def test_the_blocks_the_slow_test_runs_are_there():
    text = README.read_text()
    stages = commands(block_after(text, STAGES_MARKER, "bash"))
    assert stages and all(c.startswith("python ") for c in stages), stages
    assert "model_from_checkpoint" in block_after(text, CLINICAL_MARKER, "python")


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


def python_first_on_path(bin_dir: Path) -> dict:
    """The environment for the blocks: `python` is the interpreter running these tests (a wrapper
    that execs it, so a virtual environment stays a virtual environment)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "python"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("PYTHONPATH", None)  # the copy must work on its own
    env["MPLBACKEND"] = "Agg"
    return env


def paths_read(command: str) -> list[str]:
    """The OUT paths a stage command reads: every OUT/... word except the value of --out."""
    words = tokens(command)
    return [word for i, word in enumerate(words)
            if (word == "OUT" or word.startswith("OUT/")) and not (i and words[i - 1] == "--out")]


def run(command, cwd, env, **kwargs):
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                          **kwargs)


@pytest.mark.slow
def test_readme_stages_then_clinical_block_run_as_written(tmp_path):
    text = README.read_text()
    stages = commands(block_after(text, STAGES_MARKER, "bash"))
    clinical = block_after(text, CLINICAL_MARKER, "python")
    repo = copy_repository(tmp_path / "repo")
    assert not (repo / "OUT").exists(), "the copy must start without OUT: every input comes from the block"
    env = python_first_on_path(tmp_path / "bin")

    for number, command in enumerate(stages, start=1):
        missing = [p for p in paths_read(command) if not (repo / p).exists()]
        assert not missing, f"stage {number} reads {missing}, which no earlier stage wrote:\n{command}"
        result = run(["bash", "-c", command], repo, env)
        assert result.returncode == 0, (f"stage {number} failed (exit {result.returncode}):\n{command}\n"
                                        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")

    # the stages' products: the run the clinical block loads, its evaluation, the report
    run_dir = repo / "OUT/finetune/shenzhen/Domain_RI/seed0"
    for name in ("best.pt", "last.pt", "metrics.csv", "args.json", "summary.json"):
        assert (run_dir / name).is_file(), f"{run_dir / name} was not written"
    assert (repo / "OUT/eval/shenzhen/Domain_RI/seed0/best/metrics.csv").is_file()
    assert (repo / "OUT/report.md").is_file() and (repo / "OUT/tables/table2.md").is_file()

    # the clinical block, with the same python, from the copy's root
    result = run([sys.executable, "-"], repo, env, input=clinical)
    assert result.returncode == 0, f"the clinical block failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    printed = dict(re.findall(r"^(.+?):\s*([0-9]*\.[0-9]+)\s*$", result.stdout, re.M))
    assert set(printed) == {"normal", "tuberculosis"}, f"expected shenzhen's classes, got:\n{result.stdout}"
    probabilities = [float(value) for value in printed.values()]
    assert all(0 <= p <= 1 for p in probabilities)
    assert abs(sum(probabilities) - 1) < 1e-3, f"probabilities sum to {sum(probabilities)}:\n{result.stdout}"
