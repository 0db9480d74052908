"""MAML: Model-Agnostic Meta-Learning (Finn, Abbeel, Levine, ICML 2017, arXiv 1703.03400).

Per task, the universal weights take ``inner_steps`` gradient steps of size ``inner_lr`` on the
support loss; the adapted weights classify the query set. Second order differentiates through
those steps; first order (``maml_approx``) treats each step's gradient as a constant, so the
meta-gradient is the query gradient at the adapted weights.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from methods.inner_loop import gradient_steps
from methods.meta_learner import Episode, MetaLearner, Params, TaskResult, task_result


class MAML(MetaLearner):
    first_order = False
    supports_batched_engine = True
    prefers_channels_last_on_cpu = False

    def __init__(self, backbone, n_way: int, inner_steps: int, inner_lr: float,
                 adapt_classifier_only: bool = False, **classifier_shape):
        super().__init__(backbone, n_way, **classifier_shape)
        self.inner_steps = inner_steps
        self.inner_lr = inner_lr
        self.adapt_classifier_only = adapt_classifier_only

    @classmethod
    def own_options(cls) -> set[str]:
        return {"task_update_num", "train_lr", "maml_adapt_classifier"}

    @classmethod
    def inner_loop(cls, opts) -> str | None:
        steps = opts.inner_steps
        return f"inner loop {steps} step{'' if steps == 1 else 's'} of lr {opts.inner_lr}"

    @classmethod
    def adapt_more_at_test(cls, opts, steps: int) -> None:
        """``--adaptation``: ``steps`` inner steps at test time (the reference's rule)."""
        opts.task_update_num = steps

    @classmethod
    def from_options(cls, opts, backbone) -> "MAML":
        return cls(backbone, opts.train_n_way, inner_steps=opts.inner_steps,
                   inner_lr=opts.inner_lr, adapt_classifier_only=opts.maml_adapt_classifier)

    def adapt(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor,
              create_graph: bool) -> Params:
        """``inner_steps`` steps of gradient descent on the support loss; returns a new dict.

        This one inner loop serves meta-training, validation and test. With
        ``create_graph`` the steps stay differentiable (second-order MAML).
        """
        if self.adapt_classifier_only:
            # A fixed backbone gives the same support features at every step: compute them once.
            features = self.features(support_x, params)
            support_loss = lambda fast: F.cross_entropy(self.classify(features, fast), support_y)
        else:
            support_loss = lambda fast: F.cross_entropy(self(support_x, fast), support_y)
        return gradient_steps(support_loss, params, self.adapted_names(params),
                              self.inner_steps, self.step_sizes(params), create_graph)

    def adapted_names(self, params: Params) -> list[str]:
        """The parameters the inner loop adapts: all, or the classifier's."""
        if self.adapt_classifier_only:
            return [n for n in params if n.startswith("classifier.")]
        return list(params)

    def step_sizes(self, params: Params) -> float | Params:
        """The inner loop's step size: ``inner_lr`` (Meta-SGD learns one per weight)."""
        return self.inner_lr

    def inner_loop_start(self, training: bool) -> Params:
        """The universal weights; for evaluation, detached copies that track only the support
        loss's gradients (no meta-graph to the universal weights)."""
        universal = self.universal_params()
        if training:
            return universal
        return {k: v.detach().requires_grad_() for k, v in universal.items()}

    def accumulate_meta_gradient(self, episodes: Iterable[Episode], batched: bool = False
                                 ) -> list[TaskResult]:
        """The batched engine: all tasks of the meta-batch adapt at once, each with its own
        fast weights, through grouped convolutions (one group per task) and per-task
        BatchNorm statistics. Same losses and gradients as the loop (tested in float64)."""
        if not batched:
            return super().accumulate_meta_gradient(episodes)
        episodes = list(episodes)
        losses, logits = self._batched_query_losses(episodes, training=True)
        losses.sum().backward()
        return [task_result(loss, task_logits, episode.query_y)
                for loss, task_logits, episode in zip(losses, logits, episodes)]

    def evaluate_tasks(self, episodes: list[Episode], batched: bool = False
                       ) -> list[TaskResult]:
        if not batched:
            return super().evaluate_tasks(episodes)
        losses, logits = self._batched_query_losses(episodes, training=False)
        return [task_result(loss, task_logits, episode.query_y, keep_logits=True)
                for loss, task_logits, episode in zip(losses, logits, episodes)]

    def _batched_query_losses(self, episodes: list[Episode], training: bool
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Query losses ``[T]`` and logits ``[T, n_query, n_way]`` of T tasks adapted at once."""
        tasks = len(episodes)
        support_x = torch.stack([e.support_x for e in episodes])
        support_y = torch.stack([e.support_y for e in episodes])
        query_x = torch.stack([e.query_x for e in episodes])
        query_y = torch.stack([e.query_y for e in episodes])
        # Every task starts from the universal weights; gradients through the expansion sum
        # over the tasks, as the sum of the task losses asks.
        stacked = {n: p.expand(tasks, *p.shape)
                   for n, p in self.inner_loop_start(training).items()}
        with torch.enable_grad():
            features = (self.task_features(support_x, stacked) if self.adapt_classifier_only
                        else None)

            def support_loss(fast: Params) -> torch.Tensor:
                # Sum over tasks of each task's mean loss: its gradient w.r.t. task t's fast
                # weights is task t's own gradient.
                logits = self.task_logits(support_x, fast, features)
                return F.cross_entropy(logits.flatten(0, 1), support_y.flatten(),
                                       reduction="sum") / support_y.shape[1]

            fast = gradient_steps(support_loss, stacked, self.adapted_names(stacked),
                                  self.inner_steps, self.step_sizes(stacked),
                                  create_graph=training and not self.first_order)
        with torch.set_grad_enabled(training):
            if not training:
                fast = {k: v.detach() for k, v in fast.items()}
            logits = self.task_logits(query_x, fast)
            losses = F.cross_entropy(logits.flatten(0, 1), query_y.flatten(),
                                     reduction="none").view(tasks, -1).mean(1)
        return losses, logits

    def adapted_query_logits(self, episode: Episode, training: bool) -> torch.Tensor:
        with torch.enable_grad():
            fast = self.adapt(self.inner_loop_start(training), episode.support_x,
                              episode.support_y, create_graph=training and not self.first_order)
        if not training:
            with torch.no_grad():
                return self(episode.query_x, {k: v.detach() for k, v in fast.items()})
        return self(episode.query_x, fast)


class MAMLApprox(MAML):
    """First-order MAML (``--method maml_approx``)."""
    first_order = True
