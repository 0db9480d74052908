"""docs/options.md, the options reference: written from the code, so it cannot fall behind an
option added or a help text changed; and the notes that tell a user which of the options
given the entry point ignores."""
from __future__ import annotations

import importlib.util
import shutil

import predict
from cli import config
from conftest import REPO_ROOT
from helpers import TEST, TRAIN, run
from methods import METHODS

_spec = importlib.util.spec_from_file_location("write_options",
                                               REPO_ROOT / "docs" / "write_options.py")
WRITER = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(WRITER)


def test_committed_page_is_what_the_script_writes():
    assert WRITER.PAGE.read_text() == WRITER.page(), (
        "docs/options.md is out of date: run python -m docs.write_options")


def test_check_fails_with_one_line_on_a_stale_page(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "options.md"
    shutil.copy(WRITER.PAGE, stale)
    monkeypatch.setattr(WRITER, "PAGE", stale)
    assert WRITER.main(["--check"]) == 0
    stale.write_text(stale.read_text().replace("support images per class", "shots"))
    assert WRITER.main(["--check"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"{stale} is out of date: run python -m docs.write_options"]
    assert WRITER.main([]) == 0 and WRITER.main(["--check"]) == 0


def test_every_option_is_on_the_page():
    page = (REPO_ROOT / "docs" / "options.md").read_text()
    parsers = [config.build_parser(entry, list(METHODS)) for entry in ("train", "test")]
    for parser in parsers + [predict.build_parser()]:
        for action in parser._actions:
            if action.dest != "help":  # argparse's own -h
                name = action.option_strings[0] if action.option_strings else action.dest
                assert f"| `{name}" in page, name


def test_other_entry_points_options_are_noted_once(data_dir, tiny_run, tmp_path, capsys):
    """The published commands give test.py train.py's options: a note, not an error; and
    train.py's final test tests the run's best model whatever test.py's --checkpoint says."""
    common = ["--dataset", "cross_char", "--method", "maml", "--n_shot", "1", "--repeat", "1",
              "--data_dir", data_dir, "--save_dir", tiny_run, "--record_dir", tmp_path]
    code, out, _ = run(TEST, common + ["--final_test", "20", "--n_episode", "2"], capsys)
    assert code == 0, out
    notes = [line for line in out.splitlines() if line.startswith("note: test.py")]
    assert notes == ["note: test.py does not use --final_test (train.py only): ignored"]

    code, out, _ = run(TRAIN, common + ["--evaluate_model", "--final_test", "2", "--checkpoint",
                                        tmp_path / "nowhere.tar"], capsys)
    assert code == 0, out
    notes = [line for line in out.splitlines() if line.startswith("note: train.py")]
    assert notes == ["note: train.py does not use --checkpoint (test.py only): ignored"]
    assert "best_model.tar" in out
