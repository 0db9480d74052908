"""What every method of the MAML family shares: the model layout (backbone + linear
classifier), the functional forward over a parameter dict, the episode loss, accuracy, the
meta-batch gradient and evaluation.

A method subclasses :class:`MetaTemplate` and implements :meth:`adapted_query_logits`, the
one thing that differs between MAML, HyperMAML and BayesHMAML: how the support set turns the
universal weights into the query set's logits.

The meta-gradient is accumulated task by task (``backward`` after each task), which gives the
gradient of the SUM of the tasks' query losses, as the reference's single ``backward`` does,
while holding only one task's graph at a time. The tasks of a meta-batch are independent, so
they can be split across processes and the gradients summed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from data.episodes import Episode

Params = dict[str, torch.Tensor]


@dataclass
class TaskResult:
    loss: float
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / self.total


class MetaTemplate(nn.Module):
    """Backbone + linear classifier with a functional forward over a parameter dict."""

    def __init__(self, backbone: nn.Module, n_way: int):
        super().__init__()
        self.feature = backbone
        self.classifier = nn.Linear(backbone.feature_dim, n_way)
        nn.init.zeros_(self.classifier.bias)
        self.n_way = n_way

    # --- functional forward -------------------------------------------------------------------
    def universal_params(self) -> Params:
        """The meta-learned weights, by name; adaptation returns new dicts, never edits these."""
        return dict(self.named_parameters())

    def features(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        backbone = {k[len("feature."):]: v for k, v in params.items() if k.startswith("feature.")}
        return functional_call(self.feature, backbone, (x,))

    @staticmethod
    def classify(features: torch.Tensor, params: Params) -> torch.Tensor:
        return F.linear(features, params["classifier.weight"], params["classifier.bias"])

    def forward(self, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        params = self.universal_params() if params is None else params
        return self.classify(self.features(x, params), params)

    # --- what a method defines ------------------------------------------------------------------
    def adapted_query_logits(self, episode: Episode, training: bool) -> torch.Tensor:
        """Logits of the query set after adapting to the support set.

        ``training`` says whether the result will be differentiated w.r.t. the universal
        weights (meta-training) or only evaluated.
        """
        raise NotImplementedError

    # --- shared episode code ----------------------------------------------------------------------
    def task_loss(self, episode: Episode, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.adapted_query_logits(episode, training)
        loss = F.cross_entropy(logits, episode.query_y)
        return loss, logits

    def accumulate_meta_gradient(self, episodes: Iterable[Episode]) -> list[TaskResult]:
        """Add d(sum of query losses)/d(universal weights) into ``.grad``, task by task."""
        results = []
        for episode in episodes:
            loss, logits = self.task_loss(episode, training=True)
            loss.backward()
            results.append(_result(loss, logits, episode.query_y))
        return results

    def evaluate(self, episode: Episode) -> TaskResult:
        """Adapt to the support set and score the query set, building no meta-graph."""
        loss, logits = self.task_loss(episode, training=False)
        return _result(loss, logits, episode.query_y)


def _result(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> TaskResult:
    correct = int((logits.argmax(dim=1) == labels).sum())
    return TaskResult(loss=float(loss.detach()), correct=correct, total=int(labels.numel()))
