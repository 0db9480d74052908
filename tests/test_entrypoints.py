"""train.py and test.py on the real data: an end-to-end cross_char run, exact resume after a
real interruption, option parsing, and every bad input of the foundation issue."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys

import pytest
import torch
from PIL import Image

from helpers import (TEST, TINY, TRAIN, assert_one_line_error, run, run_folder, run_until,
                     train_command)

# The published HyperMAML cross_char options (the reference's commands.sh), with a short warm-up.
HYPERMAML_PUBLISHED = ["--hm_maml_warmup", "--hn_head_len", "3", "--hn_hidden_size", "512",
                       "--hm_enhance_embeddings", "True", "--hm_use_class_batch_input"]


@pytest.mark.parametrize("method,extra", [
    ("maml", []),
    ("hyper_maml", HYPERMAML_PUBLISHED + ["--hm_maml_warmup_epochs", "1",
                                         "--hm_maml_warmup_switch_epochs", "3"]),
    ("bayes_hmaml", HYPERMAML_PUBLISHED + ["--hm_maml_warmup_epochs", "1",
                                          "--hm_maml_warmup_switch_epochs", "3",
                                          "--kl_scale", "1e-24", "--kl_stop_val", "0.001",
                                          "--hm_weight_set_num_train", "5",
                                          "--hm_weight_set_num_test", "0"]),
])
def test_short_cross_char_run_beats_chance_on_emnist_novel(method, extra, data_dir, tmp_path,
                                                           capsys):
    """A ~1 minute run on Omniglot (no Latin) generalises to EMNIST novel classes: 8 epochs
    of 10 meta-updates (the hypernetwork methods: warm-up, switch, then 4 of the hypernetwork
    alone), tested on 2 x 50 episodes."""
    common = ["--dataset", "cross_char", "--method", method, "--n_shot", "1",
              "--data_dir", data_dir, "--save_dir", tmp_path / "save"]
    code, out, _ = run(TRAIN, common + extra + ["--final_test", "0", "--n_task", "4",
                                                "--n_episode", "40",
                                                "--stop_epoch", "2", "--eval_freq", "2"], capsys)
    assert code == 0, out
    assert "--stop_epoch 2 x n_task 4 = 8 epochs" in out
    folder = run_folder(tmp_path / "save", method)
    assert {"best_model.tar", "last_model.tar", "0.tar", "7.tar", "args.json",
            "metrics.jsonl"} <= set(os.listdir(folder))
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(8))
    assert [m["epoch"] for m in metrics if "val_acc" in m] == [1, 3, 5, 7]

    code, out, _ = run(TEST, common + ["--n_episode", "50", "--repeat", "2", "--plot",
                                       "--temperature_scaling",
                                       "--record_dir", tmp_path / "record"], capsys)
    assert code == 0, out
    repeats = re.findall(r"^50 Test Acc = (\d+\.\d\d)% \+- (\d+\.\d\d)%\n  calibration: ECE 0\.\d+, "
                         r"MCE 0\.\d+(?: \(from a bin of \d+ predictions?: chance, not "
                         r"calibration\))?, NLL \d+\.\d+, Brier \d\.\d+; after temperature "
                         r"scaling ECE",
                         out, re.M)
    assert len(repeats) == 2
    for acc, ci in repeats:
        assert float(acc) > 35.0, out  # chance is 20% in 5-way
        assert 0 < float(ci) < 10
    assert "Mean over 2 repeats" in out
    assert re.search(r"^Calibration over all 7,500 test queries: ECE 0\.\d+, MCE", out, re.M)
    assert re.search(r"^After temperature scaling \(T = \d+\.\d+\): ECE", out, re.M)
    record = json.loads((tmp_path / "record" / "results.jsonl").read_text().splitlines()[-1])
    assert set(record["calibration"]) == {"accuracy", "ece", "mce", "nll", "brier", "mce_count"}
    assert record["calibration"]["mce"] >= record["calibration"]["ece"]
    assert record["calibration_temperature_scaled"]["nll"] <= record["calibration"]["nll"] + 0.05
    with Image.open(record["reliability_diagram"]) as im:
        assert im.format == "PNG"
    assert record["seeds"] == [0, 1] and record["split"] == "novel" and record["n_way"] == 5
    assert record["acc_mean"] == pytest.approx(sum(float(a) for a, _ in repeats) / 2, abs=0.01)
    assert f"cross_char split=novel Conv4 {method} 1shot 5way" in (
        tmp_path / "record" / "results.txt").read_text()


def state_at(save_dir, method, epoch: int):
    """The checkpoint of ``epoch`` and the metrics of epochs 0..epoch."""
    folder = run_folder(save_dir, method)
    state = torch.load(folder / f"{epoch}.tar", weights_only=True)
    metrics = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
               for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return state, [m for m in metrics if m["epoch"] <= epoch]


@pytest.mark.parametrize("method,extra", [
    ("maml", []),
    # Warm-up 0-1, switch 2-4, hypernetwork from 5: the interruption lands in the switch.
    ("hyper_maml", ["--hm_maml_warmup", "--hm_maml_warmup_epochs", "2",
                    "--hm_maml_warmup_switch_epochs", "3", "--hm_enhance_embeddings",
                    "--hm_use_class_batch_input", "--hn_hidden_size", "32", "--seed", "3"]),
    # Sampled classifiers (drawn from per-task seeds) and the KL schedule continue exactly.
    ("bayes_hmaml", ["--hm_maml_warmup", "--hm_maml_warmup_epochs", "2",
                     "--hm_maml_warmup_switch_epochs", "3", "--hm_use_class_batch_input",
                     "--hn_hidden_size", "32", "--hm_weight_set_num_train", "3",
                     "--hm_weight_set_num_test", "2"]),
])
def test_resume_after_an_interruption_continues_the_exact_run(method, extra, data_dir, tmp_path):
    """Straight through epoch 9 == interrupted (Ctrl-C) part-way, then a plain --resume (the
    saved options, seed included, continue) through epoch 9: identical weights, optimizer
    state, learning-rate, warm-up and KL schedules, and metrics."""
    straight = tmp_path / "straight"
    code, out = run_until(train_command(data_dir, straight, method, *extra), 9, signal.SIGKILL)
    assert code == -signal.SIGKILL, out

    interrupted = tmp_path / "interrupted"
    code, out = run_until(train_command(data_dir, interrupted, method, *extra), 3,
                          signal.SIGINT)
    assert code == 130 and "continue with --resume" in out, out
    stopped_at = torch.load(run_folder(interrupted, method) / "last_model.tar",
                            weights_only=True)["epoch"]
    assert 3 <= stopped_at < 9

    code, out = run_until(train_command(data_dir, interrupted, method, "--resume"), 9,
                          signal.SIGKILL)
    assert code == -signal.SIGKILL, out
    assert "Resuming" in out and f"after epoch {stopped_at}" in out, out

    a, metrics_a = state_at(straight, method, 9)
    b, metrics_b = state_at(interrupted, method, 9)
    assert metrics_a == metrics_b, (stopped_at, out)
    assert a["epoch"] == b["epoch"] == 9 and len(metrics_a) == 10
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for key, value in a["optimizer"]["state"].items():
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(value[field], b["optimizer"]["state"][key][field])
    assert a["scheduler"] == b["scheduler"] and a["best_epoch"] == b["best_epoch"]
    if method != "maml":
        assert [m["phase"] for m in metrics_b][1:6] == ["maml-warmup"] + ["switch"] * 3 + [
            "hypernet"]
    if method == "bayes_hmaml":
        assert a["schedule"]["kl_scale"] == pytest.approx(1e-24 * (1e-3 / 1e-24) ** (9 / 100))


def test_boolean_options_accept_flags_and_values():
    from cli import config
    for argv, expected in (([], False), (["--maml_adapt_classifier"], True),
                           (["--maml_adapt_classifier", "True"], True),
                           (["--maml_adapt_classifier", "False"], False),
                           (["--maml_adapt_classifier", "0"], False)):
        opts, given = config.parse("train", ["maml"],
                                   ["--dataset", "omniglot", "--method", "maml", *argv])
        assert opts.maml_adapt_classifier is expected, argv
        assert ("maml_adapt_classifier" in given) == bool(argv)
    with pytest.raises(SystemExit):
        config.parse("train", ["maml"], ["--dataset", "omniglot", "--method", "maml",
                                         "--maml_adapt_classifier", "maybe"])


def test_reference_overrides_apply_only_to_unset_options():
    from cli import config
    opts, _ = config.parse("train", ["maml"], ["--dataset", "cross_char", "--method", "maml",
                                               "--n_shot", "1"])
    opts = config.resolve(opts, "train")
    assert (opts.n_task, opts.task_update_num, opts.train_lr, opts.stop_epoch) == (32, 1, 0.1, 600)
    opts, _ = config.parse("train", ["maml"], ["--dataset", "cross_char", "--method", "maml",
                                               "--task_update_num", "3", "--train_lr", "0.05"])
    opts = config.resolve(opts, "train")
    assert (opts.task_update_num, opts.train_lr, opts.stop_epoch) == (3, 0.05, 400)


@pytest.mark.parametrize("argv", [["--dataset", "mini", "--method", "maml"],
                                  ["--dataset", "cross_char", "--method", "relation_net"],
                                  ["--dataset", "cross_char"]])
def test_unknown_dataset_or_method_is_an_argparse_error(argv, capsys):
    for entry in (TRAIN, TEST):
        with pytest.raises(SystemExit) as exc:
            entry.main(argv)
        assert exc.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_bad_episode_shapes(data_dir, tmp_path, capsys):
    common = TINY + ["--data_dir", data_dir, "--save_dir", tmp_path]
    code, _, err = run(TRAIN, common + ["--n_shot", "20"], capsys)
    assert_one_line_error(code, err, "n_shot 20 leaves no query image.*20 images")
    code, _, err = run(TRAIN, common + ["--train_n_way", "40", "--test_n_way", "40"], capsys)
    assert_one_line_error(code, err, "n_way 40 is larger than the 31 classes of the val split")
    code, _, err = run(TRAIN, common + ["--seed", "-1"], capsys)
    assert_one_line_error(code, err, "--seed must be >= 0")
    assert not (tmp_path / "checkpoints" / "cross_char" / "Conv4_maml_5way_1shot" /
                "last_model.tar").exists()


def test_unprepared_data_with_no_download_names_the_script(tmp_path, capsys):
    code, _, err = run(TRAIN, TINY + ["--data_dir", tmp_path / "empty", "--no_download",
                                      "--save_dir", tmp_path], capsys)
    assert_one_line_error(code, err, r"not prepared .*bash filelists/omniglot/download_omniglot.sh")


def test_corrupt_image_is_one_clear_error(data_dir, tmp_path, capsys):
    broken = tmp_path / "data"
    broken.mkdir()
    (broken / "omniglot").symlink_to(data_dir / "omniglot")
    shutil.copytree(data_dir / "emnist", broken / "emnist")
    (broken / "emnist" / ".store_28px.pt").unlink()
    (broken / "emnist" / "3" / "0.png").write_bytes(b"\x89PNG garbage")
    code, _, err = run(TRAIN, TINY + ["--data_dir", broken, "--no_download",
                                      "--save_dir", tmp_path / "save"], capsys)
    assert_one_line_error(code, err, r"cannot read image .*emnist/3/0.png")


def test_missing_checkpoints(data_dir, tmp_path, capsys):
    code, _, err = run(TEST, TINY[:4] + ["--data_dir", data_dir, "--save_dir", tmp_path], capsys)
    assert_one_line_error(code, err, r"no checkpoint at .*best_model.tar; train first")
    # --resume with nothing to resume starts the run (a published command carries --resume
    # from its first launch, as the reference allows).
    code, out, err = run(TRAIN, TINY + ["--resume", "--data_dir", data_dir,
                                        "--save_dir", tmp_path], capsys)
    assert code == 0, err
    assert "note: --resume, but nothing to resume in" in out and "epoch 1:" in out


def test_checkpoint_of_another_method_or_shape(data_dir, tiny_run, tmp_path, capsys):
    save = tmp_path / "save"
    shutil.copytree(run_folder(tiny_run), run_folder(save, "maml_approx"))
    base = ["--dataset", "cross_char", "--n_shot", "1", "--data_dir", data_dir,
            "--save_dir", save, "--n_episode", "5", "--repeat", "1"]
    code, _, err = run(TEST, base + ["--method", "maml_approx"], capsys)
    assert_one_line_error(code, err, "holds a maml model, not maml_approx")

    shutil.copytree(run_folder(tiny_run), run_folder(save, way=3))
    code, _, err = run(TEST, base + ["--method", "maml", "--train_n_way", "3",
                                     "--test_n_way", "3"], capsys)
    assert_one_line_error(code, err, "--train_n_way 3 does not match 5")
    # A checkpoint whose weights do not fit its own configuration.
    path = run_folder(save, way=3) / "best_model.tar"
    state = torch.load(path, weights_only=True)
    state["config"]["train_n_way"] = 3
    torch.save(state, path)
    code, _, err = run(TEST, base + ["--method", "maml", "--train_n_way", "3",
                                     "--test_n_way", "3"], capsys)
    assert_one_line_error(code, err, r"does not fit the requested model: 2 keys of another "
                                     r"shape: classifier.0.weight \(saved \[5, 64\], model "
                                     r"\[3, 64\]\)")
    path.write_bytes(path.read_bytes()[:1000])
    code, _, err = run(TEST, base + ["--method", "maml", "--train_n_way", "3",
                                     "--test_n_way", "3"], capsys)
    assert_one_line_error(code, err, "unreadable .*corrupt, truncated")


def test_existing_run_is_never_overwritten(data_dir, tiny_run, capsys):
    folder = run_folder(tiny_run)
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    code, _, err = run(TRAIN, TINY + ["--data_dir", data_dir, "--save_dir", tiny_run], capsys)
    assert_one_line_error(code, err, "already holds a run; pass --resume")
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before


def test_unwritable_save_folder(data_dir, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, _, err = run(TRAIN, TINY + ["--data_dir", data_dir, "--save_dir", blocker], capsys)
    assert_one_line_error(code, err, "cannot write to")
    assert blocker.read_text() == "not a folder"


def test_train_prepares_missing_data_from_the_offline_source(tmp_path, monkeypatch, capsys):
    """On a fresh machine, train.py prepares what its benchmark needs by itself."""
    from conftest import SHARED_DATA
    if not SHARED_DATA.is_dir():
        pytest.skip("no ../shared/data")
    monkeypatch.setenv("FSL_DATA_SOURCE", str(SHARED_DATA))
    fresh = tmp_path / "fresh"
    code, out, _ = run(TRAIN, TINY + ["--n_episode", "2", "--data_dir", fresh,
                                      "--save_dir", tmp_path / "save"], capsys)
    assert code == 0
    for name in ("omniglot", "emnist"):
        assert f"Dataset {name} is not prepared in {fresh}: preparing it from" in out
        assert (fresh / name / ".prepared").exists()
    assert (run_folder(tmp_path / "save") / "best_model.tar").exists()


BAYES_PUBLISHED = ["--kl_scale", "1e-24", "--kl_stop_val", "0.001",
                   "--hm_weight_set_num_train", "5", "--hm_weight_set_num_test", "0"]


@pytest.mark.parametrize("method,extra", [("hyper_maml", []), ("bayes_hmaml", BAYES_PUBLISHED)])
@pytest.mark.parametrize("shot_options", [["--n_shot", "1"],
                                          ["--n_shot", "5", "--hn_sup_aggregation", "mean"]])
def test_published_hypermaml_commands_parse_unchanged(method, extra, shot_options):
    """The published cross_char commands: 2,048 epochs, the warm-up and milestones in them."""
    from cli import config
    from data.benchmarks import find
    from methods import METHODS
    from runtime import setup
    from runtime.course import total_epochs
    argv = ["--dataset", "cross_char", "--model", "Conv4", "--method", method, *extra,
            "--train_n_way", "5", "--test_n_way", "5", *shot_options,
            "--stop_epoch", "64", "--lr", "1e-2", "--lr_scheduler", "multisteplr",
            "--milestones", "51", "550", "--hm_maml_warmup", "--hm_maml_warmup_epochs", "50",
            "--hm_maml_warmup_switch_epochs", "500", *HYPERMAML_PUBLISHED]
    opts, _ = config.parse("train", list(METHODS), argv)
    opts = config.resolve(opts, "train")
    assert total_epochs(opts) == 2048 and opts.milestones == [51, 550]
    assert opts.hm_enhance_embeddings is True and opts.hm_use_class_batch_input is True
    model = setup.build_method(opts, find("cross_char"), setup.choose_compute(opts, "cpu"))
    model.set_epoch(49, 2048)
    assert model.schedule_state()["phase"] == "maml-warmup"
    model.set_epoch(550, 2048)
    assert {k: model.schedule_state()[k] for k in ("phase", "p")} == {"phase": "hypernet",
                                                                     "p": 0.0}
    if method == "bayes_hmaml":
        assert model.bayes.hm_weight_set_num_test == 0 and model.bayes.kl_stop_val == 1e-3
        assert set(model.hypernet.heads) == {"delta", "logvar"}
    width = (64 + 5 + 1) * (1 if opts.hn_sup_aggregation == "mean" else opts.n_shot)
    assert model.hypernet.trunk[0].in_features == width
    assert all(head.out_features == 65 for head in model.hypernet.heads.values())
    assert len(model.hypernet.trunk) == 4  # hn_head_len 3: two hidden layers, then the head


def test_hypermaml_bad_combinations_fail_at_start(data_dir, tmp_path, capsys):
    base = ["--dataset", "cross_char", "--method", "hyper_maml", "--data_dir", tmp_path / "none",
            "--no_download", "--save_dir", tmp_path]
    # Checked before the data (here: none) is even looked at.
    code, _, err = run(TRAIN, base + ["--hm_use_class_batch_input", "--hn_tn_depth", "2",
                                      "--hn_tn_hidden_size", "7"], capsys)
    assert_one_line_error(code, err, "hn_tn_hidden_size 7 must be a positive multiple of n_way 5")
    code, _, err = run(TRAIN, base + ["--hn_adaptation_strategy", "increasing_alpha",
                                      "--hn_alpha_step", "-0.1"], capsys)
    assert_one_line_error(code, err, "hn_alpha_step must be positive")
    with pytest.raises(SystemExit) as exc:
        TRAIN.main([str(a) for a in base + ["--hn_sup_aggregation", "sum"]])
    assert exc.value.code == 2


def test_test_options_must_match_the_checkpoint(data_dir, tmp_path, capsys):
    save = tmp_path / "save"
    common = ["--dataset", "cross_char", "--method", "hyper_maml", "--n_shot", "1",
              "--data_dir", data_dir, "--save_dir", save]
    code, out, _ = run(TRAIN, common + ["--n_task", "2", "--n_episode", "2", "--stop_epoch", "1",
                                        "--hm_use_class_batch_input", "--hn_hidden_size", "32",
                                        "--final_test", "0"], capsys)
    assert code == 0, out
    code, _, err = run(TEST, common + ["--hn_hidden_size", "64"], capsys)
    assert_one_line_error(code, err, "--hn_hidden_size 64 does not match 32")
    code, _, err = run(TEST, common + ["--hm_use_class_batch_input", "False"], capsys)
    assert_one_line_error(code, err, "--hm_use_class_batch_input False does not match True")
    # Options not given are taken from the checkpoint: the model is rebuilt as trained.
    code, out, _ = run(TEST, common + ["--n_episode", "3", "--repeat", "1",
                                       "--record_dir", tmp_path / "record"], capsys)
    assert code == 0 and "3 Test Acc = " in out


def test_bayes_bad_inputs_and_plotting_without_matplotlib(tiny_run, data_dir, tmp_path, capsys,
                                                        monkeypatch):
    base = ["--dataset", "cross_char", "--method", "bayes_hmaml", "--data_dir", tmp_path / "no",
            "--no_download", "--save_dir", tmp_path]
    code, _, err = run(TRAIN, base + ["--kl_scale", "1e-3", "--kl_stop_val", "1e-5"], capsys)
    assert_one_line_error(code, err, "--kl_stop_val 1e-05 must be at least --kl_scale 0.001")
    code, _, err = run(TRAIN, base + ["--hm_weight_set_num_test", "-1"], capsys)
    assert_one_line_error(code, err, "hm_weight_set_num_test must be >= 0")

    record = tmp_path / "record"
    common = TINY[:6] + ["--data_dir", data_dir, "--save_dir", tiny_run, "--record_dir", record,
                         "--n_episode", "3", "--repeat", "1"]
    assert run(TEST, common, capsys)[0] == 0
    before = (record / "results.txt").read_text()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = run(TEST, common + ["--plot"], capsys)
    assert_one_line_error(code, err, "plotting needs matplotlib")
    assert (record / "results.txt").read_text() == before


def test_save_iter_tests_the_checkpoint_of_that_epoch(data_dir, tiny_run, tmp_path, capsys):
    common = TINY[:6] + ["--data_dir", data_dir, "--save_dir", tiny_run, "--n_episode", "3",
                         "--repeat", "1", "--record_dir", tmp_path]
    code, out, _ = run(TEST, common + ["--save_iter", "0"], capsys)
    assert code == 0 and "0.tar (epoch 0," in out
    code, _, err = run(TEST, common + ["--save_iter", "7"], capsys)
    assert_one_line_error(code, err, r"no checkpoint at .*7.tar")


def test_a_run_copied_under_another_suffix_tests_as_itself(data_dir, tiny_run, tmp_path,
                                                          capsys):
    """The suffix names a folder, not a model: a copy of a run under ``--checkpoint_suffix``
    copy tests on the same episodes to the same accuracy as the original."""
    save_dir = tmp_path / "save"
    shutil.copytree(run_folder(tiny_run), run_folder(save_dir).with_name(
        run_folder(save_dir).name + "_copy"))
    common = TINY[:6] + ["--data_dir", data_dir, "--n_episode", "3", "--repeat", "1",
                         "--record_dir", tmp_path / "record"]
    code, original, err = run(TEST, common + ["--save_dir", tiny_run], capsys)
    assert code == 0, err
    code, copy, err = run(TEST, common + ["--save_dir", save_dir, "--checkpoint_suffix", "copy"],
                          capsys)
    assert code == 0, err
    accuracy = re.compile(r"\d+\.\d+% \+- \d+\.\d+%")
    assert accuracy.findall(copy) == accuracy.findall(original) != []


def test_early_stopping_below_the_threshold(data_dir, tmp_path, capsys):
    code, out, _ = run(TRAIN, TINY + ["--data_dir", data_dir, "--save_dir", tmp_path,
                                      "--es_epoch", "0", "--es_threshold", "99"], capsys)
    assert code == 0
    assert "Early stop at epoch 0: best validation accuracy" in out
    assert "epoch 1:" not in out


def test_reference_names_are_read_by_honest_names():
    """The reference's misleading option names stay on the command line; the code reads them
    by the names of cli.config.HONEST_NAMES, which are the same values."""
    from cli import config
    opts, _ = config.parse("train", ["maml"], ["--dataset", "cross_char", "--method", "maml",
                                               "--train_lr", "0.25", "--task_update_num", "3",
                                               "--n_task", "7", "--hn_val_epochs", "4"])
    assert (opts.inner_lr, opts.inner_steps, opts.tasks_per_update, opts.fine_tune_steps) == \
        (0.25, 3, 7, 4)
    assert {getattr(opts, honest) for honest in config.HONEST_NAMES.values()} == \
        {getattr(opts, reference) for reference in config.HONEST_NAMES}
    with pytest.raises(AttributeError):  # read-only: the option itself is what is set
        opts.inner_lr = 1.0
