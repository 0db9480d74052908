"""Training and testing under torchrun: 2 CPU processes with gloo on the real cross_char data
against one process with the same seed, resume with another world size, bad world sizes, and
ranks that die or hang."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli.errors import UserError
from conftest import REPO_ROOT
from runtime.distributed import World

# One thread per process in both runs: the per-task gradients are then the same bits, and the
# float64 meta-gradient sum makes the whole run bit for bit the same.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
HYPERNET = ["--hn_head_len", "2", "--hn_hidden_size", "64", "--hm_enhance_embeddings", "True",
            "--hm_use_class_batch_input", "--hm_maml_warmup", "--hm_maml_warmup_epochs", "1",
            "--hm_maml_warmup_switch_epochs", "2"]
RUNS = {
    # method: (n_task, extra options); hyper_maml's 3 tasks split unevenly (2 + 1), and its
    # 6 epochs cross the warm-up, the switch and the hypernetwork phase.
    "maml": (4, []),
    "hyper_maml": (3, HYPERNET),
    "bayes_hmaml": (2, HYPERNET + ["--hm_weight_set_num_train", "3",
                                   "--hm_weight_set_num_test", "2"]),
}


def options(method: str, data_dir: Path, save_dir: Path) -> list[str]:
    n_task, extra = RUNS[method]
    return ["--dataset", "cross_char", "--method", method, "--n_shot", "1", "--seed", "7",
            "--n_task", str(n_task), "--n_episode", str(2 * n_task), "--stop_epoch", "2",
            "--save_freq", "1", "--final_test", "0", "--data_dir", str(data_dir),
            "--save_dir", str(save_dir),
            *extra]


def launch(script: str, argv: list, processes: int) -> subprocess.CompletedProcess:
    """``python script`` (processes = 1) or ``torchrun --standalone --nproc_per_node N``."""
    runner = ([sys.executable] if processes == 1 else
              [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(processes)])
    return subprocess.run(runner + [script] + [str(a) for a in argv], cwd=REPO_ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


def run_folder(save_dir: Path, method: str) -> Path:
    return save_dir / "checkpoints" / "cross_char" / f"Conv4_{method}_5way_1shot"


def epoch_records(folder: Path) -> list[dict]:
    """metrics.jsonl without the wall times."""
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def assert_same_weights(path_a: Path, path_b: Path) -> None:
    a = torch.load(path_a, weights_only=True)
    b = torch.load(path_b, weights_only=True)
    assert a["epoch"] == b["epoch"]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), (
            name, (a["model"][name] - b["model"][name]).abs().max())
    for key in a["optimizer"]["state"]:
        for field, value in a["optimizer"]["state"][key].items():
            assert torch.equal(value, b["optimizer"]["state"][key][field]), (key, field)


@pytest.fixture(scope="module")
def one_process_run(data_dir, tmp_path_factory):
    """``one_process_run(method)``: the save_dir of the method's 1-process run, trained once
    for the tests that compare against it (never written to by them)."""
    save_dirs = {}

    def save_dir(method: str) -> Path:
        if method not in save_dirs:
            save = tmp_path_factory.mktemp(f"one_process_{method}")
            done = launch("train.py", options(method, data_dir, save), 1)
            assert done.returncode == 0, done.stderr
            save_dirs[method] = save
        return save_dirs[method]
    return save_dir


@pytest.mark.parametrize("method", list(RUNS))
def test_two_processes_train_and_test_like_one(method, data_dir, tmp_path, one_process_run):
    one, two = one_process_run(method), tmp_path / "two"
    double = launch("train.py", options(method, data_dir, two), 2)
    assert double.returncode == 0, double.stderr
    folder_one, folder_two = run_folder(one, method), run_folder(two, method)

    # The same weights and Adam moments, bit for bit, after every one of the 4 x n_task
    # epochs' updates; the same losses, training and validation accuracies per epoch.
    assert_same_weights(folder_one / "last_model.tar", folder_two / "last_model.tar")
    assert epoch_records(folder_two) == epoch_records(folder_one)
    # One writer: one line per epoch in the appended log and on stdout, no stray files.
    epochs = 2 * RUNS[method][0]
    assert len(epoch_records(folder_two)) == epochs
    for epoch in range(epochs):
        assert double.stdout.count(f"epoch {epoch}: loss") == 1, double.stdout
    assert sorted(p.name for p in folder_two.iterdir()) == sorted(
        p.name for p in folder_one.iterdir())
    assert "2 processes" in double.stdout
    if RUNS[method][0] % 2:
        assert "ranks take 2 or 1 tasks" in double.stdout

    # test.py: the episodes split over the two ranks, gathered, give the same report.
    test_args = options(method, data_dir, one) + ["--n_episode", "20", "--repeat", "2"]
    reports = [launch("test.py", test_args + ["--record_dir", tmp_path / f"record{n}"], n)
               for n in (1, 2)]
    for report in reports:
        assert report.returncode == 0, report.stderr
    lines = [[line for line in r.stdout.splitlines()
              if "Test Acc" in line or "calibration" in line.lower()] for r in reports]
    assert len(lines[0]) == 5 and lines[1] == lines[0]
    assert len((tmp_path / "record2" / "results.jsonl").read_text().splitlines()) == 1


def test_resume_with_another_number_of_processes_is_exact(data_dir, tmp_path, one_process_run):
    """A 1-process run resumed by 2 processes from its epoch-3 checkpoint ends where the
    straight 1-process run ends."""
    method = "maml"
    folder = run_folder(one_process_run(method), method)
    resumed_folder = run_folder(tmp_path / "b", method)
    shutil.copytree(folder, resumed_folder)
    shutil.copy(resumed_folder / "3.tar", resumed_folder / "last_model.tar")
    resumed = launch("train.py", options(method, data_dir, tmp_path / "b") + ["--resume"], 2)
    assert resumed.returncode == 0, resumed.stderr
    assert "saved by 1 processes, continuing with 2" in resumed.stdout
    assert "epoch 3: loss" not in resumed.stdout and "epoch 4: loss" in resumed.stdout
    assert_same_weights(folder / "last_model.tar", resumed_folder / "last_model.tar")
    assert epoch_records(resumed_folder) == epoch_records(folder)


def test_more_processes_than_tasks_is_refused(data_dir, tmp_path):
    argv = options("maml", data_dir, tmp_path) + ["--n_task", "1", "--n_episode", "2"]
    done = launch("train.py", argv, 2)
    assert done.returncode != 0
    assert ("error: 2 processes cannot share meta-batches of n_task 1: a rank would have no "
            "task") in done.stderr
    assert not run_folder(tmp_path, "maml").exists()


def start_ranks(argv: list) -> tuple[torch.distributed.TCPStore, list[subprocess.Popen]]:
    """Two ranks started by hand with the environment torchrun would give them (so that no
    launcher stops the survivor for us).

    As under torchrun, the rendezvous store is held outside the ranks, here by this process
    on a port the system picks: a port found free and handed to rank 0 to open later could
    be taken meanwhile by another test's processes (pytest-xdist runs them side by side)."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    ranks = []
    for rank in range(2):
        env = {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(store.port), "TORCHELASTIC_USE_AGENT_STORE": "True"}
        ranks.append(subprocess.Popen([sys.executable, "train.py"] + [str(a) for a in argv],
                                      cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return store, ranks


def wait_for_training(rank0: subprocess.Popen) -> None:
    """Read rank 0's output until its first epoch ends (both ranks are then in the loop)."""
    deadline = time.time() + 300
    for line in rank0.stdout:
        if line.startswith("epoch 0: loss") or time.time() > deadline:
            return
    raise AssertionError("rank 0 ended before its first epoch")


@pytest.mark.parametrize("failure", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
def test_a_dead_or_hung_rank_stops_the_other_with_a_clear_error(failure, data_dir, tmp_path):
    """SIGKILL: the peer's connection closes; SIGSTOP: the peer hangs and --dist_timeout ends
    the wait. Either way rank 0 exits with one line instead of waiting forever."""
    argv = options("maml", data_dir, tmp_path) + ["--n_task", "2", "--n_episode", "2",
                                                  "--stop_epoch", "1000", "--dist_timeout", "15"]
    store, (rank0, rank1) = start_ranks(argv)  # the store lives until the test returns
    try:
        wait_for_training(rank0)
        stopped = time.time()
        rank1.send_signal(failure)
        code = rank0.wait(timeout=120)
        waited = time.time() - stopped
        err = rank0.stderr.read()
    finally:
        for process in (rank0, rank1):
            process.kill()
            process.wait()
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: rank 0 of 2: ") and "another rank stopped or did not " \
        "answer within --dist_timeout 15s" in last, err
    assert waited < 60
    # The checkpoints written so far are intact.
    state = torch.load(run_folder(tmp_path, "maml") / "last_model.tar", weights_only=True)
    assert state["world_size"] == 2


# A rank's life as train.py leads it, then the threads left in the process.
RANK_LIFE = """
import argparse, os, sys
sys.path.insert(0, os.getcwd())
import torch
from runtime import distributed
from methods.meta_learner import TaskResult

def body(device, world):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())  # imports torch._dynamo, as train.py's
    sums = [torch.zeros(3, dtype=torch.float64)]
    world.sum_meta_gradient(sums, [True], [TaskResult(1.0, 1, 2)], 2)
    optimizer.step()

distributed.run_in_world(argparse.Namespace(device="cpu", dist_timeout=60.0), body)
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
with open(os.path.join(sys.argv[1], "rank" + os.environ["RANK"]), "w") as report:
    report.write(repr(sorted(n for n in names if "gloo" in n)))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads Linux's /proc")
def test_leaving_the_world_ends_gloos_threads(tmp_path):
    """After run_in_world no gloo thread is left to run into the interpreter's exit: one that
    released a collective's tensors during it aborted the rank (SIGABRT) about one run in
    twenty. The group outlived destroy_process_group when torch.distributed.nn (which keeps
    ``group.WORLD`` as default arguments) was first imported after the group existed."""
    script = tmp_path / "rank_life.py"
    script.write_text(RANK_LIFE)
    # Each rank reports in its own file: the two ranks' prints into one pipe interleave.
    done = launch(str(script), [tmp_path], 2)
    assert done.returncode == 0, done.stderr[-3000:]
    left = {rank: (tmp_path / f"rank{rank}").read_text() for rank in (0, 1)}
    assert left == {0: "[]", 1: "[]"}, "gloo threads left after run_in_world: " + str(left)


def test_shares_partition_the_tasks_in_order():
    for count in (1, 4, 7, 32, 100):
        for size in range(1, min(count, 6) + 1):
            shares = [World(rank, size).share(count) for rank in range(size)]
            assert [i for share in shares for i in share] == list(range(count))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert World(1, 3).share(32) == range(11, 22)


def test_world_size_checks():
    assert World().check_fits(1, 1) is None
    assert World(0, 4).check_fits(32, 100) is None
    assert "ranks take 11 or 10 tasks" in World(0, 3).check_fits(32, 100)
    with pytest.raises(UserError, match="3 processes cannot share meta-batches of n_task 2"):
        World(0, 3).check_fits(2, 100)
