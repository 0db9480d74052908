"""Training curves drawn from real runs' records (the shipped 128-epoch HyperMAML and MAML
runs): chance, the schedule's phase and learning-rate changes where the run's options put
them, validation bands, legends named after the experiments; and the metrics as TensorBoard
scalars, live during training and exported, off without the tensorboard package."""
from __future__ import annotations

import builtins
import json

import pytest

from cli.errors import UserError
from conftest import REPO_ROOT
from helpers import run_folder
from reports import plots
from storage import records

RUNS = REPO_ROOT / "results" / "runs"
HYPER, MAML = "hyper_maml_cross_char_1shot_128", "maml_cross_char_1shot_128"


def test_schedule_changes_fall_where_the_options_put_them():
    path = plots.metrics_file(RUNS / HYPER)
    args = json.loads((path.parent / "args.json").read_text())
    found = plots.curve(RUNS / HYPER)
    warmup, switch = args["hm_maml_warmup_epochs"], args["hm_maml_warmup_switch_epochs"]
    assert [(e, after) for e, _, after in plots.changes(found.records, "phase")] == \
        [(warmup, "switch"), (warmup + switch, "hypernet")]
    [(epoch, before, after)] = plots.changes(found.records, "lr")
    assert before == args["lr"] and after == pytest.approx(args["lr"] * 0.3)
    assert epoch in (args["milestones"][0] - 1, args["milestones"][0])
    assert plots.changes(plots.curve(RUNS / MAML).records, "phase") == []


def test_figure_of_two_runs_has_chance_bands_marks_and_experiment_names():
    plt = plots.require_matplotlib()
    fig = plots.curves_figure([plots.curve(RUNS / HYPER), plots.curve(RUNS / MAML)])
    try:
        loss_ax, acc_ax = fig.axes
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert labels[:2] == [HYPER, MAML]  # named after the experiments, not folders
        assert "chance, 5-way (20%)" in labels
        horizontal = [line for line in acc_ax.get_lines()
                      if list(line.get_ydata()) == [20.0, 20.0]]
        assert len(horizontal) == 1
        vertical = sorted({line.get_xdata()[0] for line in acc_ax.get_lines()
                           if len(set(line.get_xdata())) == 1 and len(line.get_xdata()) == 2
                           and line.get_xdata()[0] > 1})
        assert vertical == [10, 50, 99]  # only HyperMAML changes phase and lr
        assert len(acc_ax.collections) == 2  # one validation band per run
        assert acc_ax.get_ylim() == (0, 100)
    finally:
        plt.close(fig)


def test_labels_of_runs_outside_results(tiny_run, tmp_path):
    folder = run_folder(tiny_run)
    assert plots.curve(folder).label == "maml 1-shot, seed 0"
    assert plots.curve(folder, "mine").label == "mine"
    assert plots.main(["curves", str(folder), str(RUNS / MAML), "--labels", "a", "b", "--out",
                       str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 10_000
    with pytest.raises(SystemExit):
        plots.main(["curves", str(folder), "--labels", "a", "b"])
    with pytest.raises(UserError, match="no metrics.jsonl"):
        plots.curve(tmp_path)


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def test_training_mirrors_its_metrics_to_tensorboard(tiny_run):
    pytest.importorskip("tensorboard")
    folder = run_folder(tiny_run)
    metrics = plots.read_metrics(folder)
    board = tiny_run / "tensorboard" / folder.relative_to(tiny_run / "checkpoints")
    assert not list(folder.glob("*tensorboard*"))  # the run folder holds the run's files only
    scalars = read_scalars(board)
    assert [step for step, _ in scalars["val_acc"]] == [m["epoch"] for m in metrics]
    assert [v for _, v in scalars["val_acc"]] == pytest.approx([m["val_acc"] for m in metrics])
    assert [v for _, v in scalars["train_loss"]] == pytest.approx(
        [m["train_loss"] for m in metrics])


def test_export_writes_a_shipped_run_as_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    assert plots.main(["tensorboard", str(RUNS / HYPER), "--logdir", str(tmp_path)]) == 0
    scalars = read_scalars(tmp_path / HYPER)
    metrics = plots.read_metrics(RUNS / HYPER)
    assert len(scalars["val_acc"]) == len(metrics) == 128
    assert scalars["lr"][-1] == (127, pytest.approx(metrics[-1]["lr"]))
    # Exported again: the second export hides the first's events (no doubled curve).
    assert plots.main(["tensorboard", str(RUNS / HYPER), "--logdir", str(tmp_path)]) == 0
    assert len(read_scalars(tmp_path / HYPER)["val_acc"]) == 128


def test_without_tensorboard_the_mirror_is_off_and_the_export_says_why(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith(("torch.utils.tensorboard", "tensorboard")):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    log = records.TensorBoardLog(tmp_path / "board", None)
    log.append({"epoch": 0, "val_acc": 50.0})  # nothing to write it with: nothing written
    log.close()
    assert not log.on and not (tmp_path / "board").exists()
    with pytest.raises(UserError, match="pip install tensorboard"):
        plots.tensorboard_export([RUNS / MAML], tmp_path / "out")
