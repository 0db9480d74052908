"""Reliability: a file can never run code when loaded, a diverging run stops, one run per
folder, and a failed write (full disk, vanished folder) is one line that leaves the run
resumable exactly."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import storage.run_folder
from conftest import REPO_ROOT
from helpers import (TEST, TINY, TRAIN, assert_one_line_error, run, run_folder, run_until,
                     train_command)


class RunsCode:
    """Unpickling this calls ``open(marker, "w")``: a file that creates a marker when loaded
    with full pickle (any callable would do, a shell command included)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def strict_json_lines(path) -> list[dict]:
    """The lines of ``path`` as strict JSON parsers read them (NaN/Infinity refused)."""
    def refuse(token):
        raise ValueError(f"{token} is not JSON")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def straight_run(data_dir, tmp_path_factory):
    """An uninterrupted 4-epoch run: what a resumed or restored run must give exactly."""
    save = tmp_path_factory.mktemp("straight")
    assert TRAIN.main(TINY + ["--stop_epoch", "2", "--data_dir", str(data_dir),
                              "--save_dir", str(save)]) == 0
    return run_folder(save)


# --- safe loading ---------------------------------------------------------------------------
def test_a_file_that_would_run_code_is_refused_everywhere(data_dir, tiny_run, tmp_path, capsys):
    marker = tmp_path / "marker"
    save = tmp_path / "save"
    shutil.copytree(run_folder(tiny_run), run_folder(save))
    bomb = {"config": {"method": "maml"}, "model": {}, "epoch": RunsCode(marker)}
    for name in ("best_model.tar", "last_model.tar"):
        torch.save(bomb, run_folder(save) / name)
    test_options = TINY[:6] + ["--data_dir", data_dir, "--save_dir", save, "--n_episode", "5",
                               "--repeat", "1", "--record_dir", tmp_path / "rec"]
    code, _, err = run(TEST, test_options, capsys)
    assert_one_line_error(code, err, r"best_model.tar is not a plain checkpoint: .*\(io"
                                     r"\.open\).*python convert_checkpoint.py")
    code, _, err = run(TRAIN, TINY + ["--data_dir", data_dir, "--save_dir", save, "--resume"],
                       capsys)
    assert_one_line_error(code, err, "last_model.tar is not a plain checkpoint")
    torch.save({"epoch": 1, "state": RunsCode(marker)}, tmp_path / "feature.tar")
    code, _, err = run(TRAIN, TINY[:2] + ["--method", "hyper_maml"] + TINY[4:] + [
        "--hm_load_feature_net", "--hm_feature_net_path", tmp_path / "feature.tar",
        "--data_dir", data_dir, "--save_dir", tmp_path / "other"], capsys)
    assert_one_line_error(code, err, "feature.tar is not a plain checkpoint")
    # The converter the refusal points to reads without running code too.
    import convert_checkpoint
    code = convert_checkpoint.main([str(tmp_path / "feature.tar"), str(tmp_path / "plain.tar")])
    assert_one_line_error(code, capsys.readouterr().err,
                          r"names Python objects that have no plain form here \(io\.open\); "
                          "nothing in it was run")
    assert not marker.exists() and not (tmp_path / "plain.tar").exists()


def test_a_checkpoint_with_flipped_bits_is_refused_not_tested(data_dir, tiny_run, tmp_path,
                                                               capsys):
    """One bit flipped inside a weight record of best_model.tar (its zip CRC then fails, which
    torch.load does not check): test.py and --resume refuse it in one line, nothing recorded,
    where it tested as other weights."""
    import struct
    import zipfile
    save = tmp_path / "save"
    shutil.copytree(tiny_run, save)
    folder = run_folder(save)
    for name in ("best_model.tar", "last_model.tar"):
        checkpoint = folder / name
        with zipfile.ZipFile(checkpoint) as archive:
            record = max(archive.infolist(), key=lambda i: i.file_size)  # the largest weight
        data = bytearray(checkpoint.read_bytes())
        name_length, extra_length = struct.unpack("<HH", data[record.header_offset + 26:
                                                              record.header_offset + 30])
        data[record.header_offset + 30 + name_length + extra_length + record.file_size // 2] ^= 4
        checkpoint.write_bytes(bytes(data))
    code, _, err = run(TEST, TINY + ["--data_dir", data_dir, "--save_dir", save, "--n_episode",
                                     "2", "--repeat", "1", "--record_dir", tmp_path / "r"],
                       capsys)
    assert_one_line_error(code, err, f"best_model.tar is damaged: its record .*{record.filename}"
                                     " does not match the checksum")
    assert not (tmp_path / "r").exists()
    code, _, err = run(TRAIN, TINY + ["--data_dir", data_dir, "--save_dir", save, "--resume",
                                      "--stop_epoch", "2"], capsys)
    assert_one_line_error(code, err, "last_model.tar is damaged")


def test_checkpoints_of_format_2_resume_exactly(data_dir, straight_run, tmp_path, capsys):
    """Format 2 saved numpy's RNG state (numpy arrays, which the safe loader takes only as
    that); such a run still resumes, and continues exactly as an uninterrupted one."""
    options = TINY + ["--stop_epoch", "2", "--data_dir", data_dir]
    assert run(TRAIN, TINY + ["--data_dir", data_dir, "--save_dir", tmp_path / "old"],
               capsys)[0] == 0
    last = run_folder(tmp_path / "old") / "last_model.tar"
    state = torch.load(last, weights_only=True)
    state.update(format=2)
    state["rng"]["numpy"] = np.random.get_state()
    torch.save(state, last)
    with pytest.raises(Exception):  # not loadable by the plain safe loader: the real test
        torch.load(last, weights_only=True)
    code, out, err = run(TRAIN, options + ["--save_dir", tmp_path / "old", "--resume"], capsys)
    assert code == 0, err
    assert "Resuming" in out and "after epoch 1" in out
    a = torch.load(straight_run / "last_model.tar", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["epoch"] == b["epoch"] == 3 and "numpy" not in b["rng"]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_a_trusted_file_with_other_objects_converts_deliberately(tmp_path, capsys):
    """A feature network saved beside numpy scalars and an argparse Namespace (as research
    code often does) is refused, then converted on purpose, then loads."""
    import argparse

    import convert_checkpoint
    from backbones import Conv4
    from cli.errors import UserError
    from storage import checkpoints
    torch.manual_seed(0)
    source = Conv4()
    saved = {"epoch": np.int64(7), "best": np.float64(0.5),
             "args": argparse.Namespace(lr=0.01, milestones=[51, 550]),
             "state": {k: v.numpy() for k, v in source.state_dict().items()}}
    torch.save(saved, tmp_path / "foreign.tar")
    with pytest.raises(UserError, match="is not a plain checkpoint.*convert_checkpoint.py"):
        checkpoints.load_feature_net(Conv4(), tmp_path / "foreign.tar")
    assert convert_checkpoint.main([str(tmp_path / "foreign.tar"),
                                    str(tmp_path / "plain.tar")]) == 0
    target = Conv4()
    assert checkpoints.load_feature_net(target, tmp_path / "plain.tar") == 7
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name
    plain = torch.load(tmp_path / "plain.tar", weights_only=True)
    assert plain["args"] == {"lr": 0.01, "milestones": [51, 550]} and plain["best"] == 0.5
    # The original is never replaced.
    assert convert_checkpoint.main([str(tmp_path / "foreign.tar"),
                                    str(tmp_path / "plain.tar")]) == 1
    assert "exists" in capsys.readouterr().err


def test_a_mismatch_names_counts_and_the_first_keys():
    from backbones import Conv4
    from cli.errors import UserError
    from storage import checkpoints
    state = {k: v for k, v in Conv4().state_dict().items() if not k.startswith("blocks.3")}
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError) as caught:
        checkpoints.load_state(Conv4(), state, "it does not fit")
    message = str(caught.value)
    expected = [k for k in Conv4().state_dict() if k.startswith("blocks.3")]
    assert message.startswith(f"it does not fit: {len(expected)} keys missing: "
                              f"{', '.join(expected[:3])}, ... ({len(expected) - 3} more); "
                              "1 key unexpected: extra.weight")
    assert len(message) < 250


# --- divergence -------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["maml", "hyper_maml"])
def test_a_diverging_run_stops_and_keeps_the_last_finite_checkpoint(method, data_dir, tmp_path,
                                                                    capsys):
    """--lr 1e30: the first update's weights are finite but huge, the second's loss is NaN.
    With one update per epoch and validation every second epoch, epoch 0 is saved and the
    run stops in epoch 1 without saving it; the model of epoch 0 is refused by test.py
    (non-finite logits) instead of scoring chance."""
    options = TINY[:2] + ["--method", method] + TINY[4:] + [
        "--n_episode", "2", "--stop_epoch", "5", "--eval_freq", "2", "--lr", "1e30",
        "--data_dir", data_dir, "--save_dir", tmp_path]
    code, out, err = run(TRAIN, options, capsys)
    assert_one_line_error(code, err, r"training diverged at epoch 1, meta-update 0: the "
                                     r"training loss is nan .*--lr 1e\+30.*last_model.tar "
                                     r"\(epoch 0\) .* kept; training stopped")
    folder = run_folder(tmp_path, method)
    assert "epoch 0:" in out and "epoch 1:" not in out
    assert sorted(n for n in os.listdir(folder) if n.endswith(".tar")) == ["0.tar",
                                                                           "last_model.tar"]
    last = torch.load(folder / "last_model.tar", weights_only=True)
    assert last["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in last["model"].values())
    assert [m["epoch"] for m in strict_json_lines(folder / "metrics.jsonl")] == [0]

    code, _, err = run(TEST, options + ["--save_iter", "0", "--n_episode", "5", "--repeat",
                                        "1", "--record_dir", tmp_path / "rec"], capsys)
    assert_one_line_error(code, err, "logits are not finite in 5 of 5 episodes")
    assert not (tmp_path / "rec" / "results.jsonl").exists()


def test_a_non_finite_validation_stops_before_saving(data_dir, tmp_path, capsys):
    options = TINY + ["--n_episode", "2", "--lr", "1e30", "--data_dir", data_dir,
                      "--save_dir", tmp_path]
    code, _, err = run(TRAIN, options, capsys)
    assert_one_line_error(code, err, "training diverged in the validation after epoch 0: the "
                                     "model's logits are not finite .*no checkpoint was saved")
    assert not run_folder(tmp_path).exists()  # nothing saved, so nothing left to resume


def test_json_records_stay_strict():
    from storage import atomic
    line = atomic.json_line({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2.5}})
    assert json.loads(line, parse_constant=lambda t: pytest.fail(t)) == {
        "a": None, "b": [1.0, None], "c": {"d": 2.5}}


# --- one run per folder -------------------------------------------------------------------------
def test_a_second_run_into_a_busy_folder_stops_and_changes_nothing(data_dir, tmp_path):
    """While a run trains, a second launch (fresh or --resume) into its folder stops at once
    naming the holder; after the first is killed (-9), --resume takes the folder over."""
    command = train_command(data_dir, tmp_path, "maml")
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in first.stdout:
            if line.startswith("epoch 1:"):
                break
        folder = run_folder(tmp_path)
        for extra in ([], ["--resume"]):
            second = subprocess.run(command + extra, capture_output=True, text=True,
                                    cwd=REPO_ROOT, timeout=120)
            assert second.returncode == 1, second.stderr
            lines = second.stderr.strip().splitlines()
            holder = f"error: {folder} is in use by another run (process {first.pid} "
            assert len(lines) == 1 and lines[0].startswith(holder), lines
            assert first.poll() is None  # the first run went on
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    metrics = [m["epoch"] for m in strict_json_lines(folder / "metrics.jsonl")]
    assert metrics == sorted(set(metrics))  # every epoch once, in order
    code, out = run_until(command + ["--resume"], metrics[-1] + 1, signal.SIGKILL)
    assert "Resuming" in out, out


def test_two_launches_at_once_leave_one_run(data_dir, tmp_path):
    """The same command started twice at the same moment: one trains, the other stops."""
    command = [sys.executable, str(REPO_ROOT / "train.py"), *TINY, "--data_dir", str(data_dir),
               "--save_dir", str(tmp_path)]
    launched = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, cwd=REPO_ROOT) for _ in range(2)]
    finished = [(p.wait(timeout=300), p.stderr.read()) for p in launched]
    codes = sorted(code for code, _ in finished)
    # The loser either met the lock, or (starting after the winner had finished) the run.
    assert codes == [0, 1], finished
    loser = next(err for code, err in finished if code == 1)
    assert "is in use by another run" in loser or "already holds a run" in loser, loser
    metrics = [m["epoch"] for m in strict_json_lines(run_folder(tmp_path) / "metrics.jsonl")]
    assert metrics == [0, 1]


def test_runs_started_together_on_unprepared_data_prepare_it_once(tmp_path):
    """Three train.py started at the same moment on an empty data root (offline, from
    ../shared/data): one prepares each dataset while the others wait for it, then all three
    train on it; nothing is left half-written."""
    from conftest import SHARED_DATA
    root = tmp_path / "data"
    command = [sys.executable, str(REPO_ROOT / "train.py"), *TINY, "--data_dir", str(root),
               "--data_source", str(SHARED_DATA)]
    launched = [subprocess.Popen(command + ["--save_dir", str(tmp_path / f"save{i}")],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=REPO_ROOT) for i in range(3)]
    finished = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in launched]
    assert [code for code, _, _ in finished] == [0, 0, 0], [err for _, _, err in finished]
    outs = "".join(out for _, out, _ in finished)
    for name in ("omniglot", "emnist"):
        assert outs.count(f"{name}: done in") == 1, outs
    from data.prepare import is_prepared
    assert is_prepared(root, "omniglot") and is_prepared(root, "emnist")
    assert not list(root.glob("*/.prepare-tmp"))


def test_results_run_holds_its_folder(tmp_path, monkeypatch):
    from cli.errors import UserError
    from results import run as runner
    monkeypatch.setattr(runner, "RUNS", tmp_path / "runs")
    name = "maml_cross_char_1shot_128"
    holder = storage.run_folder.RunLock(runner.run_folder(name))
    holder.acquire()
    try:
        with pytest.raises(UserError, match=f"is in use by another run \\(process {os.getpid()} "):
            runner.main([name])
    finally:
        holder.release()
    assert not (tmp_path / "runs").exists()  # nothing was recorded; the lock's folders went


def children_of(pid: int) -> set[int]:
    """The processes ``pid`` started that are still its children (Linux's /proc)."""
    found = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found.update(int(c) for c in f.read().split())
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads Linux's /proc")
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_run_killed_while_its_workers_decode_leaves_no_lock_and_no_orphan(signum, tmp_path):
    """A process holding a run folder's lock decodes CUB-100's real photographs with worker
    processes (as train.py does when it builds the store) and is killed mid-decode: its
    workers end with it, and the folder is free at once (a worker forked with the lock's
    descriptor would otherwise keep it locked for as long as it lived)."""
    from conftest import SHARED_DATA
    photos = sorted((SHARED_DATA / "cub100" / "images").rglob("*.jpg"))
    if len(photos) <= 2000 or (os.cpu_count() or 1) < 2:
        pytest.skip("needs CUB-100's photographs and two cores, for the decoding workers")
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys; sys.path.insert(0, {str(REPO_ROOT)!r})
from pathlib import Path
from storage.run_folder import RunLock
from data.store import ImageForm, decode_all
RunLock(Path({str(folder)!r})).acquire()
paths = sorted((Path({str(SHARED_DATA)!r}) / "cub100" / "images").rglob("*.jpg"))
decode_all(paths * 4, ImageForm(96, True))
"""], cwd=REPO_ROOT)
    try:
        workers: set[int] = set()
        for _ in range(600):  # until both workers run
            workers = children_of(holder.pid)
            if len(workers) >= 2:
                break
            assert holder.poll() is None, "the decoding process ended early"
            time.sleep(0.05)
        assert len(workers) >= 2, workers
        time.sleep(0.5)  # well into the decoding
        holder.send_signal(signum)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    for _ in range(100):
        if not any(map(alive, workers)):
            break
        time.sleep(0.05)
    orphans = [w for w in workers if alive(w)]
    for w in orphans:
        os.kill(w, signal.SIGKILL)
    assert not orphans, f"decoding workers {orphans} outlived their killed parent"
    lock = storage.run_folder.RunLock(folder)
    lock.acquire()  # refused with "in use by another run" if anyone still held it
    lock.release()


def test_a_forked_child_does_not_hold_its_parents_run_lock(tmp_path):
    """A child forked while the lock is held (any worker pool's) closes its copy of the
    lock's descriptor: when the parent dies (here: closes its descriptor without releasing,
    as the operating system does for a killed process), the folder is free although the child
    still lives, and the child cannot remove the parent's lock file."""
    lock = storage.run_folder.RunLock(tmp_path / "run")
    lock.acquire()
    started, end = os.pipe(), os.pipe()  # child -> parent: running; parent -> child: end
    child = os.fork()
    if child == 0:  # the child: say it runs, wait to be told to end, say if it kept the lock
        kept = True
        try:
            os.write(started[1], b"x")
            os.read(end[0], 1)
            lock.release()  # must do nothing here: the lock is the parent's
            kept = lock.fd is not None or bool(storage.run_folder._HELD)
        finally:
            os._exit(3 if kept else 0)
    try:
        os.read(started[0], 1)  # the child's fork handlers have run
        os.close(lock.fd)  # the parent dies
        again = storage.run_folder.RunLock(tmp_path / "run")
        again.acquire()  # refused while the child holds the flock on an inherited descriptor
        again.release()
    finally:
        os.write(end[1], b"x")
        _, status = os.waitpid(child, 0)
        for fd in (*started, *end):
            os.close(fd)
        lock.fd = None  # closed above; not to be closed again by a later fork
        storage.run_folder._HELD.discard(lock)
    assert os.waitstatus_to_exitcode(status) == 0, "the child kept its parent's lock"


# --- failed writes ------------------------------------------------------------------------------
def assert_resumes_exactly(straight, save, data_dir, capsys):
    folder = run_folder(save)
    assert not [n for n in os.listdir(folder) if n.startswith(".")]  # no temporary, no lock
    code, _, err = run(TRAIN, TINY + ["--stop_epoch", "2", "--data_dir", data_dir,
                                      "--save_dir", save, "--resume"], capsys)
    assert code == 0, err
    a = torch.load(straight / "last_model.tar", weights_only=True)
    b = torch.load(folder / "last_model.tar", weights_only=True)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    strip = lambda lines: [{k: v for k, v in m.items() if k != "seconds"} for m in lines]  # noqa
    assert strip(strict_json_lines(folder / "metrics.jsonl")) == \
        strip(strict_json_lines(straight / "metrics.jsonl"))


# The write in epoch 1 of each: metrics.jsonl is written when the run starts, then once per
# epoch (a line cut back); last_model.tar once per epoch, last (the epoch's other files done).
@pytest.mark.parametrize("failing,nth", [("metrics.jsonl", 3), ("last_model.tar", 2)])
def test_a_full_disk_is_one_line_and_resumes_exactly(failing, nth, data_dir, straight_run,
                                                     tmp_path, monkeypatch, capsys):
    """The disk fills at the ``nth`` write of ``failing`` (injected at its fsync, where a
    file system reports that the data found no room): one line, no partial file, and
    --resume then gives the very run that never stopped."""
    real_fsync, writes = os.fsync, []

    def fsync(fd):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name == failing or name.startswith(f".{failing}."):
            writes.append(name)
            if len(writes) == nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code, _, err = run(TRAIN, TINY + ["--stop_epoch", "2", "--data_dir", data_dir,
                                      "--save_dir", tmp_path], capsys)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert_one_line_error(code, err, f"could not write .*{failing}: No space left on device; "
                                     r"training stopped in epoch 1; .*last_model.tar holds "
                                     r"epoch 0: --resume continues")
    assert_resumes_exactly(straight_run, tmp_path, data_dir, capsys)


@pytest.mark.parametrize("failing", ["results.txt", "results.jsonl"])
def test_a_failed_record_write_leaves_both_records_as_they_were(failing, data_dir, tiny_run,
                                                                 tmp_path, monkeypatch, capsys):
    """test.py's result is one line of results.txt and one record of results.jsonl: the disk
    filling on either leaves both as they were (none created in an empty folder), so the two
    never disagree."""
    real_fsync = os.fsync

    def fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == failing:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    argv = TINY + ["--data_dir", data_dir, "--save_dir", tiny_run, "--n_episode", "2",
                   "--repeat", "1"]
    kept, fresh = tmp_path / "kept", tmp_path / "fresh"
    assert run(TEST, argv + ["--record_dir", kept], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in kept.iterdir()}
    monkeypatch.setattr(os, "fsync", fsync)
    for records in (kept, fresh):
        code, _, err = run(TEST, argv + ["--record_dir", records], capsys)
        assert_one_line_error(code, err, f"could not write .*{failing}: No space left")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == before
    assert not [p for p in fresh.iterdir() if p.name.startswith("results")]


def test_a_run_folder_removed_mid_run_is_one_line(data_dir, tmp_path, monkeypatch, capsys):
    from storage import records
    real_append, appends = records.append_text, []

    def append_text(path, text):
        appends.append(path)
        if len(appends) == 2:  # the second epoch's metrics line
            shutil.rmtree(path.parent)
        return real_append(path, text)

    monkeypatch.setattr(records, "append_text", append_text)
    code, _, err = run(TRAIN, TINY + ["--data_dir", data_dir, "--save_dir", tmp_path], capsys)
    assert_one_line_error(code, err, "could not write .*metrics.jsonl: No such file or "
                                     "directory; training stopped in epoch 1")
    assert not run_folder(tmp_path).exists()  # not made anew with half the records


def on_a_private_tmpfs(script: str, written: Path) -> subprocess.CompletedProcess:
    """Run ``script`` (which mounts its tmpfs) as root of a private mount namespace; skipped
    where there is none, which ``written`` (a file the script writes) not appearing shows."""
    try:
        done = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script],
                              capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        pytest.skip("no unshare here")
    if not written.exists():
        pytest.skip(f"no private tmpfs here: {done.stderr.strip()[:200]}")
    return done


def test_a_real_full_disk(data_dir, straight_run, tmp_path, capsys):
    """A 5 MiB tmpfs (in a private mount namespace): epoch 0's three checkpoints (1.4 MB
    each) fit, epoch 1's new best_model.tar beside them does not. torch.save reports that as
    a RuntimeError raised while handling the OSError, which must still be one line."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f"mount -t tmpfs -o size=5m tmpfs {disk} && cd {REPO_ROOT} && "
              f"{sys.executable} train.py {' '.join(map(str, TINY))} --stop_epoch 2 "
              f"--data_dir {data_dir} --save_dir {disk}/save; echo $? > {tmp_path}/code; "
              f"cp -a {disk}/save {tmp_path}/save")
    done = on_a_private_tmpfs(script, tmp_path / "code")
    assert (tmp_path / "code").read_text().strip() == "1", done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left on device; training stopped in epoch 1" in \
        lines[0], done.stderr
    assert_resumes_exactly(straight_run, tmp_path / "save", data_dir, capsys)


def test_a_start_refused_on_a_full_disk_leaves_no_folder_and_no_lock(data_dir, tmp_path):
    """A full 1 MiB tmpfs: the lock's holder line finds no room; then, with room for the
    records but not for a checkpoint, epoch 0's best_model.tar. Neither start leaves a run
    folder, a lock or records behind."""
    disk, code = tmp_path / "disk", tmp_path / "code"
    disk.mkdir()
    train = (f"{sys.executable} train.py {' '.join(map(str, TINY))} --data_dir {data_dir} "
             f"--save_dir {disk}/save")
    script = (f"mount -t tmpfs -o size=1m tmpfs {disk} && cd {REPO_ROOT} && mkdir {disk}/save "
              f"&& head -c 2000000 /dev/zero > {disk}/filler 2>/dev/null; {train}; "
              f"echo $? > {code}; "
              f"find {disk}/save > {tmp_path}/left; rm {disk}/filler; "
              f"head -c 900000 /dev/zero > {disk}/filler; {train}; echo $? >> {code}; "
              f"find {disk}/save >> {tmp_path}/left")
    done = on_a_private_tmpfs(script, code)
    assert code.read_text().split() == ["1", "1"], done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: cannot write to ") and \
        "No space left on device" in lines[0], done.stderr
    assert "best_model.tar: No space left on device; training stopped in epoch 0; no " \
        "checkpoint was saved yet" in lines[1], done.stderr
    assert (tmp_path / "left").read_text().split() == [f"{disk}/save"] * 2


def test_a_run_that_saved_no_epoch_removes_only_what_it_wrote(data_dir, tmp_path,
                                                              monkeypatch, capsys):
    """A fresh start in a folder that holds other files (no run: no last_model.tar), failing
    at its first checkpoint: its args.json and metrics.jsonl go, the files it found stay."""
    folder = run_folder(tmp_path)
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("lr 0.01 diverged\n")
    (folder / "best_model.tar").write_bytes(b"kept by hand")
    real_fsync = os.fsync

    def fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".best_model.tar."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code, _, err = run(TRAIN, TINY + ["--data_dir", data_dir, "--save_dir", tmp_path], capsys)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert_one_line_error(code, err, "best_model.tar: No space left on device; training "
                                     "stopped in epoch 0; no checkpoint was saved yet")
    assert sorted(p.name for p in folder.iterdir()) == ["best_model.tar", "notes.txt"]
    assert (folder / "best_model.tar").read_bytes() == b"kept by hand"


# --- a resumed run records what it used ---------------------------------------------------------
def test_a_resumed_run_trains_at_the_rate_its_options_give(data_dir, tmp_path, capsys):
    """--resume with another --lr and other milestones: the rates of the resumed epochs are
    those a fresh run with these options has at those epochs (the saved optimiser and scheduler
    state brought the old ones back), and args.json, the checkpoint and metrics.jsonl say so."""
    first = TINY + ["--data_dir", data_dir, "--lr_scheduler", "multisteplr", "--milestones", "1"]
    assert run(TRAIN, first + ["--save_dir", tmp_path / "a"], capsys)[0] == 0
    changed = ["--stop_epoch", "2", "--lr", "3e-4", "--milestones", "3"]
    code, out, err = run(TRAIN, first + changed + ["--save_dir", tmp_path / "a", "--resume"],
                         capsys)
    assert code == 0, err
    assert "note: --resume with another schedule (lr 0.001 -> 0.0003, milestones [1] -> [3]" \
        in out, out
    assert run(TRAIN, first + changed + ["--save_dir", tmp_path / "fresh"], capsys)[0] == 0
    resumed, fresh = (strict_json_lines(run_folder(tmp_path / f) / "metrics.jsonl")
                      for f in ("a", "fresh"))
    assert [m["lr"] for m in resumed[2:]] == [m["lr"] for m in fresh[2:]]
    assert resumed[2]["lr"] == pytest.approx(3e-4) and resumed[3]["lr"] == pytest.approx(9e-5)
    folder = run_folder(tmp_path / "a")
    state = torch.load(folder / "last_model.tar", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(9e-5)
    assert state["config"]["lr"] == json.loads((folder / "args.json").read_text())["lr"] == 3e-4
    assert list(state["scheduler"]["milestones"]) == [3]


def test_a_resume_cannot_change_the_optimiser(data_dir, tmp_path, capsys):
    """--resume --optim sgd of an Adam run: one line, before anything is rewritten."""
    assert run(TRAIN, TINY + ["--data_dir", data_dir, "--save_dir", tmp_path], capsys)[0] == 0
    folder = run_folder(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code, _, err = run(TRAIN, TINY + ["--data_dir", data_dir, "--save_dir", tmp_path,
                                      "--stop_epoch", "2", "--optim", "sgd", "--resume"], capsys)
    assert_one_line_error(code, err, "--optim sgd: the run in .* was trained with adam")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


# --- smaller ones ---------------------------------------------------------------------------------
def test_a_suffix_or_start_epoch_that_cannot_be_is_one_line(data_dir, tmp_path, capsys):
    """--checkpoint_suffix with a path in it would write the run outside checkpoints/;
    --start_epoch past the run's last epoch would train nothing and exit 0."""
    base = TINY + ["--data_dir", data_dir, "--save_dir", tmp_path / "save"]
    code, _, err = run(TRAIN, base + ["--checkpoint_suffix", "../../outside"], capsys)
    assert_one_line_error(code, err, "--checkpoint_suffix '../../outside': give a plain name")
    code, _, err = run(TRAIN, base + ["--start_epoch", "1000000000"], capsys)
    assert_one_line_error(code, err, "--start_epoch 1000000000 is not before the run's last "
                                     r"epoch \(1: --stop_epoch 1 x n_task 2\)")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_resume_reads_its_records_before_rewriting_anything(data_dir, tiny_run, tmp_path,
                                                               capsys):
    """--resume over a metrics.jsonl with a damaged line: one line naming it, args.json and
    the records as they were; the temporary files killed writes left are removed when the
    folder is next locked."""
    save = tmp_path / "save"
    shutil.copytree(tiny_run, save)
    folder = run_folder(save)
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    (folder / "metrics.jsonl").write_text(lines[0] + "\n{\"epoch\": \n" + lines[1] + "\n")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    (folder / ".last_model.tar.k3x9_q2z").write_bytes(b"half a checkpoint")
    code, out, err = run(TRAIN, TINY + ["--data_dir", data_dir, "--save_dir", save, "--resume",
                                        "--stop_epoch", "2", "--lr", "5e-4"], capsys)
    assert_one_line_error(code, err, r"metrics.jsonl, line 2, is not an epoch's record")
    assert "removed 1 temporary file(s) that interrupted writes left" in out, out
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_weights_of_another_kind_of_number_are_refused(dtype, data_dir, tiny_run, tmp_path,
                                                        capsys):
    """A checkpoint whose float weight is stored as integers, booleans or complex numbers
    (load_state_dict would cast it: garbage weights, confident answers): one line."""
    save = tmp_path / "save"
    shutil.copytree(tiny_run, save)
    path = run_folder(save) / "best_model.tar"
    state = torch.load(path, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = (state["model"][name] * 100).to(dtype)
    torch.save(state, path)
    code, _, err = run(TEST, TINY + ["--data_dir", data_dir, "--save_dir", save, "--n_episode",
                                     "2", "--repeat", "1", "--record_dir", tmp_path / "r"],
                       capsys)
    assert_one_line_error(code, err, f"1 key of another kind of number: {re.escape(name)} "
                                     f"\\(saved {str(dtype).removeprefix('torch.')}, model float32")
