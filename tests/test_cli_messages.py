"""What a new user meets first: error messages that name options which exist, one-line
argument errors, help without doubled defaults, no leftovers from a refused start, files
readable by the group, notes where a run will not do what its user may expect."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

import data.prepare as data_prepare
from cli import config
from conftest import REPO_ROOT
from helpers import TEST, TINY, TRAIN, assert_one_line_error, run
from methods import METHODS


def train_options() -> set[str]:
    return {"--" + f.name for f in config.dataclasses.fields(config.Options)}


def test_offline_hint_names_options_that_exist(tmp_path, monkeypatch, capsys):
    """No internet, no offline copy: the message says how to give one, and every option it
    names is one of train.py's (or the download script's, named with the script)."""
    monkeypatch.delenv("FSL_DATA_SOURCE", raising=False)
    monkeypatch.setitem(data_prepare.RAW_FILES, "omniglot",
                        {"images_background.zip": (tmp_path / "nowhere.zip").as_uri()})
    code, _, err = run(TRAIN, TINY + ["--data_dir", tmp_path / "data", "--save_dir",
                                      tmp_path / "save"], capsys)
    assert_one_line_error(code, err, "without internet access")
    assert "--data_source DIR" in err
    for option in re.findall(r"(\S*)\s+(--\w+)", err):
        script, name = option
        assert name in train_options() or script.endswith(".sh"), option

    code, _, err = run(TRAIN, TINY + ["--data_dir", tmp_path / "data", "--save_dir",
                                      tmp_path / "save", "--data_source", tmp_path / "none"],
                       capsys)
    assert_one_line_error(code, err, "the offline copy .* is not a folder")
    assert "--source" not in err
    assert not (tmp_path / "save").exists()


@pytest.mark.parametrize("argv,expected", [
    (["--dataset", "cross_char", "--method", "hypermaml"], "did you mean hyper_maml"),
    (["--dataset", "crosschar", "--method", "maml"], "did you mean cross_char"),
    (["--dataset", "cross_char", "--method", "maml", "--maml_adapt_classifier", "maybe"],
     "expected True or False"),
    # Case does not hide the meant name; a mistyped option is named with the one meant.
    (["--dataset", "cub", "--method", "maml"], "did you mean CUB?"),
    (["--dataset", "cross_char", "--method", "MAML"], "did you mean maml?"),
    (["--dataset", "cross_char", "--method", "maml", "--n_shots", "5"],
     "unrecognized arguments: --n_shots 5; did you mean --n_shot?"),
    (["--dataset", "cross_char", "--method", "maml", "--n_shots=5", "--stopepoch", "3"],
     "did you mean --n_shot for --n_shots, --stop_epoch for --stopepoch?"),
    # A folder that is not there is called that, with the folder beside it that was meant.
    (["--dataset", "filelists/emnits", "--method", "maml"],
     "--dataset: no such folder (did you mean filelists/emnist?)"),
])
def test_argument_errors_are_one_line(argv, expected, capsys):
    for entry in (TRAIN, TEST):
        with pytest.raises(SystemExit) as exc:
            entry.main(argv)
        assert exc.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]


def test_help_gives_each_default_once():
    for entry in ("train", "test"):
        parser = config.build_parser(entry, list(METHODS))
        formatter = parser._get_formatter()
        shown = {a.dest: formatter._expand_help(a) for a in parser._actions if a.help}
        for dest, text in shown.items():  # argparse's "(default: x)" only where the help
            own, _, added = text.partition("(default:")  # does not give the default itself
            assert "default" not in own or not added, (dest, text)
            assert "(default: None)" not in text, (dest, text)
        assert shown["seed"].endswith("(default: 0)")
        assert shown["data_dir"].endswith("(default filelists/)")


def test_refused_start_leaves_no_run_folder(data_dir, tmp_path, capsys):
    for extra in (["--train_n_way", "40", "--test_n_way", "40"], ["--n_shot", "20"]):
        code, _, _ = run(TRAIN, TINY + ["--data_dir", data_dir, "--save_dir", tmp_path / "s",
                                        *extra], capsys)
        assert code == 1
    assert not (tmp_path / "s").exists()
    code, _, _ = run(TEST, TINY[:6] + ["--data_dir", data_dir, "--save_dir", tmp_path / "s",
                                       "--record_dir", tmp_path / "rec"], capsys)
    assert code == 1 and not (tmp_path / "rec").exists()


def test_run_files_honour_the_umask(data_dir, tmp_path, capsys):
    previous = os.umask(0o022)
    try:
        assert run(TRAIN, TINY + ["--data_dir", data_dir, "--save_dir", tmp_path], capsys)[0] == 0
    finally:
        os.umask(previous)
    folder = tmp_path / "checkpoints" / "cross_char" / "Conv4_maml_5way_1shot"
    for name in ("args.json", "metrics.jsonl", "last_model.tar", "best_model.tar", "0.tar"):
        assert (folder / name).stat().st_mode & 0o777 == 0o644, name


def test_options_of_other_methods_are_ignored_with_a_note(data_dir, tmp_path, capsys):
    assert run(TRAIN, TINY + ["--data_dir", data_dir, "--save_dir", tmp_path,
                              "--hn_hidden_size", "64"], capsys)[0] == 0
    code, out, _ = run(TEST, TINY[:6] + ["--data_dir", data_dir, "--save_dir", tmp_path,
                                         "--hn_hidden_size", "64", "--n_episode", "2",
                                         "--repeat", "1", "--record_dir", tmp_path / "r"],
                       capsys)
    assert code == 0 and "note: maml does not use --hn_hidden_size: ignored" in out


def test_training_start_explains_the_schedule(data_dir, tmp_path, capsys):
    """A HyperMAML run cut short inside the warm-up says why validation sits at chance and
    that its hypernetwork is not trained; epoch lines print short numbers."""
    argv = ["--dataset", "cross_char", "--method", "bayes_hmaml", "--n_shot", "1",
            "--n_task", "2", "--n_episode", "2", "--stop_epoch", "1", "--final_test", "0",
            "--hm_maml_warmup", "--hm_use_class_batch_input", "--data_dir", data_dir,
            "--save_dir", tmp_path]
    code, out, _ = run(TRAIN, argv, capsys)
    assert code == 0
    assert "2 epochs of 1 meta-update x 2 tasks; warm-up inner loop 1 step of" in out
    assert "validation uses the hypernetwork alone" in out
    assert "all 2 epochs are in the pure warm-up" in out
    kl = re.search(r"^epoch 1: .*kl_scale (\S+),", out, re.M).group(1)
    assert len(kl) <= 9, kl  # e.g. 3.16e-14, not 3.1622776601683795e-14


def test_commands_sh_without_arguments_lists_the_experiments():
    done = subprocess.run(["bash", "commands.sh"], cwd=REPO_ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: bash commands.sh EXPERIMENT")
    assert "smoke" in done.stderr and "hyper_maml" in done.stderr
    assert "line " not in done.stderr



def test_missing_checkpoint_lists_the_runs_there(data_dir, tiny_run, capsys):
    """--resume or test.py with a mistyped run (here the default --n_shot 5) names the runs
    that do exist."""
    code, _, err = run(TEST, ["--dataset", "cross_char", "--method", "maml", "--data_dir",
                              data_dir, "--save_dir", tiny_run], capsys)
    assert_one_line_error(code, err, r"no checkpoint at .*5shot.* \(runs in .*: "
                                     r"Conv4_maml_5way_1shot\)")


def test_testing_a_warmup_checkpoint_says_the_hypernetwork_is_untrained(data_dir, tmp_path,
                                                                       capsys):
    common = ["--dataset", "cross_char", "--method", "hyper_maml", "--n_shot", "1",
              "--data_dir", data_dir, "--save_dir", tmp_path, "--record_dir", tmp_path / "r",
              "--hm_use_class_batch_input", "--hm_maml_warmup", "--n_episode", "2"]
    assert run(TRAIN, common + ["--n_task", "2", "--stop_epoch", "1", "--final_test", "0"],
               capsys)[0] == 0
    code, out, _ = run(TEST, common + ["--repeat", "1"], capsys)
    assert code == 0 and "is in the pure MAML warm-up: the hypernetwork" in out
