"""BayesHMAML: HyperMAML with a Gaussian over the classifier update (Borycki, Kubacki,
Przewięźlikowski, Kuśmierczyk, Tabor, Spurek, "Hypernetwork approach to Bayesian MAML",
arXiv 2210.02796).

The hypernetwork's trunk gets a second head, the log-variance of every classifier weight and
bias. The task's classifier is N(mu, exp(logvar)) with mu = W - delta; predictions average the
logits of ``hm_weight_set_num_train`` reparameterised samples in training and
``hm_weight_set_num_test`` at validation and test (0: the mean alone). The loss adds
``hm_kl_w * kl_scale`` times KL(N(mu, exp(logvar)) || N(0, I)), summed over all
classifier parameters, with kl_scale growing geometrically from ``--kl_scale`` to
``--kl_stop_val`` over the run. Only ``adapted_logits`` and ``penalty`` differ from HyperMAML; the
warm-up mixes the mean exactly as HyperMAML mixes its update.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from cli.errors import UserError
from methods.hypermaml import AdaptedClassifier, HyperMAML, HyperSettings
from methods.options import option


@dataclass
class BayesOptions:
    """BayesHMAML's own options, declared once: config.Options puts them on the command line,
    :class:`BayesSettings` reads them."""

    # --- BayesHMAML -----------------------------------------------------------------------------
    hm_weight_set_num_train: int = option(1, "sampled classifiers whose logits are averaged in "
                                          "training", "model")
    hm_weight_set_num_test: int = option(20, "sampled classifiers at validation and test (0: use "
                                         "the mean)", "inference")
    kl_scale: float = option(1e-24, "KL weight at the first epoch", "model")
    kl_stop_val: float = option(1e-3, "KL weight reached at the end of the run (geometric growth)",
                                "model")
    hm_kl_w: float = option(1.0, "constant factor on the KL term (the loss adds hm_kl_w x "
                            "kl_scale x KL)", "model")


@dataclass
class BayesSettings(BayesOptions):
    """BayesHMAML's options as the method uses them: their checks and the KL schedule."""

    @classmethod
    def from_options(cls, opts) -> "BayesSettings":
        return cls(**{f.name: getattr(opts, f.name) for f in fields(cls)})

    def check(self) -> None:
        if self.hm_weight_set_num_train < 1:
            raise UserError(f"--hm_weight_set_num_train must be at least 1, got "
                            f"{self.hm_weight_set_num_train}")
        if self.hm_weight_set_num_test < 0:
            raise UserError(f"--hm_weight_set_num_test must be >= 0 (0: use the mean), got "
                            f"{self.hm_weight_set_num_test}")
        if not 0 < self.kl_scale <= self.kl_stop_val:
            raise UserError(f"--kl_stop_val {self.kl_stop_val} must be at least --kl_scale "
                            f"{self.kl_scale} (> 0): the KL weight grows from one to the other")
        if self.hm_kl_w < 0:
            raise UserError(f"--hm_kl_w must be >= 0, got {self.hm_kl_w}")

    def kl_weight(self, epoch: int | None, total_epochs: int | None) -> float:
        """kl_scale * (kl_stop_val / kl_scale) ** (epoch / total_epochs): kl_scale at the first
        epoch, multiplied by the same factor after each, kl_stop_val after the last."""
        if epoch is None or not total_epochs:
            return self.kl_stop_val
        return self.kl_scale * (self.kl_stop_val / self.kl_scale) ** (epoch / total_epochs)


def gaussian_kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over all elements."""
    return -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp())


class BayesHMAML(HyperMAML):
    heads = ("delta", "logvar")
    samples_classifiers = True

    def __init__(self, backbone, n_way: int, n_shot: int, inner_steps: int, inner_lr: float,
                 settings: HyperSettings, bayes: BayesSettings):
        bayes.check()
        if settings.hm_update_operator != "minus":
            raise UserError("bayes_hmaml always adapts the mean as W - delta: leave "
                            "--hm_update_operator at minus")
        super().__init__(backbone, n_way, n_shot, inner_steps, inner_lr, settings)
        self.bayes = bayes
        self.total_epochs: int | None = None

    @classmethod
    def own_options(cls) -> set[str]:
        return super().own_options() | {f.name for f in fields(BayesSettings)}

    @classmethod
    def check_options(cls, opts) -> None:
        super().check_options(opts)
        BayesSettings.from_options(opts).check()

    @classmethod
    def from_options(cls, opts, backbone) -> "BayesHMAML":
        return cls(backbone, opts.train_n_way, opts.n_shot, opts.inner_steps, opts.inner_lr,
                   HyperSettings.from_options(opts), BayesSettings.from_options(opts))

    def set_epoch(self, epoch: int | None, total_epochs: int | None = None) -> None:
        super().set_epoch(epoch, total_epochs)
        self.total_epochs = total_epochs

    def schedule_state(self) -> dict:
        return {**super().schedule_state(),
                "kl_scale": self.bayes.kl_weight(self.epoch, self.total_epochs)}

    def adapted_logits(self, features: torch.Tensor, adapted: AdaptedClassifier, training: bool,
                noise: torch.Generator) -> torch.Tensor:
        """Logits averaged over sampled classifiers (the mean's logits with 0 samples, or
        while the warm-up is pure MAML and there is no variance yet)."""
        samples = (self.bayes.hm_weight_set_num_train if training
                   else self.bayes.hm_weight_set_num_test)
        if samples == 0 or adapted.logvar is None:
            return self.classify(features, adapted.params)
        total = 0.0
        for _ in range(samples):
            sample = {name: mean + torch.exp(0.5 * adapted.logvar[name])
                      * torch.randn(mean.shape, generator=noise, dtype=mean.dtype,
                                    device=mean.device)
                      for name, mean in adapted.params.items()}
            total = total + self.classify(features, sample)
        return total / samples

    def penalty(self, adapted: AdaptedClassifier) -> torch.Tensor | float:
        penalty = super().penalty(adapted)
        if adapted.logvar is None:
            return penalty
        kl = sum(gaussian_kl_to_standard_normal(adapted.params[n], adapted.logvar[n])
                 for n in adapted.params)
        weight = self.bayes.hm_kl_w * self.bayes.kl_weight(self.epoch, self.total_epochs)
        return penalty + weight * kl
