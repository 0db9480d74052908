"""Shared fixtures: the real datasets prepared once per test session into a temporary root."""
from __future__ import annotations

import os
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


def root_listing() -> list[str]:
    # Dot folders belong to tools (pytest's cache, pytest-benchmark's .benchmarks).
    return sorted(n for n in os.listdir(REPO_ROOT) if n != "__pycache__" and n[0] != ".")


@pytest.fixture(scope="session", autouse=True)
def project_root_untouched():
    """The test suite leaves the project's root as it found it: every test writes into its
    own temporary folders (no record/ or save/ appears beside the code)."""
    before = root_listing()
    yield
    left = sorted(set(root_listing()) - set(before))
    assert not left, f"the tests left {left} in {REPO_ROOT}"
