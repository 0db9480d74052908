"""Meta-SGD (Li, Zhou, Chen, Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning",
arXiv 1707.09835, 2017).

MAML whose inner step size is meta-learned too, one per weight: every adapted parameter has a
tensor of rates of its shape (``inner_lrs``, initialised to ``--train_lr``), and an inner step
is ``w - rates * grad``. The rates are meta-parameters like the weights (the outer loop's
gradient reaches them through the inner steps) and are never adapted themselves.
"""
from __future__ import annotations

import torch
from torch import nn

from methods.maml import MAML
from methods.meta_learner import Params

RATES = "inner_lrs."


class MetaSGD(MAML):
    @classmethod
    def inner_loop(cls, opts) -> str | None:
        steps = opts.inner_steps
        return (f"inner loop {steps} step{'' if steps == 1 else 's'} of learned per-weight "
                f"rates, from {opts.inner_lr}")

    def __init__(self, backbone, n_way: int, inner_steps: int, inner_lr: float,
                 adapt_classifier_only: bool = False, **classifier_shape):
        super().__init__(backbone, n_way, inner_steps, inner_lr, adapt_classifier_only,
                         **classifier_shape)
        adapted = self.adapted_names(dict(self.named_parameters()))
        self.inner_lrs = nn.ParameterDict({
            _key(name): nn.Parameter(torch.full_like(self.get_parameter(name), inner_lr))
            for name in adapted})

    def adapted_names(self, params: Params) -> list[str]:
        """MAML's (all weights, or the classifier's), never the rates."""
        return [n for n in super().adapted_names(params) if not n.startswith(RATES)]

    def step_sizes(self, params: Params) -> Params:
        """Each adapted weight's rates, from ``params`` (the universal ones in training, so
        that the meta-gradient reaches them; per-task copies in the batched engine)."""
        return {name: params[RATES + _key(name)] for name in self.adapted_names(params)}


def _key(name: str) -> str:
    """A parameter's name as a key of the rates (a ParameterDict key holds no dot)."""
    return name.replace(".", "_")
