"""tests/conftest.py: without the real sample files, the tests that need them skip with one line in the
summary for all of them, in one process and under pytest-xdist; any other skip keeps its own line."""
import os
import subprocess
import sys

import pytest
from helpers import ROOT

TESTS = '''
import pytest

def test_one(shared_data): pass
def test_two(shared_data): pass
def test_three(shared_data): pass
def test_other():
    pytest.skip("another reason")
'''


@pytest.mark.parametrize("workers", [[], pytest.param(["-n", "2"], marks=pytest.mark.slow)],
                         ids=["one process", "xdist"])
def test_missing_sample_files_are_one_summary_line(tmp_path, workers):
    (tmp_path / "test_generated.py").write_text(TESTS)
    env = {**os.environ, "SAMPLE_DATA": str(tmp_path / "absent"), "PYTHONPATH": str(ROOT / "tests")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "-p", "conftest",
                           *workers, "test_generated.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    skips = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skips) == 2, done.stdout
    assert skips[0].startswith("SKIPPED [3] ") and skips[0].endswith(
        f"conftest.py: real dataset sample files not found at {tmp_path / 'absent'} (set SAMPLE_DATA; README, Tests)")
    assert skips[1].startswith("SKIPPED [1] test_generated.py:") and skips[1].endswith(": another reason")
    assert "4 skipped in" in done.stdout
