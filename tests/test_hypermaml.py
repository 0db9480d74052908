"""HyperMAML on tiny float64 models: class equivariance, the warm-up schedule and its two
ends (pure MAML on the classifier, pure hypernetwork), gradient flow and options."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backbones import Conv4, Conv4S
from cli.errors import UserError
from conftest import TEST_DEVICE, on_test_device
from data.episodes import Episode
from methods import MAML
from methods.hypermaml import HyperMAML, HyperSettings

N_WAY, N_SHOT, N_QUERY = 3, 2, 4


def episode(seed=0, n_shot=N_SHOT) -> Episode:
    g = torch.Generator().manual_seed(seed)
    return on_test_device(Episode(
        torch.randn(N_WAY * n_shot, 1, 8, 8, generator=g, dtype=torch.float64),
        torch.arange(N_WAY).repeat_interleave(n_shot),
        torch.randn(N_WAY * N_QUERY, 1, 8, 8, generator=g, dtype=torch.float64),
        torch.arange(N_WAY).repeat_interleave(N_QUERY)))


def hypermaml(n_shot=N_SHOT, inner_steps=2, **settings) -> HyperMAML:
    torch.manual_seed(0)
    defaults = dict(hn_hidden_size=16, hn_tn_hidden_size=6, hm_use_class_batch_input=True)
    model = HyperMAML(Conv4S(image_size=8, width=4, depth=3), N_WAY, n_shot, inner_steps, 0.3,
                      HyperSettings(**{**defaults, **settings})).double().to(TEST_DEVICE)
    with torch.no_grad():
        for p in model.classifier.parameters():  # non-zero biases, so every path is exercised
            p.normal_()
    return model


def permuted(ep: Episode, order: list[int], n_shot=N_SHOT) -> Episode:
    """The same task with class ``order[k]`` relabelled k."""
    def take(x, per_class):
        return x.reshape(N_WAY, per_class, *x.shape[1:])[order].reshape(x.shape)
    return Episode(take(ep.support_x, n_shot), ep.support_y, take(ep.query_x, N_QUERY),
                   ep.query_y)


@pytest.mark.parametrize("aggregation", ["concat", "mean"])
@pytest.mark.parametrize("depth", [1, 2])
def test_class_batch_hypernetwork_is_equivariant_to_class_order(aggregation, depth):
    model = hypermaml(hn_sup_aggregation=aggregation, hn_tn_depth=depth)
    with torch.no_grad():  # the universal rows belong to label positions, not to classes:
        for p in model.classifier.parameters():  # zero them so the classifier is -delta alone
            p.zero_()
    ep, order = episode(), [2, 0, 1]
    universal = model.universal_params()

    def deltas_and_logits(task):
        support = model.features(task.support_x, universal)
        rows = model.hypernet_input(support, task.support_y, universal)
        _, logits = model.task_loss(task, training=False)
        return model.hypernet_outputs(rows)["delta"], logits

    deltas, logits = deltas_and_logits(ep)
    deltas_p, logits_p = deltas_and_logits(permuted(ep, order))
    last = f"classifier.{2 * (depth - 1)}"
    torch.testing.assert_close(deltas_p[f"{last}.weight"], deltas[f"{last}.weight"][order])
    torch.testing.assert_close(deltas_p[f"{last}.bias"], deltas[f"{last}.bias"][order])
    if depth == 1:
        # Query images of class order[k] now come k-th, and are scored in column k. (With a
        # hidden target layer, each class's output row reads hidden units by position, and the
        # permutation moves the units the classes wrote, so only the rows are equivariant.)
        query_order = [c * N_QUERY + q for c in order for q in range(N_QUERY)]
        torch.testing.assert_close(logits_p, logits[query_order][:, order])


def test_warmup_p_schedule_boundaries():
    s = HyperSettings(hm_maml_warmup=True, hm_maml_warmup_epochs=50,
                      hm_maml_warmup_switch_epochs=500)
    assert s.warmup_p(0) == 1 and s.warmup_p(49) == 1
    assert s.warmup_p(50) == pytest.approx(500 / 501)
    assert s.warmup_p(549) == pytest.approx(1 / 501)
    assert s.warmup_p(550) == 0 and s.warmup_p(2047) == 0
    assert s.warmup_p(None) == 0  # validation and test use the hypernetwork
    assert HyperSettings().warmup_p(0) == 0  # no warm-up asked for
    ramp = HyperSettings(hn_adaptation_strategy="increasing_alpha", hn_alpha_step=0.25)
    assert [ramp.alpha(e) for e in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert ramp.alpha(None) == 1.0


def test_p1_is_maml_on_the_classifier_with_the_same_embeddings():
    model = hypermaml(hm_maml_warmup=True, hm_maml_warmup_epochs=10, hm_enhance_embeddings=True)
    model.set_epoch(3)
    maml = MAML(Conv4S(image_size=8, width=4, depth=3), N_WAY, 2, 0.3, adapt_classifier_only=True,
                classifier_depth=1).double().to(TEST_DEVICE)
    maml.load_state_dict({k: v for k, v in model.state_dict().items()
                          if not k.startswith("hypernet.")})
    ep = episode(1)
    universal = model.universal_params()
    support = model.features(ep.support_x, universal)
    result = model.adapted_classifier(universal, support, ep.support_y, training=True)
    adapted, deltas = result.params, result.deltas
    expected = maml.adapt(maml.universal_params(), ep.support_x, ep.support_y, create_graph=False)
    assert deltas == {}  # the hypernetwork is not even run while p = 1
    for name, value in adapted.items():
        torch.testing.assert_close(value, expected[name])


@pytest.mark.parametrize("operator,combine", [("minus", torch.sub), ("plus", torch.add),
                                              ("multiply", torch.mul)])
def test_p0_is_the_universal_classifier_updated_by_the_hypernetwork(operator, combine):
    model = hypermaml(hm_update_operator=operator, hm_enhance_embeddings=True)
    ep = episode(2)
    universal = model.universal_params()
    support = model.features(ep.support_x, universal)
    result = model.adapted_classifier(universal, support, ep.support_y, training=True)
    adapted, deltas = result.params, result.deltas
    out = model.hypernet(model.hypernet_input(support, ep.support_y, universal))["delta"]
    assert out.shape == (N_WAY, 4 + 1)  # each class writes its weight row (width 4) and bias
    torch.testing.assert_close(deltas["classifier.0.weight"], out[:, :4])
    torch.testing.assert_close(adapted["classifier.0.weight"],
                               combine(universal["classifier.0.weight"], out[:, :4]))
    torch.testing.assert_close(adapted["classifier.0.bias"],
                               combine(universal["classifier.0.bias"], out[:, 4]))


def test_switch_phase_mixes_gradient_step_and_hypernetwork_update():
    model = hypermaml(inner_steps=1, hm_maml_warmup=True, hm_maml_warmup_epochs=2,
                      hm_maml_warmup_switch_epochs=3)
    model.set_epoch(3)
    p = model.settings.warmup_p(3)
    assert 0 < p < 1
    ep = episode(3)
    universal = model.universal_params()
    support = model.features(ep.support_x, universal)
    result = model.adapted_classifier(universal, support, ep.support_y, training=True)
    adapted, deltas = result.params, result.deltas
    classifier = {n: v for n, v in universal.items() if n.startswith("classifier.")}
    loss = F.cross_entropy(model.classify(support, classifier), ep.support_y)
    grads = dict(zip(classifier, torch.autograd.grad(loss, list(classifier.values()))))
    for name, w in classifier.items():
        torch.testing.assert_close(adapted[name],
                                   w - (p * 0.3 * grads[name] + (1 - p) * deltas[name]))


def test_enhancement_uses_the_universal_classifier():
    model = hypermaml(hm_enhance_embeddings=True)
    ep, other = episode(4), episode(5)
    universal = model.universal_params()
    support = model.features(ep.support_x, universal)
    rows_before = model.hypernet_input(support, ep.support_y, universal)
    model.task_loss(other, training=True)[0].backward()  # another task in between
    rows = model.hypernet_input(support, ep.support_y, universal)
    torch.testing.assert_close(rows, rows_before)
    per_shot = rows.reshape(N_WAY * N_SHOT, -1)
    probs = F.softmax(model.classify(support, universal), dim=1)
    torch.testing.assert_close(per_shot[:, 4:4 + N_WAY], probs)
    torch.testing.assert_close(per_shot[:, -1], ep.support_y.double())


def grads_after_one_task(model, epoch=None, task=None):
    model.set_epoch(epoch)
    model.zero_grad(set_to_none=True)
    model.accumulate_meta_gradient([task or episode(6)])
    return {n: p.grad for n, p in model.named_parameters()}


def test_gradients_reach_backbone_and_hypernetwork():
    grads = grads_after_one_task(hypermaml(hm_enhance_embeddings=True))
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name


def test_detach_options_cut_the_right_paths():
    frozen = grads_after_one_task(hypermaml(hm_detach_feature_net=True))
    assert all(g is None for n, g in frozen.items() if n.startswith("feature."))
    assert all(g.abs().sum() > 0 for n, g in frozen.items() if n.startswith("hypernet."))
    full = grads_after_one_task(hypermaml())
    query_only = grads_after_one_task(hypermaml(hm_detach_before_hyper_net=True))
    first_conv = "feature.blocks.0.0.weight"
    assert query_only[first_conv].abs().sum() > 0
    assert not torch.allclose(query_only[first_conv], full[first_conv])


def test_meta_gradient_matches_finite_differences_in_the_switch_phase():
    # No enhancement here: its softmax column is computed without gradient by design, which
    # finite differences would see.
    model = hypermaml(inner_steps=1, hm_maml_warmup=True, hm_maml_warmup_epochs=1,
                      hm_maml_warmup_switch_epochs=2, hm_lambda=0.01, hn_hidden_size=4)
    model.set_epoch(1)
    ep = episode(7)
    analytic = grads_after_one_task(model, epoch=1, task=ep)
    eps = 1e-6
    for name, param in list(model.named_parameters())[-8:]:  # last BN, classifier, hypernet
        flat = param.data.view(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // 6)):
            original = flat[i].item()
            flat[i] = original + eps
            plus = float(model.task_loss(ep, training=True)[0].detach())
            flat[i] = original - eps
            minus = float(model.task_loss(ep, training=True)[0].detach())
            flat[i] = original
            assert analytic[name].view(-1)[i].item() == pytest.approx(
                (plus - minus) / (2 * eps), rel=1e-5, abs=1e-8), (name, i)


def test_support_set_loss_and_lambda_change_the_loss():
    ep = episode(8)
    base, _ = hypermaml().task_loss(ep, training=True)
    with_support, _ = hypermaml(hm_support_set_loss=True).task_loss(ep, training=True)
    model = hypermaml(hm_lambda=0.5)
    with_lambda, _ = model.task_loss(ep, training=True)
    universal = model.universal_params()
    support = model.features(ep.support_x, universal)
    deltas = model.adapted_classifier(universal, support, ep.support_y, training=True).deltas
    penalty = sum(d.pow(2).sum() for d in deltas.values())
    torch.testing.assert_close(with_lambda, base + 0.5 * penalty)
    assert not torch.allclose(with_support, base)


def test_non_class_batch_hypernetworks_write_whole_parameters():
    model = hypermaml(hm_use_class_batch_input=False, hn_tn_depth=2, hn_tn_hidden_size=5)
    assert set(model.hypernet.keys()) == {"classifier_0_weight", "classifier_0_bias",
                                          "classifier_2_weight", "classifier_2_bias"}
    grads = grads_after_one_task(model)
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_test_time_fine_tuning_changes_only_a_copy():
    model = hypermaml(hm_set_forward_with_adaptation=True, hn_val_epochs=3, hn_val_lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = model.evaluate_task(episode(9))
    plain = hypermaml().evaluate_task(episode(9))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert tuned.loss != pytest.approx(plain.loss)


@pytest.mark.parametrize("settings,message", [
    (dict(hn_tn_depth=2, hn_tn_hidden_size=7), "multiple of n_way"),
    (dict(hn_adaptation_strategy="increasing_alpha", hn_alpha_step=-0.1), "hn_alpha_step"),
    (dict(hm_maml_warmup=True, hm_update_operator="multiply"), "minus"),
    (dict(hm_lambda=-1.0), "hm_lambda"),
    (dict(hm_maml_update_feature_net=True), "needs --hm_maml_warmup"),
    (dict(hm_maml_warmup=True, hm_maml_update_feature_net=True, hm_detach_feature_net=True),
     "choose one"),
])
def test_impossible_combinations_are_refused(settings, message):
    with pytest.raises(UserError, match=message):
        hypermaml(**settings)


def batched_episodes(n_shot, n_tasks=3):
    g = torch.Generator().manual_seed(n_shot)
    return [on_test_device(Episode(
        torch.randn(N_WAY * n_shot, 1, 8, 8, generator=g, dtype=torch.float64),
        torch.arange(N_WAY).repeat_interleave(n_shot),
        torch.randn(N_WAY * N_QUERY, 1, 8, 8, generator=g, dtype=torch.float64),
        torch.arange(N_WAY).repeat_interleave(N_QUERY))) for _ in range(n_tasks)]


@pytest.mark.parametrize("method", ["hyper_maml", "bayes_hmaml"])
@pytest.mark.parametrize("n_shot", [1, 5])
@pytest.mark.parametrize("epoch", [0, 2, 9])  # warm-up (p = 1), switch (p = 2/3), hypernetwork
def test_batched_engine_equals_the_loop(method, n_shot, epoch):
    """Losses, logits and meta-gradients of the two engines agree in float64."""
    from methods.bayes_hmaml import BayesHMAML, BayesSettings
    episodes = batched_episodes(n_shot)
    runs, evaluations = {}, {}
    for engine in ("loop", "batched"):
        torch.manual_seed(0)
        settings = HyperSettings(hn_hidden_size=16, hm_use_class_batch_input=True,
                                 hm_enhance_embeddings=True, hm_maml_warmup=True,
                                 hm_maml_warmup_epochs=1, hm_maml_warmup_switch_epochs=2,
                                 hn_sup_aggregation="mean" if n_shot > 1 else "concat")
        # Bayes evaluates with 2 samples, so evaluation draws random numbers too.
        backbone = Conv4S(image_size=8, width=4, depth=3)
        model = (BayesHMAML(backbone, N_WAY, n_shot, 1, 0.3, settings, BayesSettings(3, 2))
                 if method == "bayes_hmaml"
                 else HyperMAML(backbone, N_WAY, n_shot, 1, 0.3, settings)).double().to(TEST_DEVICE)
        model.set_epoch(epoch, 10)
        torch.manual_seed(1)  # BayesHMAML's samples: the same draws in the same order
        results = model.accumulate_meta_gradient(episodes, batched=engine == "batched")
        runs[engine] = (results, {n: p.grad for n, p in model.named_parameters()})
        torch.manual_seed(2)
        evaluations[engine] = model.evaluate_tasks(episodes, batched=engine == "batched")
    for a, b in zip(evaluations["loop"], evaluations["batched"]):
        torch.testing.assert_close(b.logits, a.logits, rtol=1e-10, atol=1e-12)
    (loop, loop_grads), (batched, batched_grads) = runs["loop"], runs["batched"]
    assert [r.loss for r in loop] == pytest.approx([r.loss for r in batched], rel=1e-12)
    assert [r.correct for r in loop] == [r.correct for r in batched]
    for name, grad in loop_grads.items():
        if grad is None:  # the hypernetwork is not run while p = 1
            assert batched_grads[name] is None, name
        else:
            torch.testing.assert_close(batched_grads[name], grad, rtol=1e-10, atol=1e-12,
                                       msg=name)


def test_grouped_backbone_normalises_each_set_alone():
    torch.manual_seed(0)
    backbone = Conv4().double()
    x = torch.randn(4, 6, 3, 28, 28, dtype=torch.float64)
    together = backbone.forward_tasks(x)
    alone = torch.stack([backbone(part) for part in x])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-12)
    # One set of all the images would mix the sets' statistics.
    assert not torch.allclose(backbone(x.flatten(0, 1)), alone.flatten(0, 1))


@pytest.mark.parametrize("engine", ["loop", "batched"])
def test_channels_last_layout_computes_the_same(engine):
    """The CPU default layout for the hypernetwork methods changes speed, not results."""
    episodes = batched_episodes(N_SHOT)
    grads = {}
    for layout in (torch.contiguous_format, torch.channels_last):
        model = hypermaml(hm_enhance_embeddings=True).to(memory_format=layout)
        results = model.accumulate_meta_gradient(episodes, batched=engine == "batched")
        grads[layout] = [p.grad for p in model.parameters()], [r.loss for r in results]
    (a, loss_a), (b, loss_b) = grads.values()
    assert loss_b == pytest.approx(loss_a, rel=1e-10)
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, rtol=1e-9, atol=1e-12)


def test_memory_format_choice():
    from argparse import Namespace

    from runtime.setup import choose_memory_format
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_memory_format(Namespace(memory_format="auto", method="hyper_maml"), cpu) == \
        "channels_last"
    assert choose_memory_format(Namespace(memory_format="auto", method="maml"), cpu) == \
        "contiguous"
    assert choose_memory_format(Namespace(memory_format="auto", method="bayes_hmaml"), cuda) == \
        "contiguous"
    assert choose_memory_format(Namespace(memory_format="channels_last", method="maml"), cuda) \
        == "channels_last"


def backbone_grads(model: HyperMAML, ep: Episode, epoch: int) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model.set_epoch(epoch)
    model.accumulate_meta_gradient([ep])
    return {n: p.grad.clone() for n, p in model.named_parameters() if n.startswith("feature.")}


def test_update_feature_net_adapts_the_backbone_only_while_p_is_positive():
    """--hm_maml_update_feature_net: the warm-up's gradient steps also move the backbone by
    p * lr * grad, the query features come from that adapted backbone, and the meta-gradient
    of the backbone changes; once p = 0 nothing differs."""
    schedule = dict(inner_steps=1, hm_maml_warmup=True, hm_maml_warmup_epochs=2,
                    hm_maml_warmup_switch_epochs=3, hm_enhance_embeddings=True)
    adapting, fixed = hypermaml(**schedule, hm_maml_update_feature_net=True), hypermaml(**schedule)
    ep = episode(4)
    for epoch in (0, 3):  # p = 1, then p = 0.5
        with_flag, without = backbone_grads(adapting, ep, epoch), backbone_grads(fixed, ep, epoch)
        assert any(not torch.allclose(with_flag[n], without[n]) for n in with_flag), epoch
    with_flag, without = backbone_grads(adapting, ep, 9), backbone_grads(fixed, ep, 9)
    for name in with_flag:
        assert torch.equal(with_flag[name], without[name]), name

    # The adapted backbone, by hand: one step of p * lr on the support loss.
    adapting.set_epoch(3)
    p = adapting.settings.warmup_p(3)
    universal = adapting.universal_params()
    support = adapting.features(ep.support_x, universal)
    result = adapting.adapted_classifier(universal, support, ep.support_y, True, ep.support_x)
    weights = {n: v for n, v in universal.items() if n.startswith(("feature.", "classifier."))}
    loss = F.cross_entropy(adapting(ep.support_x, weights), ep.support_y)
    grads = dict(zip(weights, torch.autograd.grad(loss, list(weights.values()))))
    assert set(result.backbone) == {n for n in weights if n.startswith("feature.")}
    for name, value in result.backbone.items():
        torch.testing.assert_close(value, universal[name] - p * 0.3 * grads[name])
    for name, value in result.params.items():
        torch.testing.assert_close(value, universal[name] - p * 0.3 * grads[name]
                                   - (1 - p) * result.deltas[name])
    query = adapting.classify(adapting.features(ep.query_x, result.backbone), result.params)
    torch.testing.assert_close(adapting.task_loss(ep, training=True)[1], query)


def test_update_feature_net_falls_back_to_the_loop_in_the_batched_engine():
    episodes = [episode(s) for s in range(3)]
    grads = {}
    for engine in ("loop", "batched"):
        model = hypermaml(inner_steps=1, hm_maml_warmup=True, hm_maml_warmup_epochs=2,
                          hm_maml_warmup_switch_epochs=3, hm_maml_update_feature_net=True)
        model.set_epoch(3)
        model.accumulate_meta_gradient(episodes, batched=engine == "batched")
        grads[engine] = {n: p.grad for n, p in model.named_parameters()}
    for name, grad in grads["loop"].items():
        torch.testing.assert_close(grads["batched"][name], grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("validate_with_warmup", [False, True])
def test_validation_update_during_the_warmup(validate_with_warmup):
    """Validation uses the hypernetwork alone (p = 0), or with hm_validate_with_warmup the
    training epoch's p-mixed update, as the reference; a test (no epoch) is always p = 0."""
    model = hypermaml(inner_steps=1, hm_maml_warmup=True, hm_maml_warmup_epochs=2,
                      hm_maml_warmup_switch_epochs=3, hm_enhance_embeddings=True,
                      hm_validate_with_warmup=validate_with_warmup)
    ep = episode(5)
    model.set_epoch(None)
    at_test = model.evaluate_task(ep).logits
    model.set_epoch(3)
    validated = model.evaluate_task(ep).logits
    as_trained = model.task_loss(ep, training=True)[1].detach().float()
    if validate_with_warmup:
        torch.testing.assert_close(validated, as_trained)
        assert not torch.allclose(validated, at_test)
    else:
        torch.testing.assert_close(validated, at_test)
        assert not torch.allclose(validated, as_trained)


def test_hypernet_update_is_the_hypernetwork_output():
    model = hypermaml(hm_enhance_embeddings=True)
    ep = episode(6)
    universal = model.universal_params()
    support = model.features(ep.support_x, universal)
    result = model.adapted_classifier(universal, support, ep.support_y, training=False)
    update = model.hypernet_update(ep)
    assert set(update) == {"delta"}
    for name, delta in update["delta"].items():
        torch.testing.assert_close(delta, result.deltas[name])
