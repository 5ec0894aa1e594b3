"""Shared fixtures: the project root (and this folder, for `from helpers import ...`) on sys.path, the
real sample files of the datasets, and the runs that several test files read."""
import contextlib
import io
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = Path(os.environ.get("SAMPLE_DATA") or ROOT / "sample_data")  # see README, Tests
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402 (needs the paths above)

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # `-n N`: the workers share the cores, as the study's runs do
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# The files that run the README and the study end to end, the longest units of work: pytest-xdist hands out the
# files in the order collected (pytest.ini: --dist loadfile --no-loadscope-reorder), these first, so that none
# of them starts last while the other workers sit idle.
LONG_FILES = ("test_readme.py", "test_study.py", "test_study_tiny.py", "test_study_arms.py")


def pytest_collection_modifyitems(items):
    """The tests of LONG_FILES first, in that order; the other files after them as collected."""
    items.sort(key=lambda item: LONG_FILES.index(item.path.name) if item.path.name in LONG_FILES else len(LONG_FILES))


# Why a test using `shared_data` skips: said once for all of them in the summary (pytest_runtest_makereport)
NO_SAMPLE_DATA = f"real dataset sample files not found at {SAMPLE_DATA} (set SAMPLE_DATA; README, Tests)"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real excerpts of the datasets' public downloads (a folder per dataset, files in their native
    layout: ChestX-ray14 metadata and images, EyePACS labels and images, BreakHis, COVID-19 Radiography,
    Messidor and DeepDRiD samples); tests using them skip without, and the readers and prepare_data.py
    are then tested on generated native trees only."""
    if not SAMPLE_DATA.is_dir():
        pytest.skip(NO_SAMPLE_DATA)
    return SAMPLE_DATA


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A skip for want of the sample files is reported at this file rather than at each test, so that
    `-ra` folds them into one line (`SKIPPED [N] tests/conftest.py: real dataset sample files not found
    ...`); every other skip keeps its own line. Made in the process that ran the test, so it holds under
    pytest-xdist too."""
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple) and report.longrepr[2] == f"Skipped: {NO_SAMPLE_DATA}":
        report.longrepr = (__file__, None, report.longrepr[2])
    return report


@pytest.fixture(scope="session")
def pretrained_all(tmp_path_factory):
    """pretrain_all.py --label-mask on two tiny folder manifests (2 and 3 classes), one epoch at 32 px:
    (folder, first manifest, second manifest, run folder, what it printed)."""
    import pretrain_all

    tmp_path = tmp_path_factory.mktemp("pretrain_all")
    first = helpers.folder_manifest(tmp_path, "first", ["a", "b"])
    second = helpers.folder_manifest(tmp_path, "second", ["x", "y", "z"], domain="efi")
    out = tmp_path / "All_RI"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        pretrain_all.main(pretrain_all.get_args_parser().parse_args(
            ["--manifests", str(first), str(second), "--init", "random", "--out", str(out), "--label-mask",
             *helpers.TINY]))
    return tmp_path, first, second, out, printed.getvalue()


@pytest.fixture(scope="session")
def plain_study(tmp_path_factory):
    """plot_results.py on a runs tree of last-epoch curves (helpers.RUNS) with two test evaluations:
    (the tree, its metrics.csv frames by (target, arm))."""
    root = tmp_path_factory.mktemp("OUT")
    return root, helpers.write_plain_study(root)


@pytest.fixture(scope="session")
def seeded_study(tmp_path_factory):
    """plot_results.py on a study of 2 seeds, 2 train fractions and test predictions: (the tree,
    the predictions by (target, arm, seed))."""
    root = tmp_path_factory.mktemp("seeded")
    return root, helpers.write_seeded_study(root)
