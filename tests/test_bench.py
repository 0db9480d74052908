"""The throughput benchmark runs end to end (a smoke run: no timing is asserted)."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO_ROOT


def test_benchmark_smoke_run(data_dir, tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "bench/throughput.py", "--method", "maml", "--n_shot", "1",
         "--device", "cpu", "--updates", "1", "--eval_episodes", "2", "--processes", "1,2",
         "--data_dir", str(data_dir), "--json", str(out)],
        capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert [(r["method"], r["phase"], r["processes"]) for r in rows] == [("maml", "-", 1),
                                                                        ("maml", "-", 2)]
    for row in rows:
        assert row["train_tasks_per_s"] > 0 and row["peak_memory_mb"] > 0
        assert row["episodes_per_epoch"] == 196  # 3 updates x 32 tasks + 100 validation
    assert "train t/s" in done.stdout and "peak RSS" in done.stdout
    assert "vs 1 process(es): training" in done.stdout
