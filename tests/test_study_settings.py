"""kit/study.py's settings check, in this process (no workflow run: tests/test_study.py runs it): every setting
given empty is refused, never its default, and every bound is the one the stage scripts' parsers use."""
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, load_make_demo_data

import finetune_target
from kit import study


def config(name="demo"):
    return yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())


def test_both_configuration_files_pass():
    for name in ("demo", "full"):
        values = {**config(name), "data": None} if name == "full" else config(name)
        assert study.settings(values, here=ROOT).image_size in (64, 224)


@pytest.mark.parametrize("name", sorted(config()))
def test_every_setting_given_empty_is_refused_not_defaulted(name):
    """`--config NAME=` reaches the Snakefile as null: `data=` would run the demo instead of your data,
    `seeds=` seed 0, `targets=` all five paper targets."""
    with pytest.raises(study.SettingError, match=rf"^setting {name} is given empty; leave it out to take the "):
        study.settings({**config("full"), name: None}, here=ROOT, given={name: None})


def script_error(parser, flag, value, capsys):
    with pytest.raises(SystemExit):
        parser.parse_args([flag, value])
    return capsys.readouterr().err.strip().splitlines()[-1].split(f"argument {flag}: ", 1)[1]


@pytest.mark.parametrize("setting, flag, value", [
    ("image_size", "--image-size", "100000"), ("image_size", "--image-size", "7"), ("seeds", "--seed", "-1"),
    ("split_seed", "--seed", "1e23"), ("pretrain_seed", "--seed", "4294967296"), ("epochs_finetune", "--epochs", "0"),
    ("epochs_pretrain", "--epochs", "100000"), ("batch_size", "--batch-size", "abc"), ("batch_size", "--batch-size", "1"),
    ("device", "--device", "gpu"), ("workers", "--workers", "-1"), ("train_fractions", "--train-fraction", "1.5"),
])
def test_a_setting_has_the_bounds_of_the_scripts_flag(setting, flag, value, capsys):
    expected = script_error(finetune_target.get_args_parser(), flag, value, capsys)
    with pytest.raises(study.SettingError) as info:
        study.settings({**config(), setting: value}, here=ROOT, given={setting: value})
    assert str(info.value) == f"setting {setting}={value!r}: {expected}"


def test_the_demo_scale_has_the_bounds_of_make_demo_data(capsys):
    expected = script_error(load_make_demo_data().get_args_parser(), "--scale", "1000", capsys)
    with pytest.raises(study.SettingError, match=rf"setting demo_scale='1000': {expected}"):
        study.settings({**config(), "demo_scale": "1000"}, here=ROOT)


# --------------------------------------------------------------------------- make help

def test_make_help_lists_every_setting_with_both_defaults_and_its_meaning():
    import dataclasses
    import re
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "kit.study"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    for field in dataclasses.fields(study.Settings):
        entry = next((i for i, line in enumerate(lines) if line.startswith(f"{field.name}: ")), None)
        assert entry is not None, f"make help does not list {field.name}"
        demo, full = (study._shown(config(name)[field.name]) for name in ("demo", "full"))
        expected = f"{demo} (demo and full)" if demo == full else f"{demo} (demo), {full} (full)"
        assert lines[entry] == f"{field.name}: {expected}"
        meaning = lines[entry + 1]
        assert meaning.startswith("    ") and len(meaning.strip()) > 10 and "no meaning" not in meaning, field.name
    assert "image_size: 64 (demo), 224 (full)" in lines and "seeds: [0] (demo and full)" in lines
    assert "data: null (demo), /data/study (full)" in lines and "extra_arms: {} (demo and full)" in lines
    text = done.stdout
    assert "make study SETTINGS='seeds=[0,1,2] epochs_finetune=10'" in text
    assert "snakemake --configfile config/full.yaml --config data=/data/study" in text
    assert "$(" not in text and "study.settings" not in text and "_shown" not in text  # no Makefile text, no code names
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\.PHONY:.*\bhelp\b", makefile, re.M)
    assert re.search(r"^help: setup\n\t@\$\(BIN\)/python -m kit\.study$", makefile, re.M)
    # `make help` as the README prints it, with the environment running these tests as the Makefile's .venv
    # (-o: its set-up counts as done, so nothing is installed)
    venv = Path(sys.prefix)
    made = subprocess.run(["make", "-s", "-o", f"{venv}/.installed", "help", f"VENV={venv}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0 and made.stdout == done.stdout, made.stderr[-2000:]


def test_a_settings_meaning_is_its_comment_continued_by_the_indented_comments_under_it():
    text = ("# the file's own comment\n"
            "launch: \"a # in quotes\"   # starts the runs\n"
            "threads: null  # CPU threads; null: every core\n"
            "               # (continued)\n"
            "# not threads'\n"
            "cache: true\n")
    assert study.meanings(text) == {"launch": "starts the runs", "threads": "CPU threads; null: every core (continued)",
                                    "cache": ""}
