"""The entry points' malloc settings (runtime/allocator.py): a freed large tensor's memory is
reused, not handed back to the kernel and faulted in again; glibc's own settings stay on
request."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from runtime import allocator

# Allocate and free a 64 MiB tensor (the size of one 20-way Omniglot task's Conv4 activations)
# with a small tensor made meanwhile that lives until the next round, as a training step's
# results do, and count the page faults of five such rounds after ten: the kept heap takes a
# few rounds to hold a free block that fits (a small block can land next to a freed one, which
# is then a few bytes short of the next aligned request), as a training run its first steps.
FAULTS_OF_FIVE = """
import json, resource
import torch
from runtime import allocator
applied = allocator.keep_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
result = None
def round():
    global result
    x = torch.ones(16 << 20)
    result = torch.ones(100)
    del x
for _ in range(10):
    round()
start = faults()
for _ in range(5):
    round()
print(json.dumps({"applied": applied, "faults": faults() - start}))
"""
PAGES_OF_ONE = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
ON_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def faults_of_five(**env) -> dict:
    settings = (allocator.OPT_OUT, *allocator.USER_SETTINGS, "GLIBC_TUNABLES")
    clean = {k: v for k, v in os.environ.items() if k not in settings}
    done = subprocess.run([sys.executable, "-c", FAULTS_OF_FIVE], capture_output=True,
                          text=True, cwd=REPO_ROOT, env={**clean, **env}, check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(not ON_GLIBC, reason="the settings are glibc's")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    kept = faults_of_five()
    own = faults_of_five(FSL_MALLOC="glibc")
    assert kept["applied"] and not own["applied"]
    # glibc's own settings: every 64 MiB tensor is a fresh mapping, each page faulted in.
    assert own["faults"] >= 5 * PAGES_OF_ONE * 0.9
    # Kept: the five reuse the first one's memory.
    assert kept["faults"] < PAGES_OF_ONE * 0.1


@pytest.mark.skipif(not ON_GLIBC, reason="the settings are glibc's")
def test_the_users_own_malloc_settings_win():
    for name, value in (("MALLOC_MMAP_MAX_", "65536"),
                        ("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")):
        assert not faults_of_five(**{name: value})["applied"], name
    # A tunable of another part of glibc is no malloc setting.
    assert faults_of_five(GLIBC_TUNABLES="glibc.rtld.optional_static_tls=2048")["applied"]


def test_the_benchmark_times_both_settings_side_by_side(data_dir, tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.throughput", "--method", "maml", "--n_shot", "1",
         "--n_way", "3", "--device", "cpu", "--allocator", "glibc,keep", "--updates", "1",
         "--eval_episodes", "2", "--n_task", "2", "--epoch_episodes", "2",
         "--data_dir", str(data_dir), "--json", str(out)],
        capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert [(r["allocator"], r["n_way"]) for r in rows] == [("glibc", 3), ("keep", 3)]
    assert "vs 1 process(es), glibc malloc: training" in done.stdout
