"""Fidelity to the reference: its published commands run literally, and every reference option
of the three methods is accepted with its meaning (implemented, documented as without effect,
or refused with one line)."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from helpers import TEST, TINY, TRAIN, assert_one_line_error, read_commands, run

PUBLISHED = REPO_ROOT.parent / "shared" / "reference" / "published-commands.txt"
# Appended to each published command: two epochs of two 2-task updates, a 10-episode final test.
SHORT = ["--stop_epoch", "1", "--n_task", "2", "--n_episode", "4", "--final_test", "10",
         "--repeat", "1"]


def published_commands() -> dict[str, list[str]]:
    return read_commands(PUBLISHED)


def test_the_reference_file_holds_the_four_published_commands():
    if not PUBLISHED.exists():
        pytest.skip(f"no {PUBLISHED}")
    assert set(published_commands()) == {"hyper_maml 1-shot", "hyper_maml 5-shot",
                                         "bayes_hmaml 1-shot", "bayes_hmaml 5-shot"}


def test_results_run_the_published_commands_word_for_word():
    """The published experiments of RESULTS.md are the reference's commands, unchanged."""
    if not PUBLISHED.exists():
        pytest.skip(f"no {PUBLISHED}")
    from results.experiments import EXPERIMENTS
    for heading, argv in published_commands().items():
        method, shots = heading.split()
        name = f"{method}_cross_char_{shots.replace('-', '')}_published"
        assert EXPERIMENTS[name].argv() == argv, name


def test_commands_sh_runs_the_published_commands_word_for_word(data_dir, tmp_path):
    """commands.sh takes its published experiments from results/experiments.py, where each is
    defined once: the reference's commands unchanged (BayesHMAML 1-shot's --seed 1 and
    --es_threshold 10 included); one of them run through commands.sh, a short schedule
    appended, trains with them."""
    if not PUBLISHED.exists():
        pytest.skip(f"no {PUBLISHED}")
    from results.experiments import PUBLISHED as EXPERIMENTS_PUBLISHED
    for heading, argv in published_commands().items():
        method, shots = heading.split()
        assert EXPERIMENTS_PUBLISHED[f"{method}_cross_char_{shots.replace('-', '')}"].split() \
            == argv, heading
    done = subprocess.run(
        ["bash", "commands.sh", "bayes_hmaml_cross_char_1shot", *SHORT, "--final_test", "0",
         "--data_dir", str(data_dir), "--save_dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "bayes_hmaml on cross_char, 5-way 1-shot" in done.stdout
    saved = json.loads(next(tmp_path.rglob("args.json")).read_text())
    assert (saved["seed"], saved["es_threshold"], saved["hm_weight_set_num_train"]) == (1, 10, 5)


@pytest.mark.parametrize("name", sorted(published_commands()))
def test_published_command_trains_and_tests_literally(name, data_dir, tmp_path, capsys):
    """The command as published (``--num_classes 4112``, ``--kl_scale=1e-24``, ``True``
    strings...), a short schedule appended; train.py ends with the final test, then test.py
    runs with the same options."""
    argv = published_commands()[name] + SHORT + [
        "--data_dir", data_dir, "--save_dir", tmp_path / "save", "--record_dir", tmp_path / "rec"]
    code, out, err = run(TRAIN, argv, capsys)
    assert code == 0, err
    assert "--stop_epoch 1 x n_task 2 = 2 epochs" in out
    assert "Final test of the best model on the novel split, 1 x 10 episodes" in out
    assert out.count("10 Test Acc = ") == 1
    code, out, err = run(TEST, argv, capsys)
    assert code == 0, err
    assert out.count("4 Test Acc = ") == 1
    records = [json.loads(line) for line in
               (tmp_path / "rec" / "results.jsonl").read_text().splitlines()]
    assert [r["n_episode"] for r in records] == [10, 4]
    assert all(r["split"] == "novel" and r["config"]["model"] == "Conv4" for r in records)


def test_final_test_is_test_py_and_evaluate_model_runs_it_alone(data_dir, tmp_path, capsys):
    common = TINY[:6] + ["--data_dir", data_dir, "--save_dir", tmp_path / "save",
                         "--record_dir", tmp_path / "rec", "--repeat", "2"]
    train = common + ["--n_task", "2", "--n_episode", "4", "--stop_epoch", "1",
                      "--final_test", "6"]
    code, out, _ = run(TRAIN, train, capsys)
    assert code == 0 and "Final test" in out
    code, evaluated, _ = run(TRAIN, train + ["--evaluate_model"], capsys)
    assert code == 0 and "epoch 0:" not in evaluated  # no training
    code, tested, _ = run(TEST, common + ["--n_episode", "6"], capsys)
    assert code == 0
    records = [json.loads(line) for line in
               (tmp_path / "rec" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 3
    assert records[0]["repeat_acc"] == records[1]["repeat_acc"] == records[2]["repeat_acc"]
    assert records[0]["calibration"] == records[2]["calibration"]
    code, _, err = run(TRAIN, train + ["--evaluate_model", "--final_test", "0"], capsys)
    assert_one_line_error(code, err, "nothing to do")


def test_adaptation_takes_hn_val_epochs_inner_steps(data_dir, tiny_run, tmp_path, capsys):
    """test.py --adaptation: MAML adapts --hn_val_epochs steps (-1: 100) instead of one."""
    common = TINY[:6] + ["--data_dir", data_dir, "--save_dir", tiny_run, "--n_episode", "5",
                         "--repeat", "1", "--record_dir", tmp_path]
    code, _, err = run(TEST, common + ["--adaptation"], capsys)
    assert_one_line_error(code, err, "give --hn_val_epochs N")
    for extra in ([], ["--adaptation", "--hn_val_epochs", "3"], ["--adaptation",
                                                                 "--hn_val_epochs", "-1"]):
        assert run(TEST, common + extra, capsys)[0] == 0
    plain, three, hundred = [json.loads(line) for line in
                             (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["config"]["task_update_num"] for r in (plain, three, hundred)] == [1, 3, 100]
    assert plain["calibration"]["nll"] != three["calibration"]["nll"]


def test_hypernetwork_adaptation_fine_tunes(data_dir, tmp_path, capsys):
    common = ["--dataset", "cross_char", "--method", "hyper_maml", "--n_shot", "1",
              "--data_dir", data_dir, "--save_dir", tmp_path / "save", "--record_dir", tmp_path,
              "--n_episode", "4", "--repeat", "1"]
    code, _, _ = run(TRAIN, common + ["--n_task", "2", "--stop_epoch", "1", "--final_test", "0",
                                      "--hm_use_class_batch_input"], capsys)
    assert code == 0
    assert run(TEST, common, capsys)[0] == 0
    assert run(TEST, common + ["--adaptation", "--hn_val_epochs", "2"], capsys)[0] == 0
    plain, tuned = [json.loads(line) for line in
                    (tmp_path / "results.jsonl").read_text().splitlines()]
    assert tuned["config"]["hm_set_forward_with_adaptation"] is True
    assert tuned["config"]["hn_val_epochs"] == 2
    assert plain["calibration"]["nll"] != tuned["calibration"]["nll"]


def folder_of(save_dir, method, model="Conv4"):
    return save_dir / "checkpoints" / "cross_char" / f"{model}_{method}_5way_1shot"


def test_saved_feature_network_loads_bit_identically(data_dir, tmp_path, capsys):
    """--maml_save_feature_network writes the backbone alone; --hm_load_feature_net starts a
    run from it. The loading run detaches its backbone, so its trained weights must still be
    exactly the loaded ones."""
    code, _, _ = run(TRAIN, TINY + ["--data_dir", data_dir, "--save_dir", tmp_path / "a",
                                    "--maml_save_feature_network"], capsys)
    assert code == 0
    source = folder_of(tmp_path / "a", "maml")
    saved = torch.load(source / "best_feature_net.tar", weights_only=True)
    best = torch.load(source / "best_model.tar", weights_only=True)
    last = torch.load(source / "last_feature_net.tar", weights_only=True)
    assert saved["epoch"] == best["epoch"] and last["epoch"] == 1
    for name, value in saved["state"].items():
        assert torch.equal(value, best["model"][f"feature.{name}"]), name

    code, out, _ = run(TRAIN, ["--dataset", "cross_char", "--method", "hyper_maml", "--n_shot",
                               "1", "--n_task", "2", "--n_episode", "4", "--stop_epoch", "1",
                               "--final_test", "0", "--hm_detach_feature_net",
                               "--hm_load_feature_net", "--hm_feature_net_path",
                               source / "best_feature_net.tar", "--data_dir", data_dir,
                               "--save_dir", tmp_path / "b"], capsys)
    assert code == 0 and "Backbone initialised from" in out
    trained = torch.load(folder_of(tmp_path / "b", "hyper_maml") / "last_model.tar",
                         weights_only=True)["model"]
    for name, value in saved["state"].items():
        assert torch.equal(value, trained[f"feature.{name}"]), name


def test_feature_network_of_the_reference_layout_and_mismatches(tmp_path):
    """The reference's ConvBlock keys (``trunk.{i}.C``, ``trunk.{i}.BN``, registered twice,
    BatchNorm running statistics) map onto ours; a network of another shape is one error."""
    from backbones import Conv4, Conv4S
    from cli.errors import UserError
    from storage import checkpoints
    torch.manual_seed(0)
    source = Conv4()
    state = {}
    for i, block in enumerate(source.blocks):
        conv, norm = block[0], block[1]
        for prefix in (f"trunk.{i}.", f"trunk.{i}.trunk."):
            c, bn = ("C", "BN") if prefix.endswith(f"{i}.") else ("0", "1")
            state.update({f"{prefix}{c}.weight": conv.weight, f"{prefix}{c}.bias": conv.bias,
                          f"{prefix}{bn}.weight": norm.weight, f"{prefix}{bn}.bias": norm.bias,
                          f"{prefix}{bn}.running_mean": torch.zeros(64),
                          f"{prefix}{bn}.running_var": torch.ones(64),
                          f"{prefix}{bn}.num_batches_tracked": torch.tensor(0)})
    torch.save({"epoch": 7, "state": state}, tmp_path / "reference.tar")
    target = Conv4()
    assert checkpoints.load_feature_net(target, tmp_path / "reference.tar") == 7
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(UserError, match=r"does not fit the backbone: 1 key of another shape: "
                       r"blocks.0.0.weight \(saved \[64, 3, 3, 3\], model \[64, 1, 3, 3\]\)"):
        checkpoints.load_feature_net(Conv4S(), tmp_path / "reference.tar")
    (tmp_path / "junk.tar").write_text("not a checkpoint")
    with pytest.raises(UserError, match="is unreadable .*not a PyTorch file"):
        checkpoints.load_feature_net(Conv4(), tmp_path / "junk.tar")


def test_delta_params_are_recorded_each_epoch(data_dir, tmp_path, capsys):
    common = ["--dataset", "cross_char", "--method", "bayes_hmaml", "--n_shot", "1",
              "--n_task", "2", "--n_episode", "4", "--stop_epoch", "1", "--final_test", "0",
              "--hm_use_class_batch_input", "--hm_save_delta_params", "--data_dir", data_dir,
              "--save_dir", tmp_path]
    assert run(TRAIN, common, capsys)[0] == 0
    folder = folder_of(tmp_path, "bayes_hmaml")
    lines = [json.loads(line) for line in (folder / "delta_params.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["episode"]) for r in lines] == [(0, 0), (1, 4)]
    import data
    from cli import config
    from data.benchmarks import find
    from data.episodes import TRAIN_QUERY
    from runtime import setup
    state = torch.load(folder / "last_model.tar", weights_only=True)
    opts = config.Options(**state["config"])
    # As train.py built it: its memory layout too (channels_last on a CPU for BayesHMAML).
    model = setup.build_method(opts, find(opts.dataset), setup.choose_compute(opts, "cpu"))
    model.load_state_dict(state["model"])
    sampler = data.split_sampler(opts, find(opts.dataset), data_dir, "base", 5, TRAIN_QUERY,
                                 opts.seed, "cpu")
    expected = model.hypernet_update(sampler.episode(4))
    for head in ("delta", "logvar"):
        for name, value in expected[head].items():
            torch.testing.assert_close(torch.tensor(lines[1][head][name]), value)


@pytest.mark.parametrize("extra,message", [
    (["--train_aug"], "trained without augmentation"),
    (["--warmup"], "baseline method"),
    (["--method", "maml", "--hm_save_delta_params"], "maml has no hypernetwork"),
    (["--hm_load_feature_net"], "needs --hm_feature_net_path"),
])
def test_reference_options_that_cannot_apply_are_refused(extra, message, tmp_path, capsys):
    argv = ["--dataset", "cross_char", "--method", "hyper_maml", "--save_dir", tmp_path,
            "--data_dir", tmp_path / "none", "--no_download", *extra]
    code, _, err = run(TRAIN, argv, capsys)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "checkpoints").exists()


def test_options_without_effect_say_so_in_help(capsys):
    with pytest.raises(SystemExit):
        TRAIN.main(["-h"])
    help_text = " ".join(capsys.readouterr().out.split())
    for option in ("--num_classes", "--n_val_perms"):
        start = help_text.index(f"{option} {option[2:].upper()} ")  # the option's entry
        assert "ignored" in help_text[start:start + 300], option


def test_checkpoint_of_the_one_channel_era_tests_as_the_network_it_holds(data_dir, tmp_path,
                                                                         capsys):
    """A format-1 checkpoint says Conv4 but holds the one-channel network: it loads as Conv4S,
    named by the command line that trained it, and tests exactly as that network."""
    from storage import atomic
    common = TINY[:6] + ["--data_dir", data_dir, "--save_dir", tmp_path, "--n_episode", "5",
                         "--repeat", "1", "--record_dir", tmp_path / "rec"]
    assert run(TRAIN, TINY + ["--model", "Conv4S", "--data_dir", data_dir,
                              "--save_dir", tmp_path], capsys)[0] == 0
    assert run(TEST, common + ["--model", "Conv4S"], capsys)[0] == 0
    old = folder_of(tmp_path, "maml")
    old.mkdir(parents=True)
    state = torch.load(folder_of(tmp_path, "maml", "Conv4S") / "best_model.tar",
                       weights_only=True)
    state["config"]["model"] = "Conv4"
    state.pop("format")
    state["rng"]["numpy"] = np.random.get_state()  # as formats 1-2 saved it
    atomic.write_file(old / "best_model.tar", lambda f: torch.save({"format": 1, **state}, f))
    code, out, _ = run(TEST, common + ["--model", "Conv4"], capsys)
    assert code == 0 and "now called Conv4S" in out
    new, legacy = [json.loads(line) for line in
                   (tmp_path / "rec" / "results.jsonl").read_text().splitlines()]
    assert legacy["repeat_acc"] == new["repeat_acc"]
    assert legacy["calibration"] == new["calibration"]
