"""Shared fixtures: the project root on sys.path and the real sample files in ../shared/data."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real excerpts of the datasets (see ../shared/data/README.md); tests using them skip without."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample files not found at {SHARED_DATA}")
    return SHARED_DATA
