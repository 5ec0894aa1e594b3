"""tests/conftest.py: without the real sample files, the tests that need them skip with one line in the
summary for all of them, in one process and under pytest-xdist; any other skip keeps its own line. The files
of long end-to-end runs are handed out to the pytest-xdist workers first."""
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


def test_the_long_files_are_handed_out_first():
    """pytest-xdist hands out the files in the order collected (pytest.ini): the README's and the study's first,
    in LONG_FILES order, every other test after them in the order collected."""
    from pathlib import Path

    import conftest

    class Item:  # what the hook reads of a collected test
        def __init__(self, name, test):
            self.path, self.test = Path("tests") / name, test

    names = ["test_a.py", conftest.LONG_FILES[1], "test_b.py", conftest.LONG_FILES[0], "test_a.py",
             conftest.LONG_FILES[1]]
    items = [Item(name, i) for i, name in enumerate(names)]
    conftest.pytest_collection_modifyitems(items)
    assert [(item.path.name, item.test) for item in items] == [
        (conftest.LONG_FILES[0], 3), (conftest.LONG_FILES[1], 1), (conftest.LONG_FILES[1], 5), ("test_a.py", 0),
        ("test_b.py", 2), ("test_a.py", 4)]
    assert all((Path(conftest.__file__).parent / name).is_file() for name in conftest.LONG_FILES)
