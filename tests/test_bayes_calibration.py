"""BayesHMAML (KL, sampling, schedule) and the calibration metrics, on synthetic data with
known answers; the figures are real PNG files."""
from __future__ import annotations

import math
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from backbones import Conv4S
from cli.errors import UserError
from data.episodes import Episode
from helpers import synthetic
from methods.bayes_hmaml import BayesHMAML, BayesSettings, gaussian_kl_to_standard_normal
from methods.hypermaml import HyperSettings
from reports import calibration, plots

N_WAY = 3


def episode(seed=0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    return Episode(torch.randn(N_WAY * 2, 1, 8, 8, generator=g, dtype=torch.float64),
                   torch.arange(N_WAY).repeat_interleave(2),
                   torch.randn(N_WAY * 4, 1, 8, 8, generator=g, dtype=torch.float64),
                   torch.arange(N_WAY).repeat_interleave(4))


def bayes(train_samples=5, test_samples=0, **hyper) -> BayesHMAML:
    torch.manual_seed(0)
    settings = HyperSettings(**{"hn_hidden_size": 16, "hm_use_class_batch_input": True, **hyper})
    return BayesHMAML(Conv4S(image_size=8, width=4, depth=3), N_WAY, 2, 1, 0.3, settings,
                      BayesSettings(train_samples, test_samples, 1e-6, 1e-2)).double()


def adapted_and_features(model, ep, training):
    universal = model.universal_params()
    support = model.features(ep.support_x, universal)
    query = model.features(ep.query_x, universal)
    return model.adapted_classifier(universal, support, ep.support_y, training), query


def test_kl_matches_the_closed_form_of_torch_distributions():
    mean, logvar = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, (0.5 * logvar).exp()),
        torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))).sum()
    torch.testing.assert_close(gaussian_kl_to_standard_normal(mean, logvar), expected)
    assert gaussian_kl_to_standard_normal(torch.zeros(3), torch.zeros(3)) == 0


def test_predictions_average_the_logits_of_the_sampled_classifiers():
    model = bayes(train_samples=4)
    ep = episode(1)
    adapted, query = adapted_and_features(model, ep, training=True)
    assert set(adapted.logvar) == set(adapted.params) == {"classifier.0.weight",
                                                          "classifier.0.bias"}
    averaged = model.adapted_logits(query, adapted, True, torch.Generator().manual_seed(123))
    noise = torch.Generator().manual_seed(123)
    by_hand = []
    for _ in range(4):  # the same draws, in the same order: mean + std * eps
        sample = {n: m + (0.5 * adapted.logvar[n]).exp()
                  * torch.randn(m.shape, generator=noise, dtype=m.dtype)
                  for n, m in adapted.params.items()}
        by_hand.append(F.linear(query, sample["classifier.0.weight"], sample["classifier.0.bias"]))
    torch.testing.assert_close(averaged, torch.stack(by_hand).mean(0))
    # Other draws give other averages: the samples really are random.
    assert not torch.allclose(
        model.adapted_logits(query, adapted, True, torch.Generator().manual_seed(124)), averaged)


def test_zero_test_samples_is_the_mean_classifier():
    model = bayes(test_samples=0)
    ep = episode(2)
    adapted, query = adapted_and_features(model, ep, training=False)
    mean_logits = F.linear(query, adapted.params["classifier.0.weight"],
                           adapted.params["classifier.0.bias"])
    torch.testing.assert_close(model.adapted_logits(query, adapted, False, torch.Generator()),
                               mean_logits)
    torch.testing.assert_close(model.task_loss(ep, training=False)[1], mean_logits)
    # The mean is W - delta of the mean head.
    out = model.hypernet(model.hypernet_input(
        model.features(ep.support_x, model.universal_params()), ep.support_y,
        model.universal_params()))
    torch.testing.assert_close(adapted.params["classifier.0.bias"],
                               model.classifier[0].bias - out["delta"][:, -1])


def test_loss_adds_the_scheduled_kl():
    model = bayes(train_samples=1)
    model.set_epoch(3, 10)
    weight = model.bayes.kl_weight(3, 10)
    ep = replace(episode(3), seed=5)
    loss, logits = model.task_loss(ep, training=True)
    adapted, query = adapted_and_features(model, ep, training=True)
    logits_again = model.adapted_logits(query, adapted, True, torch.Generator().manual_seed(5))
    kl = sum(gaussian_kl_to_standard_normal(adapted.params[n], adapted.logvar[n])
             for n in adapted.params)
    torch.testing.assert_close(logits, logits_again)
    torch.testing.assert_close(loss, F.cross_entropy(logits_again, ep.query_y) + weight * kl)
    model.zero_grad()
    loss.backward()
    assert model.hypernet.heads["logvar"].weight.grad.abs().sum() > 0


def test_hm_kl_w_multiplies_the_kl_term():
    ep = replace(episode(4), seed=6)
    losses, kls = {}, {}
    for kl_w in (1.0, 3.0):
        model = bayes(train_samples=1)
        model.bayes = replace(model.bayes, hm_kl_w=kl_w)
        model.set_epoch(3, 10)
        losses[kl_w] = model.task_loss(ep, training=True)[0]
        adapted, _ = adapted_and_features(model, ep, training=True)
        kls[kl_w] = sum(gaussian_kl_to_standard_normal(adapted.params[n], adapted.logvar[n])
                        for n in adapted.params)
    weight = bayes().bayes.kl_weight(3, 10)
    torch.testing.assert_close(kls[1.0], kls[3.0])
    torch.testing.assert_close(losses[3.0] - losses[1.0], 2.0 * weight * kls[1.0])


def test_kl_schedule_grows_geometrically_to_the_stop_value():
    s = BayesSettings(kl_scale=1e-24, kl_stop_val=1e-3)
    total = 2048
    weights = [s.kl_weight(e, total) for e in range(total + 1)]
    assert weights[0] == pytest.approx(1e-24)
    assert weights[total] == pytest.approx(1e-3)
    ratios = [b / a for a, b in zip(weights, weights[1:])]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-9)
    assert ratios[0] == pytest.approx((1e-3 / 1e-24) ** (1 / total))


def test_each_task_draws_from_its_own_seed():
    """No state survives a task and the global generator plays no part: the same episode gives
    the same loss before and after others (so any process may run it); another task seed
    gives other samples."""
    model = bayes()
    ep = replace(episode(4), seed=9)
    torch.manual_seed(1)
    first = model.task_loss(ep, training=True)[0]
    model.task_loss(episode(5), training=True)[0].backward()
    torch.manual_seed(2)
    torch.testing.assert_close(model.task_loss(ep, training=True)[0], first)
    assert model.task_loss(replace(ep, seed=10), training=True)[0] != first


@pytest.mark.parametrize("settings,message", [
    (dict(test_samples=-1), "hm_weight_set_num_test must be >= 0"),
    (dict(train_samples=0), "hm_weight_set_num_train must be at least 1"),
])
def test_bad_sample_counts(settings, message):
    with pytest.raises(UserError, match=message):
        bayes(**settings)
    with pytest.raises(UserError, match="kl_stop_val 1e-05 must be at least --kl_scale 0.001"):
        BayesSettings(kl_scale=1e-3, kl_stop_val=1e-5).check()


# --- calibration -------------------------------------------------------------------------------
def test_ece_is_near_zero_for_a_calibrated_predictor_and_large_for_an_overconfident_one():
    calibrated = calibration.calibration_report(*synthetic())
    assert calibrated.ece < 0.01
    over = calibration.calibration_report(*synthetic(overconfidence=0.2))
    assert over.ece == pytest.approx(0.2, abs=0.01)
    for report in (calibrated, over):
        assert report.mce >= report.ece


def test_nll_and_brier_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.25, 0.45]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    report = calibration.calibration_report(probs.log(), labels)
    assert report.nll == pytest.approx(-(math.log(0.7) + math.log(0.25)) / 2)
    brier = ((0.3 ** 2 + 0.2 ** 2 + 0.1 ** 2) + (0.3 ** 2 + 0.75 ** 2 + 0.45 ** 2)) / 2
    assert report.brier == pytest.approx(brier)
    assert report.accuracy == 0.5
    # Bins: 0.7 falls in (0.667, 0.733], 0.45 in (0.4, 0.467]; each bin has one prediction.
    bins = calibration.reliability_bins(probs.log(), labels)
    assert sum(bins.counts) == 2 and bins.counts[10] == 1 and bins.counts[6] == 1
    assert report.ece == pytest.approx((abs(1 - 0.7) + abs(0 - 0.45)) / 2)
    assert report.mce == pytest.approx(0.45)


def test_an_mce_from_a_nearly_empty_bin_says_so():
    """1,000 right predictions of confidence 0.93 and 3 wrong ones of confidence 0.37: the
    MCE (0.37) comes from a bin of 3 predictions, and the report line says it is chance; with
    300 such predictions the same gap is a finding and nothing is added."""
    def report(unsure: int):
        logits = torch.cat([torch.tensor([[4.0, 0, 0, 0, 0]]).repeat(1000, 1),
                            torch.tensor([[1.5, 1.5, 0, 0, 0]]).repeat(unsure, 1)])
        labels = torch.cat([torch.zeros(1000, dtype=torch.long),
                            torch.full((unsure,), 2, dtype=torch.long)])
        return calibration.calibration_report(logits, labels)

    few, many = report(3), report(300)
    assert few.mce_count == 3 and few.mce == pytest.approx(0.3746, abs=1e-4)
    assert "MCE 0.3746 (from a bin of 3 predictions: chance, not calibration)" in str(few)
    assert many.mce_count == 300 and "from a bin" not in str(many)


def test_temperature_scaling_recovers_the_temperature_and_lowers_the_nll():
    logits, labels = synthetic(50_000)
    sharpened = logits * 3
    temperature = calibration.fit_temperature(sharpened, labels)
    assert temperature == pytest.approx(3, rel=0.05)
    before = calibration.calibration_report(sharpened, labels)
    after = calibration.calibration_report(sharpened, labels, temperature)
    assert after.nll < before.nll and after.ece < before.ece


def test_reliability_diagram_and_training_curves_are_real_pngs(tmp_path):
    logits, labels = synthetic(5000, overconfidence=0.1)
    panels = {"uncalibrated": calibration.reliability_bins(logits, labels),
              "T = 2": calibration.reliability_bins(logits / 2, labels)}
    path = plots.reliability_diagram(panels, tmp_path / "reliability.png", "synthetic")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 400
    metrics = tmp_path / "run"
    metrics.mkdir()
    (metrics / "metrics.jsonl").write_text(
        '{"epoch": 0, "train_loss": 1.5, "train_acc": 30.0, "val_acc": 28.0}\n'
        '{"epoch": 1, "train_loss": 1.2, "train_acc": 45.0}\n')
    assert plots.main(["curves", str(metrics), "--out", str(tmp_path / "curves.png")]) == 0
    with Image.open(tmp_path / "curves.png") as im:
        assert im.format == "PNG"


def test_plotting_without_matplotlib_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    with pytest.raises(UserError, match="plotting needs matplotlib: pip install matplotlib"):
        plots.require_matplotlib()
