"""ProtoNet: Prototypical Networks (Snell, Swersky, Zemel, "Prototypical Networks for Few-shot
Learning", NeurIPS 2017, arXiv 1703.05175).

A class is represented by the mean of its support embeddings (its prototype), and a query's
logit for a class is the negative squared Euclidean distance from its embedding to that
prototype. Nothing is adapted per task: the backbone alone is meta-learned, and the prototypes
take the place of a classifier (the model has none).
"""
from __future__ import annotations

import torch
from torch import nn

from methods.meta_learner import Episode, MetaLearner


class ProtoNet(MetaLearner):
    def __init__(self, backbone, n_way: int):
        super().__init__(backbone, n_way)
        self.classifier = nn.Sequential()  # the prototypes classify: no weights of its own

    @classmethod
    def from_options(cls, opts, backbone) -> "ProtoNet":
        return cls(backbone, opts.train_n_way)

    def adapted_query_logits(self, episode: Episode, training: bool) -> torch.Tensor:
        with torch.set_grad_enabled(training):
            universal = self.universal_params()
            support = self.features(episode.support_x, universal)
            query = self.features(episode.query_x, universal)
            return -squared_distances(query, prototypes(support, episode.support_y, self.n_way))


def prototypes(support: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """``[n_way, D]``: the mean support embedding of each class."""
    sums = torch.zeros(n_way, support.shape[1], dtype=support.dtype, device=support.device)
    sums = sums.index_add(0, labels, support)
    counts = torch.bincount(labels, minlength=n_way).to(support.dtype)
    return sums / counts[:, None]


def squared_distances(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``[n, k]``: the squared Euclidean distance from each row of ``x`` to each centre."""
    return (x[:, None, :] - centres[None, :, :]).pow(2).sum(-1)
