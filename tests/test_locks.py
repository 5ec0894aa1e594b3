"""kit/locks.py: one writer per folder; a folder that cannot be written fails before any work."""

import os
import subprocess
from pathlib import Path

import pytest
from helpers import (
    ROOT,
    colour_folder,
    hold_lock,
    prepare_colour,
    script_error,
    study_command,
    train_argv,
)


def test_prepare_data_evaluate_and_study_refuse_a_folder_in_use(tmp_path):
    data = colour_folder(tmp_path / "data", n=4)
    (tmp_path / "m").mkdir()
    with hold_lock(tmp_path / "m" / ".tiny.lock"):  # the scripts run in this process (helpers.script_error)
        line = script_error("prepare_data.py", "--dataset", "folder", "--root", data, "--name", "tiny", "--domain",
                            "hwsi", "--out", tmp_path / "m")
        assert "pid 4242 on testhost" in line and "\n" not in line, line
        assert not (tmp_path / "m" / "tiny.csv").exists()
    (tmp_path / "ckpt.pt").write_bytes(b"")
    with hold_lock(tmp_path / ".e.lock"):
        line = script_error("evaluate.py", "--checkpoint", tmp_path / "ckpt.pt", "--manifest", tmp_path / "none.csv",
                            "--out", tmp_path / "e")
        assert "pid 4242 on testhost" in line and "\n" not in line, line
    with hold_lock(tmp_path / ".study.lock"):  # the workflow's lock on OUT = tmp_path/study
        result = subprocess.run(study_command(tmp_path / "study"), cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode != 0 and "pid 4242 on testhost" in result.stderr
        assert not (tmp_path / "study").exists()


def test_a_read_only_output_folder_fails_before_any_work(tmp_path):
    target = Path("/sys/kit_read_only_check")
    try:
        target.mkdir()
        target.rmdir()
        pytest.skip("/sys is writable here; no read-only file system to test with")
    except OSError:
        pass
    manifest = prepare_colour(colour_folder(tmp_path / "data", n=4), tmp_path / "m")
    for argv in (train_argv(manifest, target / "run"),
                 ["evaluate.py", "--checkpoint", tmp_path / "none.pt", "--manifest", manifest, "--out", target / "e"]):
        line = script_error(*argv)  # in this process (helpers.script_error)
        assert line.startswith(f"error: {target}") and "\n" not in line, line
