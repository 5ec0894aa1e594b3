"""kit.cli: argument types, the runtime flags, one-line errors; every script's --help (the commands to
paste first, defaults shown, answered without importing torch or MONAI) """
import argparse
import importlib
import os
import re
import subprocess
import sys

import pytest
from helpers import ROOT, load_make_demo_data

from kit import cli

# script -> how to start it, how to get its parser in this process
SCRIPTS = {
    "finetune_target.py": (["finetune_target.py"], lambda: importlib.import_module("finetune_target")),
    "pretrain_source.py": (["pretrain_source.py"], lambda: importlib.import_module("pretrain_source")),
    "pretrain_all.py": (["pretrain_all.py"], lambda: importlib.import_module("pretrain_all")),
    "evaluate.py": (["evaluate.py"], lambda: importlib.import_module("evaluate")),
    "plot_results.py": (["plot_results.py"], lambda: importlib.import_module("plot_results")),
    "prepare_data.py": (["prepare_data.py"], lambda: importlib.import_module("prepare_data")),
    "tools/make_demo_data.py": (["tools/make_demo_data.py"], load_make_demo_data),
}
TRAINING = ("finetune_target.py", "pretrain_source.py", "pretrain_all.py")


# --------------------------------------------------------------------------- argument types

def test_argparse_types_reject_impossible_values():
    assert cli.positive_int("3") == 3 and cli.fraction("1") == 1.0 and cli.dropout_rate("0") == 0.0
    for parse, text, words in ((cli.positive_int, "0", "must be >= 1, got 0"),
                               (cli.positive_int, "2.5", "expected an integer"),
                               (cli.image_size, "16", "must be >= 32 px and <= 1024 px, got 16"),
                               (cli.fraction, "0", "must be > 0 and <= 1, got 0"),
                               (cli.positive_float, "inf", "must be > 0"),
                               (cli.dropout_rate, "1", "must be >= 0 and < 1")):
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            parse(text)


def test_ci_level_is_an_argparse_type():
    assert cli.ci_level("0.95") == 0.95 and cli.ci_level("0.5") == 0.5
    for text in ("1", "0", "1.5", "-0.1", "nan"):
        with pytest.raises(argparse.ArgumentTypeError, match=rf"must be > 0 and < 1, got {re.escape(text)}"):
            cli.ci_level(text)
    with pytest.raises(argparse.ArgumentTypeError, match="expected a number, got 'high'"):
        cli.ci_level("high")


def test_existing_file_is_absolute_and_init_source(tmp_path, monkeypatch):
    (tmp_path / "m.csv").write_text("image\n")
    monkeypatch.chdir(tmp_path)
    assert cli.existing_file("m.csv") == str(tmp_path / "m.csv")  # where the run's inputs were, whatever the cwd
    assert cli.existing_file(str(tmp_path / "." / "m.csv")) == str(tmp_path / "m.csv")
    with pytest.raises(argparse.ArgumentTypeError, match="no such file: missing.csv"):
        cli.existing_file("missing.csv")
    with pytest.raises(argparse.ArgumentTypeError, match="no such file"):
        cli.existing_file(str(tmp_path))  # a folder is not a file
    assert cli.init_source("random") == "random" and cli.init_source("imagenet") == "imagenet"
    assert cli.init_source("m.csv") == str(tmp_path / "m.csv")
    with pytest.raises(argparse.ArgumentTypeError, match="no such file: imagnet"):
        cli.init_source("imagnet")


def test_runtime_flags_and_default_workers(monkeypatch):
    training, evaluation = cli.Parser("doc"), cli.Parser("doc")
    cli.add_runtime_args(training, training=True)
    cli.add_runtime_args(evaluation, training=False)
    args = training.parse_args([])
    assert (args.device, args.amp, args.channels_last, args.compile, args.log_every, args.sync_bn) == \
        ("auto", True, True, False, 50, False)
    assert not {"compile", "log_every", "sync_bn"} & set(vars(evaluation.parse_args([])))
    assert evaluation.parse_args(["--no-amp", "--workers", "0"]).amp is False
    monkeypatch.setattr(cli, "available_cores", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert cli.default_workers() == 4  # the cores per torchrun process on this machine
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert cli.default_workers() == 8  # at most 8
    monkeypatch.setattr(cli, "available_cores", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cli.default_workers() == 1  # at least 1


def test_user_errors_are_one_line(monkeypatch):
    monkeypatch.delenv("STUDY_DEBUG", raising=False)
    for err in (ValueError("m.csv: missing column(s) ['split']"), FileNotFoundError("m.csv: not found")):
        with pytest.raises(SystemExit) as info:
            with cli.user_errors():
                raise err
        assert str(info.value) == f"error: {err}"
    with pytest.raises(SystemExit) as info:  # re-raised from a DataLoader worker: the original's last line
        with cli.user_errors():
            raise ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                             "call last):\n  File ...\nValueError: /x/a.png: cannot read the image")
    assert str(info.value) == "error: /x/a.png: cannot read the image"
    with pytest.raises(KeyError):  # not bad input: a traceback
        with cli.user_errors():
            raise KeyError("bug")
    monkeypatch.setenv("STUDY_DEBUG", "1")
    with pytest.raises(ValueError):
        with cli.user_errors():
            raise ValueError("shown with its traceback")


# --------------------------------------------------------------------------- --help

def _help(script, tmp_path):
    """`python -X importtime <script> --help` on one wide line per flag: (result, help text, imported modules)."""
    argv, _ = SCRIPTS[script]
    env = {**os.environ, "COLUMNS": "2000"}
    result = subprocess.run([sys.executable, "-X", "importtime", *argv, "--help"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    modules = [line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
               if line.startswith("import time:") and "|" in line]
    return result, result.stdout, modules


def _entry(help_text, option):
    """The lines --help shows for `option`: from its invocation to the next flag or section."""
    lines = help_text.splitlines()
    flags = lines.index("options:")  # past the description, whose commands name flags too
    start = next(i for i in range(flags, len(lines)) if re.match(rf"^\s+{re.escape(option)}(?=[ ,=]|$)", lines[i]))
    end = next((i for i in range(start + 1, len(lines))
                if re.match(r"^\s+-", lines[i]) or not lines[i].strip() or not lines[i].startswith(" ")), len(lines))
    return " ".join(" ".join(lines[start:end]).split())


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_help_shows_every_default_without_importing_torch(script, tmp_path):
    result, help_text, modules = _help(script, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in help_text and modules  # -X importtime listed the imports
    heavy = sorted({m for m in modules if m.split(".")[0] in ("torch", "monai")})
    assert not heavy, f"{script} --help imports {heavy[:5]}"
    parser = SCRIPTS[script][1]().get_args_parser()
    for action in parser._actions:
        if not action.option_strings or action.required or action.default in (None, argparse.SUPPRESS) \
                or isinstance(action, argparse._HelpAction):
            continue
        entry = _entry(help_text, action.option_strings[0])
        assert f"(default: {action.default})" in entry or "default" in (action.help or ""), \
            f"{script} --help: {action.option_strings[0]} does not show its default {action.default!r}: {entry!r}"


def test_help_of_each_script_says_what_it_offers(tmp_path):
    texts = {script: _help(script, tmp_path)[1] for script in (*TRAINING, "evaluate.py")}
    assert "(default: 0.0001)" in _entry(texts["finetune_target.py"], "--lr")
    for script in TRAINING:
        module = SCRIPTS[script][1]()
        assert module.__doc__.strip().splitlines()[0] in texts[script]  # the docstring, commands to paste
        assert "(default: 0)" in _entry(texts[script], "--warmup-epochs")
        for flag in ("--sync-bn", "--compile", "--log-every", "--resume", "--skip-bad"):
            assert flag in texts[script], (script, flag)
    assert "--class-weights" not in texts["pretrain_all.py"]  # the aggregate is never weighted (paper 5.2.3)
    assert "--class-weights" in texts["pretrain_source.py"] and "--class-weights" in texts["finetune_target.py"]
    evaluate = texts["evaluate.py"]
    for flag in ("--sync-bn", "--compile", "--log-every", "--warmup-epochs"):
        assert flag not in evaluate, flag
    assert "bootstrap" in _entry(evaluate, "--seed")



# every script a user runs: its --help opens with the commands to paste, then the usage
EVERY_SCRIPT = (*SCRIPTS, "check_overlap.py", "predict.py", "export.py")


@pytest.mark.parametrize("script", EVERY_SCRIPT)
def test_help_opens_with_the_commands_to_paste_then_the_usage(script):
    result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\n\nusage: " in result.stdout, result.stdout[:2000]
    head = result.stdout.split("\n\nusage: ", 1)[0].splitlines()
    words = [line for line in head if not line.startswith("#")]  # a label above a command is a shell comment
    assert words and words[0].startswith(("python ", "torchrun ")), head
    for before, line in zip(head, head[1:]):  # each line a command, its label, or the continuation of a command
        assert line.startswith(("python ", "torchrun ", "#")) or before.endswith("\\"), (script, line)
    assert script.split("/")[-1] in words[0]
    assert not any(line.strip().startswith(("python ", "torchrun ")) for line in result.stdout.split("options:")[0]
                   .split("\n\nusage: ", 1)[1].splitlines()), "a command is left in the description"


def test_parser_puts_the_docstrings_commands_first():
    doc = """One line.

Prose that stays.

CPU demo:
    python a.py --x 1 \\
        --y 2
One GPU:
    # a comment of its own
    torchrun --nproc_per_node=2 a.py --x 1          # trailing words stay
More prose.
"""
    parser = cli.Parser(doc)
    assert parser.commands.splitlines() == [
        "# CPU demo", "python a.py --x 1 \\", "    --y 2", "# One GPU", "# a comment of its own",
        "torchrun --nproc_per_node=2 a.py --x 1          # trailing words stay"]
    assert parser.description == "One line.\n\nProse that stays.\n\nMore prose."
    text = parser.format_help()
    assert text.startswith(parser.commands + "\n\nusage: ") and "Prose that stays." in text
    assert isinstance(parser, argparse.ArgumentParser)
    assert cli.Parser("No commands.").format_help().startswith("usage: ")


@pytest.mark.parametrize("script, flag, value, words", [
    ("finetune_target.py", "--image-size", "100000", "must be >= 32 px and <= 1024 px, got 100000"),
    ("finetune_target.py", "--seed", "-1", "must be >= 0 and <= 4294967295, got -1"),
    ("pretrain_source.py", "--seed", "1e23", "expected an integer, got '1e23'"),
    ("pretrain_all.py", "--batch-size", "1", "must be >= 2 and <= 4096, got 1"),
    ("evaluate.py", "--seed", "99999999999", "must be >= 0"),
    ("prepare_data.py", "--seed", "-3", "must be >= 0"),
    ("plot_results.py", "--seed", "-3", "must be >= 0"),
])
def test_a_typo_that_costs_memory_or_hours_is_refused_by_the_parser(script, flag, value, words, capsys):
    module = importlib.import_module(script.removesuffix(".py"))
    with pytest.raises(SystemExit):
        module.get_args_parser().parse_args([flag, value])
    assert f"argument {flag}: {words}" in capsys.readouterr().err
