"""tests/conftest.py: without the real sample files, the tests that need them skip with one line in the
summary for all of them, in one process and under pytest-xdist; any other skip keeps its own line. A test
file is one pytest-xdist group unless a test names its own, and the named groups go first."""
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


def test_a_file_is_one_xdist_group_a_named_group_its_own_and_named_groups_go_first():
    """pytest-xdist's groups (pytest.ini: --dist loadgroup): each test of a file in the file's group, a test
    marked xdist_group in its own, handed out first; within each, the order of collection."""
    from pathlib import Path

    import conftest

    class Item:  # what the hook reads of a collected test
        def __init__(self, path, name, group=None):
            self.path, self.name = Path(path), name
            self.marks = [pytest.mark.xdist_group(group).mark] if group else []

        def get_closest_marker(self, name):
            return next((mark for mark in reversed(self.marks) if mark.name == name), None)

        def add_marker(self, marker):
            self.marks.append(marker.mark)

    items = [Item("tests/test_a.py", "a1"), Item("tests/test_a.py", "a2"), Item("tests/test_b.py", "b1"),
             Item("tests/test_b.py", "b2", group="long_b"), Item("tests/test_c.py", "c1", group="long_c"),
             Item("tests/test_c.py", "c2")]
    conftest.pytest_collection_modifyitems(items)
    assert [(item.name, item.get_closest_marker("xdist_group").args[0]) for item in items] == [
        ("b2", "long_b"), ("c1", "long_c"), ("a1", "test_a"), ("a2", "test_a"), ("b1", "test_b"), ("c2", "test_c")]
