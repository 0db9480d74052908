"""MAML's inner loop and meta-gradients on a tiny network in float64, checked against finite
differences and against hand-built first-order gradients; transductive BatchNorm."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backbones import BACKBONES, Conv4, Conv4S
from conftest import TEST_DEVICE, on_test_device
from data.episodes import Episode
from helpers import (N_WAY, assert_batch_gradient_is_the_sum_over_tasks,
                     assert_meta_gradient_matches_finite_differences, meta_gradient, tiny_episode,
                     tiny_maml)
from methods import MAML, MAMLApprox
from runtime import loops
from runtime.setup import Compute


@pytest.mark.parametrize("adapt_classifier_only", [False, True])
def test_second_order_meta_gradient_matches_finite_differences(adapt_classifier_only):
    assert_meta_gradient_matches_finite_differences(
        tiny_maml(adapt_classifier_only=adapt_classifier_only), tiny_episode())


@pytest.mark.parametrize("backbone", ["Conv4Pool", "Conv6"])
def test_the_other_backbones_adapt_with_exact_meta_gradients(backbone):
    """Average pooling, and blocks without max-pooling, through MAML's second-order inner
    loop: 16-pixel three-channel images, where Conv6's last two blocks work on 1x1 maps and
    Conv4Pool's average is over its 1x1 map (16 / 2**4)."""
    torch.manual_seed(0)
    model = MAML(BACKBONES[backbone](image_size=16, width=2), N_WAY, inner_steps=2,
                 inner_lr=0.4).double().to(TEST_DEVICE)
    g = torch.Generator().manual_seed(1)
    episode = on_test_device(Episode(
        support_x=torch.randn(N_WAY * 2, 3, 16, 16, generator=g, dtype=torch.float64),
        support_y=torch.arange(N_WAY).repeat_interleave(2),
        query_x=torch.randn(N_WAY * 2, 3, 16, 16, generator=g, dtype=torch.float64),
        query_y=torch.arange(N_WAY).repeat_interleave(2)))
    assert_meta_gradient_matches_finite_differences(model, episode)


def test_first_order_gradient_is_the_query_gradient_at_the_adapted_weights():
    episode = tiny_episode(1)
    first = tiny_maml(MAMLApprox)
    second = tiny_maml(MAML)
    first_grads = meta_gradient(first, episode)
    second_grads = meta_gradient(second, episode)
    # By hand: adapt without a graph, then differentiate the query loss at those weights.
    params = {k: v.detach().requires_grad_() for k, v in first.universal_params().items()}
    for _ in range(first.inner_steps):
        loss = F.cross_entropy(first(episode.support_x, params), episode.support_y)
        grads = torch.autograd.grad(loss, list(params.values()))
        params = {k: (v - first.inner_lr * g).detach().requires_grad_()
                  for (k, v), g in zip(params.items(), grads)}
    F.cross_entropy(first(episode.query_x, params), episode.query_y).backward()
    for grad, (name, adapted) in zip(first_grads, params.items()):
        torch.testing.assert_close(grad, adapted.grad, msg=name)
    # ... and it is not the second-order gradient.
    difference = max((a - b).abs().max().item() for a, b in zip(first_grads, second_grads))
    assert difference > 1e-4


def test_zero_inner_steps_is_the_universal_model():
    model = tiny_maml(inner_steps=0)
    episode = tiny_episode()
    logits = model.adapted_query_logits(episode, training=True)
    torch.testing.assert_close(logits, model(episode.query_x))


def test_one_inner_step_lowers_the_support_loss():
    model = tiny_maml(inner_steps=1, inner_lr=0.05)
    episode = tiny_episode(2)
    params = model.universal_params()
    before = F.cross_entropy(model(episode.support_x, params), episode.support_y)
    fast = model.adapt(params, episode.support_x, episode.support_y, create_graph=False)
    after = F.cross_entropy(model(episode.support_x, fast), episode.support_y)
    assert after < before
    # Adaptation returns new tensors; the universal weights are untouched values.
    for name, p in model.named_parameters():
        assert fast[name] is not p


def test_adapting_the_classifier_only_keeps_the_backbone_fixed():
    model = tiny_maml(adapt_classifier_only=True)
    episode = tiny_episode()
    params = model.universal_params()
    fast = model.adapt(params, episode.support_x, episode.support_y, create_graph=True)
    for name in params:
        changed = not torch.equal(fast[name], params[name])
        assert changed == name.startswith("classifier."), name


@pytest.mark.parametrize("cls", [MAML, MAMLApprox])
def test_every_meta_parameter_gets_a_gradient(cls):
    model = tiny_maml(cls)
    for name, grad in zip([n for n, _ in model.named_parameters()],
                          meta_gradient(model, tiny_episode())):
        assert grad.abs().sum() > 0, name


def test_meta_gradient_of_a_batch_is_the_sum_over_tasks():
    assert_batch_gradient_is_the_sum_over_tasks(tiny_maml())


def test_evaluation_adapts_like_training_without_a_meta_graph():
    model = tiny_maml()
    episode = tiny_episode(3)
    trained_logits = model.adapted_query_logits(episode, training=True)
    result = model.evaluate_task(episode)
    eval_logits = model.adapted_query_logits(episode, training=False)
    assert not eval_logits.requires_grad
    torch.testing.assert_close(eval_logits, trained_logits.detach())
    assert result.total == episode.query_y.numel()
    assert result.correct == int((trained_logits.argmax(1) == episode.query_y).sum())


class TinySampler:
    """Episode i is tiny_episode(i): what loops.evaluate asks of an EpisodeSampler."""

    def episode(self, index: int) -> Episode:
        return tiny_episode(index)


def test_a_pass_keeps_every_episodes_logits_in_one_block():
    # One small tensor per episode, kept to the end of the pass between the episodes' large
    # activations, grew test.py's heap to 16 GB on photographs (loops.QueryBlock).
    model = tiny_maml()
    results = list(loops.evaluate(model, Compute(torch.device("cpu")), TinySampler(), 4))
    for index, result in enumerate(results):
        alone = model.evaluate_task(tiny_episode(index))
        torch.testing.assert_close(result.logits, alone.logits, rtol=0, atol=0)
        torch.testing.assert_close(result.labels, alone.labels, rtol=0, atol=0)
        assert result.correct == alone.correct
    storages = {r.logits.untyped_storage().data_ptr() for r in results}
    assert len(storages) == 1
    assert len({r.labels.untyped_storage().data_ptr() for r in results}) == 1


def test_batchnorm_is_transductive():
    """Every call normalises with its own batch's statistics, in train and eval mode alike."""
    torch.manual_seed(0)
    backbone = Conv4().double()
    x = torch.randn(10, 3, 28, 28, dtype=torch.float64)
    alone = backbone(x[:5])
    with_others = backbone(torch.cat([x[:5], x[5:] * 3 + 1]))[:5]
    assert not torch.allclose(alone, with_others)
    backbone.eval()
    torch.testing.assert_close(backbone(x[:5]), alone)
    assert not any(name.endswith("running_mean") for name, _ in backbone.named_buffers())


def test_conv4_shape_and_initialisation():
    """The reference's Conv4 reads three channels, every conv initialised N(0, sqrt(2 / (9 *
    64))) (fan-out of a 3x3 conv with 64 filters); Conv4S reads one."""
    torch.manual_seed(0)
    backbone = Conv4()
    assert backbone.blocks[0][0].weight.shape == (64, 3, 3, 3)
    assert backbone(torch.randn(4, 3, 28, 28)).shape == (4, 64)
    assert backbone.blocks[0][0].weight.std().item() == pytest.approx((2 / 576) ** 0.5, rel=0.1)
    weights = torch.cat([b[0].weight.flatten() for b in backbone.blocks])
    assert weights.std().item() == pytest.approx((2 / (9 * 64)) ** 0.5, rel=0.05)
    norms = [b[1] for b in backbone.blocks]
    assert all(bool((n.weight == 1).all() and (n.bias == 0).all()) for n in norms)
    single = Conv4S()
    assert single.blocks[0][0].weight.shape == (64, 1, 3, 3)
    assert single(torch.randn(4, 1, 28, 28)).shape == (4, 64)
    assert all(b[1].weight.eq(1).all() and b[1].bias.eq(0).all() for b in backbone.blocks)


@pytest.mark.parametrize("cls", [MAML, MAMLApprox])
@pytest.mark.parametrize("n_shot", [1, 5])
@pytest.mark.parametrize("adapt_classifier_only", [False, True])
def test_batched_engine_equals_the_loop(cls, n_shot, adapt_classifier_only):
    """Grouped convolutions with one group per task: the same losses, logits and
    meta-gradients as adapting the tasks one by one, in float64, first and second order; and
    the same evaluation."""
    episodes = [tiny_episode(seed, n_shot=n_shot) for seed in range(4)]
    runs, evaluations = {}, {}
    for engine in ("loop", "batched"):
        model = tiny_maml(cls, adapt_classifier_only=adapt_classifier_only)
        model.zero_grad(set_to_none=True)
        results = model.accumulate_meta_gradient(episodes, batched=engine == "batched")
        runs[engine] = results, [p.grad.clone() for p in model.parameters()]
        evaluations[engine] = model.evaluate_tasks(episodes, batched=engine == "batched")
    for a, b in zip(evaluations["loop"], evaluations["batched"]):
        torch.testing.assert_close(b.logits, a.logits, rtol=1e-10, atol=1e-12)
        assert b.loss == pytest.approx(a.loss, rel=1e-12)
    (loop, loop_grads), (batched, batched_grads) = runs["loop"], runs["batched"]
    assert [r.loss for r in batched] == pytest.approx([r.loss for r in loop], rel=1e-12)
    assert [r.correct for r in batched] == [r.correct for r in loop]
    for a, b in zip(loop_grads, batched_grads):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-13)


# (backbone, image size): maps of 1x1 and of more than one pixel at the end.
@pytest.mark.parametrize("name,size", [("Conv4S", 8), ("Conv4", 36), ("Conv4Pool", 36),
                                       ("Conv6", 36)])
def test_grouped_backbone_equals_each_task_alone(name, size):
    torch.manual_seed(0)
    depth = 3 if name == "Conv4S" else None
    backbone = BACKBONES[name](image_size=size, width=5, depth=depth).double()
    channels = backbone.input_channels
    x = torch.randn(3, 4, channels, size, size, dtype=torch.float64)
    stacked = {n: p.unsqueeze(0) + 0.1 * torch.randn(3, *p.shape, dtype=torch.float64)
               for n, p in backbone.named_parameters()}
    together = backbone.forward_tasks(x, stacked)
    from torch.func import functional_call
    alone = torch.stack([functional_call(backbone, {n: v[t] for n, v in stacked.items()},
                                         (x[t],)) for t in range(3)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-12)
    assert together.shape == (3, 4, backbone.feature_dim)
    # The tasks sharing the module's weights (HyperMAML's batched engine): the same call.
    shared = backbone.forward_tasks(x)
    each = torch.stack([backbone(x[t]) for t in range(3)])
    torch.testing.assert_close(shared, each, rtol=0, atol=1e-12)


def test_backbones_have_the_reference_layout():
    """CloserLookFewShot's ConvNet(depth, pool): conv 3x3 padding 1 -> BatchNorm -> ReLU in
    every block, max-pool 2 after the first four only, then flatten (Conv4, Conv6) or global
    average pooling (Conv4Pool); 64 channels. At 84 pixels the map ends 5 x 5, so Conv4 and
    Conv6 give 1,600 features and Conv4Pool 64; at 28 pixels all give 64."""
    for name, depth, features_84 in (("Conv4", 4, 1600), ("Conv6", 6, 1600),
                                     ("Conv4Pool", 4, 64)):
        backbone = BACKBONES[name](image_size=84)
        assert len(backbone.blocks) == depth
        for i, block in enumerate(backbone.blocks):
            conv, norm, relu = block[:3]
            assert (conv.kernel_size, conv.padding, conv.out_channels) == ((3, 3), (1, 1), 64)
            assert conv.in_channels == (3 if i == 0 else 64)
            assert isinstance(norm, torch.nn.BatchNorm2d) and isinstance(relu, torch.nn.ReLU)
            assert [type(m) for m in block[3:]] == ([torch.nn.MaxPool2d] if i < 4 else [])
        assert backbone.feature_dim == features_84
        assert backbone(torch.randn(2, 3, 84, 84)).shape == (2, features_84)
        assert BACKBONES[name](image_size=28)(torch.randn(2, 3, 28, 28)).shape == (2, 64)
