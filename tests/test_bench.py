"""The throughput benchmark runs end to end (a smoke run: no timing is asserted)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


def test_benchmark_smoke_run(data_dir, tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.throughput", "--method", "maml", "--n_shot", "1",
         "--device", "cpu", "--updates", "1", "--eval_episodes", "2", "--processes", "1,2",
         "--n_task", "4", "--epoch_episodes", "8", "--profile",
         "--data_dir", str(data_dir), "--json", str(out)],
        capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    rows = json.loads(out.read_text())
    assert [(r["method"], r["phase"], r["processes"]) for r in rows] == [("maml", "-", 1),
                                                                        ("maml", "-", 2)]
    for row in rows:
        assert row["train_tasks_per_s"] > 0 and row["peak_memory_mb"] > 0
        assert row["n_task"] == 4
        assert row["episodes_per_epoch"] == 16  # 2 updates x 4 tasks + 8 validation
        # The profile: most self time first, shares of one update's total; a Conv4 task's
        # convolutions (forward and backward) take a large part of it (about a third on an
        # idle CPU; at least 15% with the suite's other tests sharing the cores).
        shares = [o["share"] for o in row["profile"]]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
        convolution = sum(o["share"] for o in row["profile"] if "conv" in o["op"])
        assert convolution >= 0.15, row["profile"]
    assert "train t/s" in done.stdout and "peak RSS" in done.stdout
    assert "4 tasks per meta-update; epoch = 8 training + 8 validation episodes" in done.stdout
    assert "vs 1 process(es), keep malloc: training" in done.stdout
    assert done.stdout.count("where one meta-update's time goes (self time): ") == 2


def test_a_failed_worker_is_reported_with_what_its_ranks_said(tmp_path):
    """Under torchrun a failed rank's own message, not torchrun's summary banner (the only
    line this script used to print), and the summary's exit codes."""
    import os
    empty = tmp_path / "no_raw_files"
    empty.mkdir()
    env = {**os.environ, "FSL_DATA_SOURCE": str(empty)}  # nothing to prepare the data from
    done = subprocess.run(
        [sys.executable, "-m", "bench.throughput", "--method", "maml", "--n_shot", "1",
         "--device", "cpu", "--processes", "2", "--n_task", "4",
         "--data_dir", str(tmp_path / "unprepared")],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0] == "maml - 1-shot, 2 process(es): the worker exited with 1:", done.stderr
    assert f"error: the offline copy {empty}/omniglot is not a folder" in done.stderr
    assert any(line.startswith("exitcode  : 1 ") for line in lines), done.stderr
    assert "ChildFailedError" not in done.stderr and "=====" not in done.stderr


def test_a_method_without_a_benchmark_configuration_is_refused():
    """Not a header and exit 0 (which reads as a finished, empty benchmark)."""
    for script in ("bench.throughput", "bench.precision_error"):
        done = subprocess.run([sys.executable, "-m", script, "--method", "maml,maml_approx"],
                              capture_output=True, text=True, cwd=REPO_ROOT)
        assert done.returncode == 2 and done.stdout == "", script
        assert "--method maml_approx: no configuration in CONFIGS" in done.stderr.splitlines()[-1]


def test_gpu_check_runs_in_quick_mode_on_the_cpu(data_dir, tmp_path):
    """bench/gpu_check.sh, prepared for a CUDA machine, runs its three steps in a tiny version
    without one and writes its JSON files and summary."""
    import os
    from conftest import SHARED_DATA
    env = {**os.environ, "FSL_DATA_SOURCE": str(SHARED_DATA)}
    done = subprocess.run(["bash", "bench/gpu_check.sh", str(tmp_path / "out"), "--quick"],
                          capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = tmp_path / "out"
    assert json.loads((out / "environment.json").read_text())["quick"] is True
    rows = json.loads((out / "throughput.json").read_text())
    assert set(rows[0]["train_tasks_per_s_by_variant"]) == {"loop/fp32", "loop/bf16",
                                                            "batched/fp32", "batched/bf16"}
    slice_info = json.loads((out / "slice.json").read_text())
    # One epoch of each phase, weighted by the published schedule's 50 / 500 / 1498 epochs.
    assert slice_info["epochs"] == 3
    median = slice_info["median_epoch_s"]
    assert set(median) == {"maml-warmup", "switch", "hypernet"} and min(median.values()) > 0
    full_min = (50 * median["maml-warmup"] + 500 * median["switch"]
                + 1498 * median["hypernet"]) / 60
    assert slice_info["extrapolated_2048_epochs_min"] == round(full_min, 1)
    summary = (out / "summary.txt").read_text()
    assert "passed" in summary and "published HyperMAML slice" in summary


def test_predict_memory_benchmark_smoke_run(data_dir, tmp_path):
    """Two query counts, batched and in one batch, each a predict.py process of its own: the
    rows say how many queries, their peak RSS and how many answers agree (no memory figure
    is asserted beyond being measured)."""
    out = tmp_path / "memory.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.predict_memory", "--queries", "12,40", "--query_batch", "10",
         "--repeats", "1", "--data_dir", str(data_dir), "--json", str(out)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["queries"], r["query_batch"]) for r in rows] == [(12, 10), (40, 10)]
    for row in rows:
        assert row["batched_peak_rss_mib"] > 0 and row["one_batch_peak_rss_mib"] > 0
        assert 0 <= row["same_answers"] <= row["queries"]
    assert "KiB a query" in done.stdout and "same answers" in done.stdout


def test_query_statistics_benchmark_smoke_run(data_dir):
    """Three episodes of the shipped HyperMAML model, each way: two accuracies over 3
    episodes and their paired difference, which is the difference of the two means."""
    done = subprocess.run([sys.executable, "-m", "bench.query_statistics", "--episodes", "3",
                           "--data_dir", str(data_dir)], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    means = {mode: float(value) for mode, value in
             re.findall(r"^(each|batch) *: (\d+\.\d+) \+- .* over 3 episodes", done.stdout,
                        re.M)}
    difference = float(re.search(r"each - batch: ([-+]\d+\.\d+)", done.stdout).group(1))
    assert set(means) == {"each", "batch"}
    assert difference == pytest.approx(means["each"] - means["batch"], abs=0.011)
