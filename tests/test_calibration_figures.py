"""The reliability diagram shows each panel's own ECE, marks the bins too small to trust, lists
in each legend exactly what that panel draws and keeps the legends off the data; a fitted
temperature that ran away is reported with a note saying what it means."""
from __future__ import annotations

import json
import re

import pytest
import torch
from matplotlib.colors import to_rgba

from helpers import TEST, TINY, run, synthetic
from reports import calibration, plots
from reports.calibration import ReliabilityBins


def panels_of(fig):
    """(top, bottom, legend) axes of each column of a reliability figure."""
    columns = len(fig.axes) // 3  # plt.subplots orders the axes row by row
    rows = [fig.axes[r * columns:(r + 1) * columns] for r in range(3)]
    return list(zip(*rows))


def legend_texts(key_axes) -> list[str]:
    return [t.get_text() for t in key_axes.get_legend().get_texts()]


def drawn_styles(top) -> set[str]:
    """The legend entries the bars of ``top`` show, read from the patches themselves."""
    styles = set()
    for patch in top.patches:
        if patch.get_height() == 0:
            continue
        if patch.get_hatch():
            styles.add(plots.UNDER)
        elif patch.get_linestyle() == ":":
            styles.add(plots.FEW)
        elif patch.get_fill() and patch.get_facecolor()[:3] == to_rgba("red")[:3]:
            styles.add(plots.OVER)
        elif patch.get_fill() and patch.get_facecolor()[:3] == to_rgba("tab:blue")[:3]:
            styles.add(plots.ACCURACY)
    return styles


def hand_bins(counts, accuracy, confidence) -> ReliabilityBins:
    n = len(counts)
    return ReliabilityBins([i / n for i in range(n + 1)], counts, accuracy, confidence)


def test_each_panel_title_carries_its_own_ece():
    logits, labels = synthetic(5000, overconfidence=0.1)
    panels = {"uncalibrated": calibration.reliability_bins(logits, labels),
              "temperature T = 2": calibration.reliability_bins(logits / 2, labels)}
    fig = plots.reliability_figure(panels, "synthetic")
    try:
        titles = [top.get_title() for top, _, _ in panels_of(fig)]
    finally:
        plots.require_matplotlib().close(fig)
    eces = [calibration.calibration_report(logits, labels, t).ece for t in (1, 2)]
    assert titles == [f"uncalibrated, ECE {eces[0]:.3f}", f"temperature T = 2, ECE {eces[1]:.3f}"]
    assert f"{eces[0]:.3f}" != f"{eces[1]:.3f}"
    assert fig.get_suptitle() == "synthetic"


def test_each_legend_lists_exactly_what_its_panel_draws_outside_the_data():
    # Over-confident everywhere and every bin full; then both gaps and a bin of 3 predictions.
    n = 5
    over = hand_bins([100] * n, [0.05, 0.2, 0.4, 0.6, 0.8], [0.1, 0.3, 0.5, 0.7, 0.9])
    mixed = hand_bins([100, 3, 0, 100, 100], [0.2, 0.0, 0.0, 0.6, 0.9],
                      [0.1, 0.3, 0.0, 0.7, 0.9005])  # the last gap is too small to see
    fig = plots.reliability_figure({"over": over, "mixed": mixed}, "legends")
    try:
        fig.canvas.draw()
        columns = panels_of(fig)
        found = []
        for top, bottom, key in columns:
            found.append((legend_texts(key), drawn_styles(top)))
            legend = key.get_legend().get_window_extent()
            for data in (top, bottom):
                assert not legend.overlaps(data.get_window_extent())
    finally:
        plots.require_matplotlib().close(fig)
    assert found[0] == ([plots.ACCURACY, plots.OVER], {plots.ACCURACY, plots.OVER})
    assert found[1][0] == [plots.ACCURACY, plots.OVER, plots.UNDER, plots.FEW]
    assert set(found[1][0]) == found[1][1]
    for bins in (over, mixed):
        assert plots.legend_entries(plots.reliability_bars(bins)) == found[
            0 if bins is over else 1][0]


def test_bins_with_few_predictions_are_faded_outlined_and_counted():
    bins = hand_bins([0, 3, 1000, 49, 50], [0.0, 0.0, 0.5, 1.0, 0.9],
                     [0.0, 0.3, 0.5, 0.7, 0.9015])  # the last gap is under a pixel: not drawn
    bars = plots.reliability_bars(bins)
    # Empty bins draw nothing; below FEW_PREDICTIONS (50) a bin is marked.
    assert [(b.count, b.few) for b in bars] == [(3, True), (1000, False), (49, True),
                                                (50, False)]
    assert [b.gap for b in bars] == ["over", None, "under", None]
    fig = plots.reliability_figure({"few": bins}, "few")
    try:
        (top, bottom, key), = panels_of(fig)
        texts = {t.get_text(): t.get_position() for t in top.texts}
        outlines = [p for p in top.patches if p.get_linestyle() == ":"]
        accuracy = [p for p in top.patches if not p.get_hatch() and p.get_linestyle() != ":"
                    and p.get_facecolor()[:3] == to_rgba("tab:blue")[:3]]
        counts = bottom.patches
        gaps = [p for p in top.patches if p.get_hatch()
                or p.get_facecolor()[:3] == to_rgba("red")[:3]]
    finally:
        plots.require_matplotlib().close(fig)
    assert set(texts) == {"n=3", "n=49"}  # only the few bins have their count written
    assert texts["n=3"][0] == pytest.approx(0.3) and texts["n=49"][0] == pytest.approx(0.7)
    # Each few bin is outlined to the top of its bar or gap, and its bars are faded.
    assert sorted((round(p.get_x() + p.get_width() / 2, 3), p.get_height()) for p in outlines) \
        == [(0.3, 0.3), (0.7, 1.0)]
    alphas = {round(p.get_x() + p.get_width() / 2, 3): p.get_alpha() for p in accuracy}
    assert alphas == {0.5: 1.0, 0.7: plots.FADED, 0.9: 1.0}  # the 0.3 bin has accuracy 0
    assert [p.get_alpha() for p in counts] == [plots.FADED, 1.0, plots.FADED, 1.0]
    assert sorted(round(p.get_x() + p.get_width() / 2, 3) for p in gaps) == [0.3, 0.7]
    assert bottom.get_yscale() == "log"  # a count of 3 shows beside 1000
    assert plots.FEW in legend_texts(key)


def uninformative(rows=200):
    """Logits that say nothing about the labels: every row appears once with each label."""
    z = torch.randn(rows, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return z.repeat_interleave(5, 0), torch.arange(5).repeat(rows)


def test_a_runaway_temperature_gets_a_note_saying_what_it_means():
    temperature = calibration.fit_temperature(*uninformative())
    assert temperature > calibration.SANE_TEMPERATURE[1]  # the fit is unbounded: it ran away
    note = calibration.temperature_note(temperature)
    assert note.startswith(f"note: the fitted temperature T = {temperature:,.6g} is above 100")
    assert "almost no information" in note and "nearly uniform" in note
    assert len(note.splitlines()) == 1
    # Every prediction right: the fit runs to T -> 0.
    logits = torch.randn(300, 5, generator=torch.Generator().manual_seed(1)) * 0.01
    low = calibration.fit_temperature(logits, logits.argmax(1))
    assert low < calibration.SANE_TEMPERATURE[0]
    assert "below 0.01" in calibration.temperature_note(low)
    # A fit that finds the real temperature says nothing.
    logits, labels = synthetic(20_000)
    assert calibration.temperature_note(calibration.fit_temperature(logits * 3, labels)) is None
    assert calibration.temperature_note(100.0) is None
    assert calibration.temperature_note(0.01) is None


def test_test_py_notes_a_runaway_temperature_and_records_it(
        tiny_run, data_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setattr(calibration, "fit_temperature", lambda logits, labels: 263414.0)
    record_dir = tmp_path / "record"
    code, out, _ = run(TEST, TINY[:6] + ["--data_dir", data_dir, "--save_dir", tiny_run,
                                         "--n_episode", "2", "--repeat", "1",
                                         "--temperature_scaling", "--plot",
                                         "--record_dir", record_dir], capsys)
    assert code == 0, out
    lines = out.splitlines()
    fitted = next(i for i, line in enumerate(lines) if line.startswith("Temperature fitted"))
    assert lines[fitted].endswith("T = 263414.0000")
    assert re.match(r"note: the fitted temperature T = 263,414 is above 100: the model's "
                    r"validation logits carry almost no information", lines[fitted + 1])
    record = json.loads((record_dir / "results.jsonl").read_text().splitlines()[-1])
    assert record["temperature"] == 263414.0
    assert "temperature_scaled" in record["repeats"][0]


@pytest.mark.parametrize("panels", [1, 2])
def test_a_long_title_fits_the_figure(panels):
    """The title test.py gives a run, on one panel and on two: every character inside the
    figure (it was cut at both ends, the method's name lost), and all of it shown."""
    bins = hand_bins([100] * 5, [0.1, 0.3, 0.5, 0.7, 0.9], [0.1, 0.3, 0.5, 0.7, 0.9])
    title = ("filelists/caltech_to_cub100 Conv4Pool bayes_hmaml on cross_char novel, 5-way "
             "1-shot, 7,500 test queries, best_model.tar of epoch 1234")
    figure = plots.reliability_figure({f"panel {i}": bins for i in range(panels)}, title)
    try:
        figure.canvas.draw()
        text = figure._suptitle
        box, frame = text.get_window_extent(), figure.bbox
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and box.y1 <= frame.y1
        assert " ".join(text.get_text().split()) == title
        for top, _, _ in panels_of(figure):  # above the panels, not over them
            assert box.y0 >= top.get_window_extent().y1
    finally:
        plots.require_matplotlib().close(figure)
