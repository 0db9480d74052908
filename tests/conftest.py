"""Shared fixtures: the real datasets prepared once per test session into a temporary root."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """Omniglot and EMNIST prepared from ../shared/data, as the download scripts do offline."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the real Omniglot/EMNIST files are not in {SHARED_DATA}")
    from data.prepare import prepare

    root = tmp_path_factory.mktemp("data")
    for name in ("omniglot", "emnist"):
        prepare(name, root, SHARED_DATA / name)
    return root
