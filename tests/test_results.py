"""The results pipeline on a tiny experiment: results.run trains, tests and records each
segment, continues a finished or interrupted run with --resume, and results.report builds its
row from the records alone, repeating it in a table that compares another run with it."""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.errors import UserError
from results import experiments, report
from results import run as runner


@pytest.fixture
def tiny(data_dir, tmp_path, monkeypatch) -> experiments.Experiment:
    """A two-epoch experiment "tiny", its runs, models and figures under tmp_path."""
    tiny = experiments.Experiment(
        f"--dataset cross_char --model Conv4 --method maml --n_shot 1 --n_task 2 "
        f"--stop_epoch 1 --data_dir {data_dir}", 19200, "equal budget, cross_char")
    monkeypatch.setitem(experiments.EXPERIMENTS, "tiny", tiny)
    monkeypatch.setattr(runner, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(runner, "MODELS", tmp_path / "models")
    monkeypatch.setattr(report, "FIGURES", tmp_path / "figures")
    return tiny


def test_run_resume_and_report_from_records(tiny, tmp_path, monkeypatch):
    short = ["--", "--n_episode", "4", "--repeat", "2"]
    assert runner.main(["tiny", *short]) == 0
    # The finished run's model file holds the best checkpoint's weights and configuration.
    from storage import checkpoints
    best = checkpoints.load_checkpoint(runner.checkpoint_folder("tiny") / "best_model.tar", "maml")
    shipped = checkpoints.load_checkpoint(tmp_path / "models" / "tiny.safetensors", "maml")
    assert shipped["config"] == best["config"] and shipped["epoch"] == best["epoch"]
    assert all(torch.equal(shipped["model"][k], v) for k, v in best["model"].items())
    assert runner.main(["tiny", *short]) == 0  # a finished run: resumed, nothing to train
    segments = [json.loads(line) for line in
                (tmp_path / "runs" / "tiny" / "segments.jsonl").read_text().splitlines()]
    starts = [s for s in segments if "started" in s]
    assert [s["kind"] for s in starts] == ["train", "test", "train", "test"]
    assert "resumed_after_epoch" not in starts[0] and starts[2]["resumed_after_epoch"] == 1
    assert all(s["threads"] == 1 and s["commit"] for s in starts)
    assert [s["exit_code"] for s in segments if "ended" in s] == [0, 0, 0, 0]

    text = report.build()
    row = next(line for line in text.splitlines() if line.startswith("| `tiny`"))
    test = json.loads((tmp_path / "runs" / "tiny" / "record" / "results.jsonl")
                      .read_text().splitlines()[-1])
    assert f"**{test['acc_mean']:.2f} +-" in row and "| 2 / 2 / 19200 |" in row
    assert "T " in row  # calibration after temperature scaling
    assert (tmp_path / "figures" / "tiny_curves.png").exists()
    diagram = next(line for line in text.splitlines() if line.startswith("  reliability: "))
    assert (report.REPO / diagram.split("(")[1].rstrip(")")).resolve() == \
        (tmp_path / "runs" / "tiny" / "record" / Path(test["reliability_diagram"]).name)
    assert Path(test["reliability_diagram"]).exists()
    assert "python -m results.run tiny" in text
    assert "  model: [" in text and "tiny.safetensors" in text
    # The models page: the file with its test numbers and checksum.
    import hashlib
    page = report.models_page([report.summarise("tiny")])
    model = tmp_path / "models" / "tiny.safetensors"
    line = next(line for line in page.splitlines() if "tiny.safetensors" in line)
    assert hashlib.sha256(model.read_bytes()).hexdigest() in line
    assert f"**{test['acc_mean']:.2f} +-" in line and "| maml | cross_char | 1 |" in line
    # A tested run without its model file (tested before results.run wrote them) says so, in
    # its details and on the models page, instead of passing over it.
    model.rename(tmp_path / "tiny.safetensors")
    built = report.build()
    assert "  model: not shipped: tested before " in built
    assert "`python -m results.run tiny` trains it again" in built
    page = report.models_page([report.summarise("tiny")])
    assert "tiny.safetensors" not in page
    assert "without a model file here (1): `tiny`. Each was tested before " in page
    (tmp_path / "tiny.safetensors").rename(model)

    # A run of another table that names this one for comparison: its table shows both rows,
    # the compared one first, and says it is repeated.
    monkeypatch.setitem(experiments.EXPERIMENTS, "tiny_again",
                        experiments.Experiment(tiny.train, 19200, "side by side", ("tiny",)))
    shutil.copytree(tmp_path / "runs" / "tiny", tmp_path / "runs" / "tiny_again")
    side = report.build().split("## Side by side")[1].split("## ")[0]
    rows = [line.split("|")[1].strip() for line in side.splitlines() if line.startswith("| `")]
    assert rows == ["`tiny`", "`tiny_again`"]
    assert "The first row repeats a run of another table" in side


def test_a_run_tests_again_from_its_model_file_and_is_reported_by_its_latest_test(tiny,
                                                                                  tmp_path):
    """--test_only, where the checkpoints stayed on another machine (the run folder holds the
    records, the repository the model file): test.py tests the model file, the new record is
    appended and reported (one repeat: its interval over its episodes, not a spread over
    repeats it does not have, and a model command that repeats one); nothing is trained or set
    aside, and the model file is kept."""
    assert runner.main(["tiny", "--", "--n_episode", "4", "--repeat", "2"]) == 0
    for checkpoint in runner.checkpoint_folder("tiny").glob("*.tar"):
        checkpoint.unlink()
    model = tmp_path / "models" / "tiny.safetensors"
    shipped = model.read_bytes()
    assert runner.main(["tiny", "--test_only", "--", "--n_episode", "6", "--repeat", "1"]) == 0
    records = (runner.record_folder("tiny") / "results.jsonl").read_text().splitlines()
    assert [len(json.loads(r)["repeats"]) for r in records] == [2, 1]
    segments = [json.loads(line) for line in
                (tmp_path / "runs" / "tiny" / "segments.jsonl").read_text().splitlines()]
    last = [s for s in segments if "started" in s][-1]
    assert last["kind"] == "test" and last["argv"][last["argv"].index("--checkpoint") + 1] \
        == str(model)
    assert not (tmp_path / "runs" / "tiny" / "earlier").exists() and model.read_bytes() == shipped
    only = json.loads(records[-1])["repeats"][0]
    built = report.build()
    row = next(line for line in built.splitlines() if line.startswith("| `tiny`"))
    # The interval over its 6 episodes: Student-t, sample std (n - 1).
    accuracies = [100 * c / only["episode_queries"] for c in only["episode_correct"]]
    half = 2.5706 * np.std(accuracies, ddof=1) / np.sqrt(6)  # t(0.975, 5 d.f.) = 2.5706
    assert f"**{np.mean(accuracies):.2f} +- {half:.2f}** (1 x 6 episodes)" in row
    assert "tiny.safetensors --repeat 1`" in built  # the model's command repeats that test
    model.unlink()
    with pytest.raises(UserError, match="nothing to test"):
        runner.main(["tiny", "--test_only"])


def test_seeds_run_one_after_the_other_and_are_reported_over_seeds(tiny, tmp_path):
    """--seeds 0 1: the experiment's own seed runs as "tiny", seed 1 as "tiny_seed1", each
    with its folder, model file and records; a second call resumes both (nothing trained);
    RESULTS.md lists tiny_seed1 in tiny's table and gives the mean over the two seeds with
    its Student-t interval (12.706 x sd / sqrt(2))."""
    short = ["--", "--n_episode", "4", "--repeat", "1"]
    assert runner.main(["tiny", "--seeds", "0", "1", *short]) == 0
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == \
        ["tiny.safetensors", "tiny_seed1.safetensors"]
    args = json.loads((runner.checkpoint_folder("tiny_seed1") / "args.json").read_text())
    assert args["seed"] == 1
    assert runner.main(["tiny", "--seeds", "0", "1", *short]) == 0
    for run in ("tiny", "tiny_seed1"):
        segments = [json.loads(line) for line in
                    (tmp_path / "runs" / run / "segments.jsonl").read_text().splitlines()]
        trains = [s for s in segments if s["kind"] == "train" and "started" in s]
        assert len(trains) == 2 and trains[1]["resumed_after_epoch"] == 1
    built = report.build()
    table = built.split("## Over training seeds")[1]
    row = next(line for line in table.splitlines() if line.startswith("| `tiny`"))
    means = []
    for run in ("tiny", "tiny_seed1"):
        test = json.loads((runner.record_folder(run) / "results.jsonl").read_text()
                          .splitlines()[-1])
        means.append(np.mean([100 * c / test["repeats"][0]["episode_queries"]
                              for c in test["repeats"][0]["episode_correct"]]))
    half = 12.7062 * abs(means[0] - means[1]) / 2
    assert "| 0, 1 |" in row and f"**{np.mean(means):.2f} +- {half:.2f}**" in row
    assert "`tiny_seed1`" in built.split("## Over training seeds")[0]
    with pytest.raises(SystemExit):  # a mistyped name: argparse's one line, with a hint
        runner.main(["tiny_sed1"])


def test_run_whose_checkpoints_were_lost_restarts_and_keeps_its_records(tiny, tmp_path):
    """A tested run folder that arrived without its checkpoints (the records are committed,
    the checkpoints stayed on another machine): results.run moves the earlier records to
    earlier/1/, says so in segments.jsonl and trains from epoch 0; the report gives the
    earlier attempt's number under the new one."""
    short = ["--", "--n_episode", "4", "--repeat", "1"]
    assert runner.main(["tiny", *short]) == 0
    folder = runner.checkpoint_folder("tiny")
    first = (folder / "metrics.jsonl").read_text()
    tested = (runner.record_folder("tiny") / "results.jsonl").read_text()
    for checkpoint in folder.glob("*.tar"):
        checkpoint.unlink()
    assert runner.main(["tiny", "--skip_test", *short]) == 0
    earlier = tmp_path / "runs" / "tiny" / "earlier" / "1"
    assert (earlier / "metrics.jsonl").read_text() == first
    assert (earlier / "record" / "results.jsonl").read_text() == tested
    assert (earlier / "args.json").exists() and not runner.record_folder("tiny").exists()
    acc = json.loads(tested)["acc_mean"]
    built = report.build()
    assert "  earlier attempt 1: 2 epochs (CPU " in built
    # Each attempt is described by its own segments: the first trained and tested, the
    # restart only trained (its test skipped), in one segment.
    current = next(line for line in built.splitlines() if line.startswith("- `tiny`"))
    assert "1 segment(s)" in current, current
    earlier_line = next(line for line in built.splitlines() if "earlier attempt 1" in line)
    assert "1 segment(s)" in earlier_line and ", best val " in earlier_line, earlier_line
    assert f"tested **{acc:.2f} +- " in report.build()
    assert [json.loads(line)["epoch"] for line in
            (folder / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    segments = [json.loads(line) for line in
                (tmp_path / "runs" / "tiny" / "segments.jsonl").read_text().splitlines()]
    restart = [s for s in segments if s["kind"] == "restart"]
    assert len(restart) == 1 and "to epoch 1" in restart[0]["note"]
    assert "earlier/1/" in restart[0]["note"]
    second_train = [s for s in segments if s["kind"] == "train" and "started" in s][1]
    assert "--resume" not in second_train["argv"]


def test_a_stopped_run_stops_its_training_and_records_the_end(tiny, tmp_path):
    """SIGTERM to results.run (kill PID) ends the train.py it started, which would otherwise
    train on orphaned, and the segment's end is on record with train.py's status."""
    log = tmp_path / "runs" / "tiny" / "train.log"

    def stop_once_training():
        deadline = time.time() + 120
        while not log.exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # inside train.py's start-up or first epoch
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=stop_once_training, daemon=True).start()
    started = time.time()
    code = runner.main(["tiny", "--skip_test", "--", "--stop_epoch", "1000"])
    assert code == -signal.SIGTERM and time.time() - started < 100
    assert signal.getsignal(signal.SIGTERM) is before
    ended = json.loads((tmp_path / "runs" / "tiny" / "segments.jsonl")
                       .read_text().splitlines()[-1])
    assert ended["kind"] == "train" and ended["exit_code"] == -signal.SIGTERM


def test_git_keeps_every_record_a_run_leaves_and_no_checkpoint():
    """What results.run and results.report read is committed, the set-aside records of an
    earlier attempt included (they once fell under the ignored record/ folders, so a clean
    clone lost the earlier attempts' numbers); checkpoints never are."""
    import subprocess

    from conftest import REPO_ROOT
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    run = "results/runs/NAME"
    folder = f"{run}/checkpoints/cross_char/Conv4_maml_5way_1shot"
    kept = [f"{run}/segments.jsonl", f"{run}/record/results.jsonl", f"{folder}/metrics.jsonl",
            f"{folder}/args.json", f"{run}/earlier/1/metrics.jsonl",
            f"{run}/earlier/1/record/results.jsonl", f"{run}/earlier/1/record/r.png"]
    ignored = [f"{folder}/best_model.tar", f"{folder}/last_model.tar", f"{run}/train.log",
               f"{folder}/.run.lock"]

    def is_ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", "--no-index", path],
                              cwd=REPO_ROOT).returncode == 0
    assert [p for p in kept if is_ignored(p)] == []
    assert [p for p in ignored if not is_ignored(p)] == []
