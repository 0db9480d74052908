"""Shared fixtures: the real datasets prepared once per test session into a temporary root."""
from __future__ import annotations

import os
import struct
import sys
import zlib
from io import BytesIO
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# The raw Omniglot/EMNIST files: ../shared/data, or where FSL_DATA_SOURCE points.
SHARED_DATA = Path(os.environ.get("FSL_DATA_SOURCE", REPO_ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(REPO_ROOT))

# Where the device-sensitive tests compute (engine equality, meta-gradients against finite
# differences, exact resume, the device-side episode store): FSL_TEST_DEVICE=cuda runs the
# same tests on a GPU (bench/gpu_check.sh does); the CPU by default.
TEST_DEVICE = torch.device(os.environ.get("FSL_TEST_DEVICE", "cpu"))

# Under pytest-xdist (`-n auto`) each worker gets its share of the cores, for its own torch and
# for the processes its tests start: N workers each using every core would oversubscribe the
# machine, which on 2 cores made training several times slower (measured).
XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if XDIST_WORKERS > 1:
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    WORKER_THREADS = max(1, cores // XDIST_WORKERS)
    torch.set_num_threads(WORKER_THREADS)
    os.environ["OMP_NUM_THREADS"] = str(WORKER_THREADS)


def on_test_device(episode):
    """``episode`` with its tensors on TEST_DEVICE."""
    from dataclasses import replace
    return replace(episode, **{name: getattr(episode, name).to(TEST_DEVICE)
                               for name in ("support_x", "support_y", "query_x", "query_y")})


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """Omniglot and EMNIST prepared from ../shared/data, as the download scripts do offline."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the real Omniglot/EMNIST files are not in {SHARED_DATA}")
    from filelock import FileLock  # a dependency of torch

    from data.prepare import prepare

    # Prepared once per run: pytest-xdist's workers share their base folder's parent, and the
    # first to come prepares while the others wait (no test writes into it).
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if XDIST_WORKERS > 1 else base) / "data"
    with FileLock(f"{root}.lock"):
        if not (root / "prepared").exists():
            for name in ("omniglot", "emnist"):
                prepare(name, root, SHARED_DATA / name)
            (root / "prepared").touch()
    return root


@pytest.fixture(scope="session", autouse=True)
def project_root_untouched(tmp_path_factory):
    """Every test writes into its own temporary folders: no record/ or save/ appears beside the
    code.

    The entry points' defaults (--save_dir ./save, --record_dir ./record, reports/plots.py's
    curves.png) are relative to the working directory, so the session runs in an empty
    folder of its own and fails if anything is left there: a test that forgot --save_dir
    or --record_dir is caught, while a run of the user's own that writes ./record or ./save
    in the repository during the suite (which a before/after listing of the repository root
    cannot tell from the tests' doing) no longer fails it. Code and tests find the repository
    through absolute paths (REPO_ROOT, sys.path above, data.prepare.default_data_dir); the
    subprocesses that need it as their working directory say cwd=REPO_ROOT and pass their
    output folders explicitly."""
    cwd = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        yield
    left = sorted(os.listdir(cwd))
    assert not left, (f"the tests left {left} in the working directory (a default ./save or "
                      "./record?)")


def bomb_png(path: Path, side: int = 30_000) -> Path:
    """A PNG whose header says ``side`` x ``side`` pixels (900 megapixels by default), a few
    bytes on disk: a decompression bomb."""
    from PIL import Image
    buffer = BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    header = struct.pack(">II", side, side) + bytes(data[24:29])
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def tiny_run(data_dir, tmp_path_factory):
    """A two-epoch MAML run on cross_char; returns its save_dir."""
    save_dir = tmp_path_factory.mktemp("tiny")
    from helpers import TINY, TRAIN
    code = TRAIN.main(TINY + ["--data_dir", str(data_dir), "--save_dir", str(save_dir)])
    assert code == 0
    return save_dir
