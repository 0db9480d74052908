"""HyperMAML: a hypernetwork writes the classifier's task update from the support set
(Przewięźlikowski, Przybysz, Tabor, Zięba, Spurek, "HyperMAML: Few-Shot Adaptation of Deep
Models with Hypernetworks", arXiv 2205.15745).

The backbone is not adapted per task. The support embeddings (optionally enhanced with the
universal classifier's softmax and the label) go through a hypernetwork that outputs an
update ``delta`` for every classifier parameter; the adapted classifier ``W - delta`` scores
the query set. With class-batch input one hypernetwork, shared across classes, reads one row
per class (its shots concatenated or averaged) and writes that class's rows of every
classifier layer, so the update is equivariant to the order of the classes.

A MAML warm-up eases training in: for ``hm_maml_warmup_epochs`` the classifier is adapted by
plain gradient steps on the support embeddings (p = 1), then over
``hm_maml_warmup_switch_epochs`` each step mixes ``p * lr * grad + (1 - p) * delta`` with p
falling linearly to 0, after which the hypernetwork alone adapts. With
``hm_maml_update_feature_net`` those gradient steps adapt the backbone too (weighted by p),
so the query features come from the task's adapted backbone. Test always uses the
hypernetwork (p = 0); validation too, unless ``hm_validate_with_warmup`` asks for the
training epoch's update, as the reference validates.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, fields, replace
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from cli.errors import UserError
from data.episodes import Episode
from methods.hypernetwork import ClassWiseHypernetwork, ParameterWiseHypernetwork
from methods.inner_loop import gradient_steps
from methods.meta_learner import MetaLearner, Params, TaskResult, task_result
from methods.options import option

UPDATE_OPERATORS = ("minus", "plus", "multiply")


@dataclass
class HyperOptions:
    """HyperMAML's options (also read by BayesHMAML), declared once: config.Options puts them
    on the command line, :class:`HyperSettings` reads them."""

    # --- HyperMAML ------------------------------------------------------------------------------
    hn_hidden_size: int = option(256, "hypernetwork hidden width", "model")
    hn_head_len: int = option(2, "hypernetwork linear layers", "model")
    hn_tn_depth: int = option(1, "linear layers of the adapted (target) classifier", "model")
    hn_tn_hidden_size: int = option(120, "hidden width of a deeper target classifier (a multiple "
                                    "of n_way with class-batch input)", "model")
    hm_enhance_embeddings: bool = option(False, "append the universal classifier's softmax and the "
                                         "label to each support embedding", "model")
    hm_use_class_batch_input: bool = option(False, "one hypernetwork shared by the classes, "
                                            "reading one row per class", "model")
    hn_sup_aggregation: str = option("concat", "how a class row combines its shots", "model",
                                     choices=("concat", "mean"))
    hm_update_operator: str = option("minus", "adapted weight: W - delta, W + delta or W * delta",
                                     "model", choices=("minus", "plus", "multiply"))
    hm_lambda: float = option(0.0, "weight of the sum of squared updates in the loss", "model")
    hm_detach_feature_net: bool = option(False, "train no backbone: detach all features", "model")
    hm_detach_before_hyper_net: bool = option(False, "no gradient from the hypernetwork input into "
                                              "the backbone", "model")
    hm_support_set_loss: bool = option(False, "train on the support and query losses together",
                                       "model")
    hn_adaptation_strategy: Optional[str] = option(None, "increasing_alpha: scale the update by "
                                                   "alpha, growing hn_alpha_step per epoch to 1",
                                                   "model", choices=("increasing_alpha",))
    hn_alpha_step: float = option(0.0, "alpha increment per epoch with increasing_alpha", "model")
    hm_maml_warmup: bool = option(False, "begin with MAML steps on the classifier, then switch "
                                  "to the hypernetwork", "model")
    hm_maml_warmup_epochs: int = option(100, "epochs of pure MAML warm-up (p = 1)", "model")
    hm_maml_warmup_switch_epochs: int = option(1000, "epochs over which p falls from 1 to 0",
                                               "model")
    hm_maml_update_feature_net: bool = option(False, "during the warm-up the inner loop also "
                                              "adapts the backbone, each step weighted by p",
                                              "model")
    hm_validate_with_warmup: bool = option(False, "validate with the training epoch's update "
                                           "(MAML steps mixed by p during the warm-up and "
                                           "switch), as the reference; default: with the "
                                           "hypernetwork alone, as the final test measures",
                                           "train")
    hm_set_forward_with_adaptation: bool = option(False, "at validation and test, fine-tune a copy "
                                                  "on the support set first", "inference")
    hn_val_epochs: int = option(0, "fine-tuning steps of hm_set_forward_with_adaptation, and "
                                "the test-time steps of --adaptation (-1: 100)", "inference")
    hn_val_lr: float = option(1e-4, "fine-tuning learning rate", "inference")
    hn_val_optim: str = option("adam", "fine-tuning optimiser", "inference",
                               choices=("adam", "sgd"))


@dataclass
class HyperSettings(HyperOptions):
    """HyperMAML's options as the method uses them: their checks and schedules."""

    @classmethod
    def from_options(cls, opts) -> "HyperSettings":
        return cls(**{f.name: getattr(opts, f.name) for f in fields(cls)})

    def check(self, n_way: int) -> None:
        """Refuse combinations that cannot work, each with one clear line."""
        if self.hn_head_len < 1 or self.hn_hidden_size < 1:
            raise UserError("--hn_head_len and --hn_hidden_size must be at least 1")
        if self.hn_tn_depth < 1:
            raise UserError(f"--hn_tn_depth must be at least 1, got {self.hn_tn_depth}")
        if (self.hn_tn_depth > 1 and self.hm_use_class_batch_input
                and (self.hn_tn_hidden_size < 1 or self.hn_tn_hidden_size % n_way)):
            raise UserError(f"--hn_tn_hidden_size {self.hn_tn_hidden_size} must be a positive "
                            f"multiple of n_way {n_way}: with class-batch input each class "
                            "writes an equal share of every hidden layer")
        if self.hn_adaptation_strategy == "increasing_alpha" and self.hn_alpha_step <= 0:
            raise UserError(f"--hn_alpha_step must be positive with increasing_alpha, got "
                            f"{self.hn_alpha_step}")
        if self.hm_maml_warmup and self.hm_update_operator != "minus":
            raise UserError("--hm_maml_warmup mixes gradient steps with the update W - delta, "
                            f"so it needs --hm_update_operator minus, not "
                            f"{self.hm_update_operator}")
        if self.hm_maml_update_feature_net and not self.hm_maml_warmup:
            raise UserError("--hm_maml_update_feature_net adapts the backbone in the warm-up's "
                            "gradient steps: it needs --hm_maml_warmup")
        if self.hm_maml_update_feature_net and self.hm_detach_feature_net:
            raise UserError("--hm_maml_update_feature_net adapts the backbone that "
                            "--hm_detach_feature_net keeps out of training: choose one")
        if self.hm_maml_warmup_epochs < 0 or self.hm_maml_warmup_switch_epochs < 0:
            raise UserError("--hm_maml_warmup_epochs and --hm_maml_warmup_switch_epochs must "
                            "be >= 0")
        if self.hm_lambda < 0:
            raise UserError(f"--hm_lambda must be >= 0, got {self.hm_lambda}")
        if self.hn_val_epochs < 0 or self.hn_val_lr <= 0:
            raise UserError("--hn_val_epochs must be >= 0 (-1 only with test.py --adaptation, "
                            "for 100) and --hn_val_lr positive")

    def training_notes(self, total_epochs: int) -> list[str]:
        """What a user starting a run of ``total_epochs`` epochs should know of its warm-up."""
        if not self.hm_maml_warmup:
            return ["note: no --hm_maml_warmup: the untrained hypernetwork's first updates are "
                    "larger than the classifier's weights (about 4x without class-batch input, "
                    "measured on cross_char; the reference initialises it the same way), so "
                    "the loss starts well above chance; the published commands start with the "
                    "warm-up and use class-batch input and enhanced embeddings"]
        warm, switch = self.hm_maml_warmup_epochs, self.hm_maml_warmup_switch_epochs
        notes = []
        if not self.hm_validate_with_warmup and warm > 0:
            notes.append(f"note: validation uses the hypernetwork alone (as the test does), "
                         f"which the pure warm-up (epochs 0-{warm - 1}) does not train: expect "
                         f"near-chance validation until the switch (epochs {warm}-"
                         f"{warm + switch - 1}) is under way; --hm_validate_with_warmup "
                         "validates with the training update, as the reference")
        if total_epochs <= warm:
            notes.append(f"note: all {total_epochs} epochs are in the pure warm-up "
                         f"(--hm_maml_warmup_epochs {warm}): the hypernetwork, which the test "
                         "uses, is never trained")
        elif total_epochs < warm + switch:
            p = self.warmup_p(total_epochs - 1)
            notes.append(f"note: the run ends inside the switch (p = {p:.2f} at its last epoch, "
                         f"0 only from epoch {warm + switch}): the test uses the hypernetwork "
                         "alone")
        return notes

    def warmup_p(self, epoch: int | None) -> float:
        """Weight p of the gradient step in the warm-up's update; 0 outside training."""
        if epoch is None or not self.hm_maml_warmup:
            return 0.0
        warm, switch = self.hm_maml_warmup_epochs, self.hm_maml_warmup_switch_epochs
        if epoch < warm:
            return 1.0
        if epoch < warm + switch:
            return (switch + warm - epoch) / (switch + 1)
        return 0.0

    def alpha(self, epoch: int | None) -> float:
        """Scale of the hypernetwork's update: with increasing_alpha it grows by hn_alpha_step
        each epoch up to 1 (after training, the final value 1)."""
        if self.hn_adaptation_strategy != "increasing_alpha" or epoch is None:
            return 1.0
        return min(1.0, (epoch + 1) * self.hn_alpha_step)


@dataclass
class AdaptedClassifier:
    """A task's classifier: its parameters (for BayesHMAML the mean), the hypernetwork's
    update (empty while the warm-up is pure MAML), for BayesHMAML the log-variance, and the
    task's backbone weights where the warm-up adapts the backbone (else None: universal)."""
    params: Params
    deltas: Params
    logvar: Params | None = None
    backbone: Params | None = None


class HyperMAML(MetaLearner):
    supports_batched_engine = True
    prefers_channels_last_on_cpu = True  # no double backward through the backbone

    def __init__(self, backbone, n_way: int, n_shot: int, inner_steps: int, inner_lr: float,
                 settings: HyperSettings):
        settings.check(n_way)
        super().__init__(backbone, n_way, classifier_depth=settings.hn_tn_depth,
                         classifier_hidden=settings.hn_tn_hidden_size)
        # The warm-up's gradient steps on the classifier (and, if asked, the backbone).
        self.inner_steps = inner_steps
        self.inner_lr = inner_lr
        self.n_shot = n_shot
        self.settings = settings
        self.epoch: int | None = None
        # (name, shape) of every classifier parameter, in the order the hypernetwork writes.
        self.target_shapes = [(f"classifier.{n}", p.shape)
                              for n, p in self.classifier.named_parameters()]
        self.hypernet = self._make_hypernet(self.embedding_width() * self._rows_per_input())

    @classmethod
    def check_options(cls, opts) -> None:
        HyperSettings.from_options(opts).check(opts.train_n_way)

    @classmethod
    def fixed_shots(cls, opts) -> int | None:
        """The hypernetwork's input rows hold n_shot embeddings per class, except where a
        class row is their mean."""
        if opts.hm_use_class_batch_input and opts.hn_sup_aggregation == "mean":
            return None
        return opts.n_shot

    @classmethod
    def own_options(cls) -> set[str]:
        # The warm-up's gradient steps read the inner-loop options; the classifier is never
        # adapted alone by MAML here, so maml_adapt_classifier is not one of them.
        return ({"task_update_num", "train_lr", "hm_save_delta_params"}
                | {f.name for f in fields(HyperSettings)})

    @classmethod
    def inner_loop(cls, opts) -> str | None:
        """The hypernetwork is the inner loop; gradient steps run in the MAML warm-up only."""
        if not opts.hm_maml_warmup:
            return None
        steps = opts.inner_steps
        return (f"warm-up inner loop {steps} step{'' if steps == 1 else 's'} of lr "
                f"{opts.inner_lr}")

    @classmethod
    def training_notes(cls, opts, total_epochs: int) -> list[str]:
        return HyperSettings.from_options(opts).training_notes(total_epochs)

    @classmethod
    def adapt_more_at_test(cls, opts, steps: int) -> None:
        """``--adaptation``: the hypernetwork methods fine-tune a copy on the support set for
        ``steps`` optimiser steps (their inner loop is the hypernetwork, not gradient steps)."""
        opts.hm_set_forward_with_adaptation, opts.hn_val_epochs = True, steps

    @classmethod
    def from_options(cls, opts, backbone) -> "HyperMAML":
        return cls(backbone, opts.train_n_way, opts.n_shot, opts.inner_steps, opts.inner_lr,
                   HyperSettings.from_options(opts))

    # --- the hypernetwork ---------------------------------------------------------------------
    def embedding_width(self) -> int:
        extra = self.n_way + 1 if self.settings.hm_enhance_embeddings else 0
        return self.feature.feature_dim + extra

    def _rows_per_input(self) -> int:
        """Support embeddings in one hypernetwork input row."""
        if not self.settings.hm_use_class_batch_input:
            return self.n_way * self.n_shot
        return 1 if self.settings.hn_sup_aggregation == "mean" else self.n_shot

    heads: tuple[str, ...] = ("delta",)

    def _make_hypernet(self, width_in: int) -> nn.Module:
        s = self.settings
        if s.hm_use_class_batch_input:
            return ClassWiseHypernetwork(width_in, s.hn_hidden_size, s.hn_head_len, self.heads,
                                         self.target_shapes, self.n_way, self.n_shot,
                                         s.hn_sup_aggregation)
        return ParameterWiseHypernetwork(width_in, s.hn_hidden_size, s.hn_head_len, self.heads,
                                         self.target_shapes)

    def hypernet_input(self, support_features: torch.Tensor, support_y: torch.Tensor,
                       universal: Params) -> torch.Tensor:
        """The hypernetwork's input rows from the (class-major) support embeddings."""
        s = self.settings
        embeddings = support_features.detach() if s.hm_detach_before_hyper_net else support_features
        if s.hm_enhance_embeddings:
            # The universal classifier's view of each shot (no gradient), plus its label.
            with torch.no_grad():
                probs = F.softmax(self.classify(support_features, universal), dim=1)
            embeddings = torch.cat([embeddings, probs, support_y[:, None].to(probs.dtype)], 1)
        return self.hypernet.rows(embeddings)

    def hypernet_outputs(self, rows: torch.Tensor) -> dict[str, Params]:
        """For each head ("delta", and "logvar" for BayesHMAML), a value per classifier
        parameter."""
        return self.hypernet.updates(rows)

    # --- adaptation ---------------------------------------------------------------------------
    def set_epoch(self, epoch: int | None, total_epochs: int | None = None) -> None:
        self.epoch = epoch

    def schedule_state(self) -> dict:
        p = self.settings.warmup_p(self.epoch)
        phase = "maml-warmup" if p == 1 else "switch" if p > 0 else "hypernet"
        state = {"phase": phase, "p": round(p, 6)}
        if self.settings.hn_adaptation_strategy == "increasing_alpha":
            state["alpha"] = self.settings.alpha(self.epoch)
        return state

    def warmup_p(self, training: bool) -> float:
        """p of this update: the epoch's in training (and in validation with
        hm_validate_with_warmup), 0 otherwise; the epoch is None outside training."""
        if training or self.settings.hm_validate_with_warmup:
            return self.settings.warmup_p(self.epoch)
        return 0.0

    def adapts_backbone(self, training: bool) -> bool:
        """Whether this update's gradient steps adapt the backbone (hm_maml_update_feature_net
        during the warm-up and switch)."""
        return self.settings.hm_maml_update_feature_net and self.warmup_p(training) > 0

    def adapted_classifier(self, universal: Params, support_features: torch.Tensor,
                           support_y: torch.Tensor, training: bool,
                           support_x: torch.Tensor | None = None) -> AdaptedClassifier:
        """The task's adapted classifier. ``support_x`` is needed where the warm-up adapts the
        backbone (:meth:`adapts_backbone`): its features are recomputed at every step."""
        s = self.settings
        classifier = {n: v for n, v in universal.items() if n.startswith("classifier.")}
        p = self.warmup_p(training)
        if p == 1:
            outputs = {}
            deltas: Params = {}
        else:
            outputs = self.hypernet_outputs(
                self.hypernet_input(support_features, support_y, universal))
            alpha = s.alpha(self.epoch if training else None)
            deltas = {n: alpha * d for n, d in outputs["delta"].items()}
        if p == 0:
            adapted = {n: _apply(s.hm_update_operator, w, deltas[n]) for n, w in classifier.items()}
            return AdaptedClassifier(adapted, deltas, outputs.get("logvar"))
        # MAML warm-up, gradient at the current fast weights: on the fixed support embeddings,
        # or (hm_maml_update_feature_net) on the backbone too, its features recomputed.
        start = dict(classifier)
        if self.adapts_backbone(training):
            start.update((n, v) for n, v in universal.items() if n.startswith("feature."))
            support_loss = lambda fast: F.cross_entropy(self(support_x, fast), support_y)
        else:
            support_loss = lambda fast: F.cross_entropy(self.classify(support_features, fast),
                                                        support_y)
        if not training:  # validation with the warm-up's update: no graph to the weights
            start = {n: v.detach().requires_grad_() for n, v in start.items()}
        mixed = {n: (1 - p) * d for n, d in deltas.items()} if deltas else None
        with torch.enable_grad():
            fast = gradient_steps(support_loss, start, list(start), self.inner_steps,
                                  self.inner_lr, create_graph=training, grad_weight=p,
                                  constant=mixed)
        if not training:
            fast = {n: v.detach() for n, v in fast.items()}
        backbone = {n: v for n, v in fast.items() if n.startswith("feature.")} or None
        return AdaptedClassifier({n: fast[n] for n in classifier}, deltas, outputs.get("logvar"),
                                 backbone)

    def adapted_logits(self, features: torch.Tensor, adapted: AdaptedClassifier, training: bool,
                noise: torch.Generator) -> torch.Tensor:
        """Logits of ``features`` under the task's classifier (``noise``: the task's own
        random stream, for a method that samples)."""
        return self.classify(features, adapted.params)

    def penalty(self, adapted: AdaptedClassifier) -> torch.Tensor | float:
        """Terms added to the task loss: ``hm_lambda`` times the squared update."""
        if self.settings.hm_lambda > 0 and adapted.deltas:
            return self.settings.hm_lambda * sum(d.pow(2).sum() for d in adapted.deltas.values())
        return 0.0

    def adapted_query_logits(self, episode: Episode, training: bool) -> torch.Tensor:
        """The query logits under the task's adapted classifier (:meth:`task_loss`)."""
        return self.task_loss(episode, training)[1]

    def task_loss(self, episode: Episode, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        universal = self.universal_params()
        with torch.set_grad_enabled(training):
            # Where the warm-up adapts the backbone, the query features come from the task's
            # adapted backbone, computed in loss_from_features.
            query_features = (None if self.adapts_backbone(training)
                              else self.features(episode.query_x, universal))
            return self.loss_from_features(episode, self.features(episode.support_x, universal),
                                           query_features, universal, training)

    def batched_engine_applies(self, training: bool) -> bool:
        """The batched engine shares backbone calls across tasks; not where each task adapts
        its own backbone, nor with test-time fine-tuning (each task tunes its own copy)."""
        s = self.settings
        return (not self.adapts_backbone(training)
                and (training or not (s.hm_set_forward_with_adaptation and s.hn_val_epochs)))

    def accumulate_meta_gradient(self, episodes: Iterable[Episode], batched: bool = False
                                 ) -> list[TaskResult]:
        """The batched engine: the backbone is not adapted per task, so the support sets of
        all tasks go through it in one call, and the query sets in another, each set with its
        own BatchNorm statistics; the cheap per-task classifier work then runs as in the loop.
        Same losses and gradients as the loop (tested in float64)."""
        if not (batched and self.batched_engine_applies(training=True)):
            return super().accumulate_meta_gradient(episodes)
        episodes = list(episodes)
        universal = self.universal_params()
        total, results = 0.0, []
        for episode, support_f, query_f in self._batched_features(episodes):
            loss, logits = self.loss_from_features(episode, support_f, query_f, universal, True)
            total = total + loss
            results.append(task_result(loss, logits, episode.query_y))
        total.backward()
        return results

    def evaluate_tasks(self, episodes: list[Episode], batched: bool = False
                       ) -> list[TaskResult]:
        if not (batched and self.batched_engine_applies(training=False)):
            return super().evaluate_tasks(episodes)
        universal = self.universal_params()
        with torch.no_grad():
            return [task_result(*self.loss_from_features(e, s_f, q_f, universal, False),
                                e.query_y, keep_logits=True)
                    for e, s_f, q_f in self._batched_features(episodes)]

    def _batched_features(self, episodes: list[Episode]):
        """(episode, support features, query features) of every task, from one backbone call
        over all support sets and one over all query sets (BatchNorm statistics per set)."""
        support = self.task_features(torch.stack([e.support_x for e in episodes]))
        query = self.task_features(torch.stack([e.query_x for e in episodes]))
        return zip(episodes, support, query)

    def loss_from_features(self, episode: Episode, support_features: torch.Tensor,
                           query_features: torch.Tensor | None, universal: Params,
                           training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The task's loss and query logits, given its support features and its query
        features (None: from the task's adapted backbone)."""
        s = self.settings
        if s.hm_detach_feature_net:
            support_features = support_features.detach()
        adapted = self.adapted_classifier(universal, support_features, episode.support_y,
                                          training, episode.support_x)
        if query_features is None:
            query_features = self.features(episode.query_x, adapted.backbone)
        if s.hm_detach_feature_net:
            query_features = query_features.detach()
        noise = torch.Generator(query_features.device).manual_seed(episode.seed)
        logits = self.adapted_logits(query_features, adapted, training, noise)
        if training and s.hm_support_set_loss:
            support_logits = self.adapted_logits(support_features, adapted, training, noise)
            scored = torch.cat([support_logits, logits])
            loss = F.cross_entropy(scored, torch.cat([episode.support_y, episode.query_y]))
        else:
            loss = F.cross_entropy(logits, episode.query_y)
        loss = loss + self.penalty(adapted)
        return loss, logits

    def hypernet_update(self, episode: Episode) -> dict[str, Params]:
        """The hypernetwork's raw output for ``episode`` at the current weights, per head
        ("delta", and "logvar" for BayesHMAML), for analysis (``--hm_save_delta_params``)."""
        universal = self.universal_params()
        with torch.no_grad():
            support_features = self.features(episode.support_x, universal)
            return self.hypernet_outputs(
                self.hypernet_input(support_features, episode.support_y, universal))

    def evaluate_task(self, episode: Episode) -> TaskResult:
        """Optionally fine-tune a copy on the support set first (hm_set_forward_with_adaptation)."""
        s = self.settings
        if not (s.hm_set_forward_with_adaptation and s.hn_val_epochs > 0):
            return super().evaluate_task(episode)
        tuned = copy.deepcopy(self)
        tuned.set_epoch(None)
        optimizer_cls = torch.optim.Adam if s.hn_val_optim == "adam" else torch.optim.SGD
        optimizer = optimizer_cls(tuned.parameters(), lr=s.hn_val_lr)
        support_task = replace(episode, query_x=episode.support_x, query_y=episode.support_y)
        for _ in range(s.hn_val_epochs):
            optimizer.zero_grad(set_to_none=True)
            tuned.task_loss(support_task, training=True)[0].backward()
            optimizer.step()
        loss, logits = tuned.task_loss(episode, training=False)
        return task_result(loss, logits, episode.query_y, keep_logits=True)


def _apply(operator: str, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    if operator == "minus":
        return weight - delta
    if operator == "plus":
        return weight + delta
    return weight * delta
