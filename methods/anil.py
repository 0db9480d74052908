"""ANIL: Almost No Inner Loop (Raghu, Raghu, Bengio, Vinyals, "Rapid Learning or Feature Reuse?
Towards Understanding the Effectiveness of MAML", ICLR 2020, arXiv 1909.09157).

MAML's inner loop on the classifier (the head) alone: the backbone is meta-learned by the outer
loop only, and a task's support features are computed once. It is MAML with
``--maml_adapt_classifier`` fixed on, a method of its own so that it is named as the paper
names it.
"""
from __future__ import annotations

from methods.maml import MAML


class ANIL(MAML):
    def __init__(self, backbone, n_way: int, inner_steps: int, inner_lr: float,
                 **classifier_shape):
        super().__init__(backbone, n_way, inner_steps, inner_lr, adapt_classifier_only=True,
                         **classifier_shape)

    @classmethod
    def own_options(cls) -> set[str]:
        return {"task_update_num", "train_lr"}

    @classmethod
    def from_options(cls, opts, backbone) -> "ANIL":
        return cls(backbone, opts.train_n_way, inner_steps=opts.inner_steps,
                   inner_lr=opts.inner_lr)
