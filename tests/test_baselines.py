"""The standard baselines outside HyperMAML: ProtoNet, ANIL and Meta-SGD, on a tiny network in
float64: their meta-gradients against finite differences, and what each computes checked
against a plain reimplementation (prototypes and squared distances, MAML on the head alone,
MAML with every rate equal)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backbones import Conv4S
from conftest import TEST_DEVICE
from helpers import (N_WAY, TEST, TRAIN, assert_batch_gradient_is_the_sum_over_tasks,
                     assert_meta_gradient_matches_finite_differences, run, tiny_episode, tiny_maml)
from methods import ANIL, MAML, METHODS, MetaSGD, ProtoNet


def tiny(cls, **kwargs):
    """A tiny float64 model of ``cls`` (ProtoNet takes no inner-loop settings)."""
    if cls is ProtoNet:
        torch.manual_seed(0)
        return ProtoNet(Conv4S(image_size=8, width=3, depth=3), N_WAY).double().to(TEST_DEVICE)
    return tiny_maml(cls, **kwargs)


def test_the_baselines_are_methods_of_the_registry():
    assert (METHODS["protonet"], METHODS["anil"], METHODS["meta_sgd"]) == (ProtoNet, ANIL,
                                                                          MetaSGD)


@pytest.mark.parametrize("cls", [ProtoNet, ANIL, MetaSGD])
def test_meta_gradient_matches_finite_differences(cls):
    assert_meta_gradient_matches_finite_differences(tiny(cls), tiny_episode(n_shot=2))


@pytest.mark.parametrize("cls", [ProtoNet, ANIL, MetaSGD])
def test_every_meta_parameter_gets_a_gradient_and_tasks_add_up(cls):
    model = tiny(cls)
    model.zero_grad(set_to_none=True)
    model.accumulate_meta_gradient([tiny_episode(1)])
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing
    assert_batch_gradient_is_the_sum_over_tasks(tiny(cls))


def test_protonet_scores_by_the_distance_to_each_class_mean():
    model = tiny(ProtoNet)
    episode = tiny_episode(2, n_shot=3)
    support = model.feature(episode.support_x)
    query = model.feature(episode.query_x)
    means = torch.stack([support[episode.support_y == c].mean(0) for c in range(N_WAY)])
    expected = -torch.cdist(query, means) ** 2
    logits = model.adapted_query_logits(episode, training=False)
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)
    assert not logits.requires_grad and not list(model.classifier.parameters())


def test_protonet_is_equivariant_to_the_order_of_the_classes():
    """Relabelling the classes relabels the logits' columns, nothing else."""
    model = tiny(ProtoNet)
    episode = tiny_episode(3)
    order = torch.tensor([2, 0, 1], device=TEST_DEVICE)
    relabelled = type(episode)(episode.support_x, order[episode.support_y], episode.query_x,
                               order[episode.query_y], episode.seed)
    logits = model.adapted_query_logits(episode, training=False)
    torch.testing.assert_close(model.adapted_query_logits(relabelled, training=False)[:, order],
                               logits, rtol=1e-12, atol=1e-12)


def test_anil_is_maml_on_the_head_alone():
    anil, maml = tiny(ANIL), tiny(MAML, adapt_classifier_only=True)
    episode = tiny_episode(4)
    start = anil.inner_loop_start(training=False)
    fast = anil.adapt(start, episode.support_x, episode.support_y, create_graph=False)
    assert all(torch.equal(fast[n], start[n]) for n in start if n.startswith("feature."))
    assert any(not torch.equal(fast[n], start[n]) for n in start if n.startswith("classifier."))
    torch.testing.assert_close(anil.adapted_query_logits(episode, training=True),
                               maml.adapted_query_logits(episode, training=True))


def test_meta_sgd_with_equal_rates_is_maml_and_learns_its_rates():
    meta_sgd, maml = tiny(MetaSGD), tiny(MAML)
    episode = tiny_episode(5)
    # Rates initialised to the inner learning rate: MAML's adapted weights and query logits.
    torch.testing.assert_close(meta_sgd.adapted_query_logits(episode, training=True),
                               maml.adapted_query_logits(episode, training=True))
    rates = dict(meta_sgd.inner_lrs.named_parameters())
    assert set(rates) == {n.replace(".", "_") for n, _ in maml.named_parameters()}
    # The rates are not adapted by the inner loop, and another rate moves the adaptation.
    start = meta_sgd.inner_loop_start(training=False)
    fast = meta_sgd.adapt(start, episode.support_x, episode.support_y, create_graph=False)
    assert all(torch.equal(fast[n], start[n]) for n in start if n.startswith("inner_lrs."))
    with torch.no_grad():
        meta_sgd.inner_lrs["classifier_0_weight"].mul_(3)
    assert not torch.allclose(meta_sgd.adapted_query_logits(episode, training=False),
                              maml.adapted_query_logits(episode, training=False))


@pytest.mark.parametrize("adapt_classifier_only", [False, True])
def test_meta_sgd_batched_engine_equals_the_loop(adapt_classifier_only):
    episodes = [tiny_episode(seed) for seed in range(3)]
    runs = {}
    for batched in (False, True):
        model = tiny(MetaSGD, adapt_classifier_only=adapt_classifier_only)
        with torch.no_grad():  # rates that differ per weight, so that each one matters
            for rate in model.inner_lrs.values():
                rate.mul_(torch.rand_like(rate) + 0.5)
        model.zero_grad(set_to_none=True)
        losses = [r.loss for r in model.accumulate_meta_gradient(episodes, batched=batched)]
        runs[batched] = losses, [p.grad.clone() for p in model.parameters()]
    (loop, loop_grads), (together, batched_grads) = runs[False], runs[True]
    assert together == pytest.approx(loop, rel=1e-12)
    for a, b in zip(loop_grads, batched_grads):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_protonet_support_loss_falls_with_a_meta_update():
    """One outer step on a task lowers its query loss: the backbone is what ProtoNet learns."""
    model = tiny(ProtoNet)
    episode = tiny_episode(6)
    before = F.cross_entropy(model.adapted_query_logits(episode, training=True), episode.query_y)
    model.zero_grad(set_to_none=True)
    before.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.01 * p.grad
    after = F.cross_entropy(model.adapted_query_logits(episode, training=True), episode.query_y)
    assert after < before


@pytest.mark.parametrize("method", ["protonet", "anil", "meta_sgd"])
def test_a_baseline_trains_and_tests_through_the_entry_points(method, data_dir, tmp_path,
                                                              capsys):
    """Each baseline is a --method of train.py and test.py like the others: a short cross_char
    run, its final test, and test.py on its best model, with the run's records."""
    common = ["--dataset", "cross_char", "--method", method, "--n_shot", "1", "--n_task", "2",
              "--n_episode", "4", "--stop_epoch", "1", "--data_dir", data_dir, "--save_dir",
              tmp_path / "save", "--record_dir", tmp_path / "record", "--repeat", "1"]
    code, out, err = run(TRAIN, common + ["--final_test", "5"], capsys)
    assert code == 0, err
    assert f"{method} on cross_char, 5-way 1-shot" in out and out.count("5 Test Acc = ") == 1
    # The start line names an inner loop only where there is one (ProtoNet has none).
    start = next(line for line in out.splitlines() if line.startswith(f"{method} on "))
    assert ("inner loop" in start) == (method != "protonet"), start
    assert ("learned per-weight rates" in start) == (method == "meta_sgd"), start
    code, out, err = run(TEST, common + ["--n_episode", "3"], capsys)
    assert code == 0, err
    records = (tmp_path / "record" / "results.jsonl").read_text().splitlines()
    assert len(records) == 2 and all(f'"method": "{method}"' in r for r in records)
