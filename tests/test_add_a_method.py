"""docs/contributing.md, "Adding a method", followed step by step for a tiny method,
``frozen``: it adapts nothing (the meta-learned classifier scores the query set, no inner
loop). It subclasses MetaLearner, implements ``from_options`` and ``adapted_query_logits``
(MetaLearner's ``adapt_more_at_test`` refuses ``--adaptation`` for it), is registered in
methods.METHODS (here for one test at a time, with monkeypatch), and then trains with
train.py and tests with test.py on the real cross_char data."""
from __future__ import annotations

import json

import pytest
import torch

import data
from backbones import Conv4S
from cli import config
from conftest import TEST_DEVICE
from data.benchmarks import find
from data.episodes import TEST_QUERY, Episode
from helpers import (N_WAY, TEST, TINY, TRAIN, assert_batch_gradient_is_the_sum_over_tasks,
                     assert_meta_gradient_matches_finite_differences, assert_one_line_error,
                     meta_gradient, run, run_folder, tiny_episode)
from methods import MAML, METHODS
from methods.meta_learner import MetaLearner
from runtime import setup
from storage import checkpoints


# --- step 1: the method -------------------------------------------------------------------
class Frozen(MetaLearner):
    """No inner loop: the query set is scored with the universal (meta-learned) weights."""

    @classmethod
    def from_options(cls, opts, backbone) -> "Frozen":
        return cls(backbone, opts.train_n_way)

    def adapted_query_logits(self, episode: Episode, training: bool) -> torch.Tensor:
        with torch.set_grad_enabled(training):
            return self(episode.query_x, self.universal_params())


# --- step 2: its registration, for one test at a time ---------------------------------------
@pytest.fixture
def frozen(monkeypatch):
    monkeypatch.setitem(METHODS, "frozen", Frozen)
    return Frozen


def tiny_frozen() -> Frozen:
    """The tiny float64 network of tests/test_maml.py, as a Frozen model."""
    torch.manual_seed(0)
    model = Frozen(Conv4S(image_size=8, width=3, depth=3), N_WAY).double().to(TEST_DEVICE)
    with torch.no_grad():  # a non-zero classifier bias, so its gradient is exercised too
        model.classifier[0].bias.normal_()
    return model


# --- step 3: the method's own checks (copied from tests/test_maml.py) ----------------------
def test_frozen_adapts_nothing():
    """The query logits are those of the meta-learned weights whatever the support set, the
    same as MAML with zero inner steps on the same weights; evaluation builds no graph and
    leaves the weights as they were."""
    model = tiny_frozen()
    episode = tiny_episode(0)
    other_support = tiny_episode(1)
    swapped = Episode(other_support.support_x, other_support.support_y, episode.query_x,
                      episode.query_y)
    universal = model(episode.query_x, model.universal_params())
    logits = model.adapted_query_logits(episode, training=True)
    torch.testing.assert_close(logits, universal, rtol=0, atol=0)
    torch.testing.assert_close(model.adapted_query_logits(swapped, training=True), universal,
                               rtol=0, atol=0)

    maml = MAML(Conv4S(image_size=8, width=3, depth=3), N_WAY, inner_steps=0,
                inner_lr=0.4).double().to(TEST_DEVICE)
    maml.load_state_dict(model.state_dict())
    torch.testing.assert_close(maml.adapted_query_logits(episode, training=True), logits)
    one_step = MAML(Conv4S(image_size=8, width=3, depth=3), N_WAY, inner_steps=1,
                    inner_lr=0.4).double().to(TEST_DEVICE)
    one_step.load_state_dict(model.state_dict())
    assert not torch.allclose(one_step.adapted_query_logits(episode, training=True), logits)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    eval_logits = model.adapted_query_logits(episode, training=False)
    assert not eval_logits.requires_grad
    torch.testing.assert_close(eval_logits, logits.detach())
    result = model.evaluate_task(episode)
    assert result.correct == int((logits.argmax(1) == episode.query_y).sum())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_frozen_meta_gradient_is_exact_and_reaches_backbone_and_classifier():
    model = tiny_frozen()
    assert_meta_gradient_matches_finite_differences(model, tiny_episode(2))
    for (name, _), grad in zip(model.named_parameters(), meta_gradient(model, tiny_episode(3))):
        if name.startswith("feature.") and name.endswith(".0.bias"):
            continue  # a conv bias before BatchNorm: zero gradient in exact arithmetic
        assert grad.abs().sum() > 0, name
    assert_batch_gradient_is_the_sum_over_tasks(model)


def test_frozen_reads_none_of_the_family_options(frozen):
    from methods import options_ignored_by
    ignored = options_ignored_by("frozen")
    assert {"task_update_num", "train_lr", "hn_hidden_size", "hm_kl_w"} <= ignored
    assert "task_update_num" not in options_ignored_by("maml")
    # Recording the hypernetwork's updates is an option of the hypernetwork methods alone.
    assert "hm_save_delta_params" in options_ignored_by("maml")
    assert "hm_save_delta_params" not in options_ignored_by("bayes_hmaml")


def test_an_unregistered_method_is_refused_by_argparse(capsys):
    assert "frozen" not in METHODS
    with pytest.raises(SystemExit) as exc:
        TRAIN.main(["--dataset", "cross_char", "--method", "frozen"])
    assert exc.value.code == 2 and "invalid choice: 'frozen'" in capsys.readouterr().err


# --- step 4: train.py and test.py on the real data ----------------------------------------
def test_frozen_trains_and_tests_through_the_entry_points(frozen, data_dir, tmp_path, capsys):
    save, record = tmp_path / "save", tmp_path / "record"
    common = [*TINY[:2], "--method", "frozen", *TINY[4:6], "--data_dir", data_dir,
              "--save_dir", save, "--device", "cpu"]
    code, out, err = run(TRAIN, common + TINY[6:] + ["--train_lr", "0.5"], capsys)
    assert code == 0, out + err
    assert "note: frozen does not use --train_lr: ignored" in out
    folder = run_folder(save, "frozen")
    assert json.loads((folder / "args.json").read_text())["method"] == "frozen"
    first = checkpoints.load_checkpoint(folder / "0.tar", "frozen")
    last = checkpoints.load_checkpoint(folder / "last_model.tar", "frozen")
    assert first["config"]["method"] == last["config"]["method"] == "frozen"
    assert last["epoch"] == 1
    # Meta-training moved the backbone and the classifier.
    for prefix in ("feature.blocks.0.0.weight", "classifier.0.weight", "classifier.0.bias"):
        assert not torch.equal(first["model"][prefix], last["model"][prefix]), prefix

    # Another method's model option is ignored, not compared with the checkpoint.
    code, out, err = run(TEST, common + ["--n_episode", "3", "--repeat", "1", "--record_dir",
                                         record, "--hn_hidden_size", "64"], capsys)
    assert code == 0, out + err
    assert "note: frozen does not use --hn_hidden_size: ignored" in out
    entry = json.loads((record / "results.jsonl").read_text().splitlines()[-1])
    assert entry["method"] == "frozen" and entry["config"]["method"] == "frozen"
    assert isinstance(entry["acc_mean"], float) and 0 <= entry["acc_mean"] <= 100

    # test.py scored the meta-learned weights themselves: the same correct counts as the
    # checkpoint's universal classifier on the same episodes.
    best = checkpoints.load_checkpoint(folder / "best_model.tar", "frozen")
    opts = config.Options(**best["config"])
    benchmark = find(opts.dataset)
    model = setup.build_method(opts, benchmark, setup.choose_compute(opts, "cpu"), best,
                               folder / "best_model.tar")
    model.eval()
    sampler = data.split_sampler(opts, benchmark, data_dir, "novel", opts.test_n_way,
                                 TEST_QUERY, opts.seed, torch.device("cpu"), lambda *_: None)
    with torch.no_grad():
        correct = [int((model(e.query_x).argmax(1) == e.query_y).sum())
                   for e in map(sampler.episode, range(3))]
    assert entry["repeats"][0]["episode_correct"] == correct

    code, _, err = run(TEST, common + ["--n_episode", "3", "--repeat", "1", "--record_dir",
                                       record, "--adaptation", "--hn_val_epochs", "2"], capsys)
    assert_one_line_error(code, err, "--adaptation: Frozen has no test-time adaptation")
