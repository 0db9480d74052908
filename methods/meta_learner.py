"""What every method of the MAML family shares: the model layout (backbone + linear
classifier), the functional forward over a parameter dict, the episode loss, accuracy, the
meta-batch gradient and evaluation.

A method subclasses :class:`MetaLearner` (the reference's ``MetaTemplate``) and implements
:meth:`adapted_query_logits`, the one thing that differs between MAML, HyperMAML and
BayesHMAML: how the support set turns the universal weights into the query set's logits, and
:meth:`from_options`, how the options build it (docs/contributing.md lists the other hooks).

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

from cli.errors import UserError
from data.episodes import Episode

Params = dict[str, torch.Tensor]


@dataclass
class TaskResult:
    loss: float
    correct: int
    total: int
    # Query logits and labels, kept by evaluation for the calibration metrics.
    logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / self.total


class MetaLearner(nn.Module):
    """Backbone + linear classifier with a functional forward over a parameter dict."""

    def __init__(self, backbone: nn.Module, n_way: int, classifier_depth: int = 1,
                 classifier_hidden: int | None = None):
        super().__init__()
        self.feature = backbone
        self.classifier = make_classifier(backbone.feature_dim, n_way, classifier_depth,
                                          classifier_hidden)
        self.n_way = n_way

    # --- functional forward -------------------------------------------------------------------
    def universal_params(self) -> Params:
        """The meta-learned weights, by name; adaptation returns new dicts, never edits these."""
        return dict(self.named_parameters())

    def features(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """Backbone features of one set of images under ``params``."""
        return functional_call(self.feature, _strip("feature.", params), (x,))

    def classify(self, features: torch.Tensor, params: Params) -> torch.Tensor:
        return functional_call(self.classifier, _strip("classifier.", params), (features,))

    def task_features(self, x: torch.Tensor, stacked: Params | None = None) -> torch.Tensor:
        """Features ``[T, n, D]`` of T tasks' sets ``x [T, n, ...]`` under per-task weights
        ``stacked[name] [T, *shape]``, or (None) the universal weights shared by every task."""
        return self.feature.forward_tasks(
            x, None if stacked is None else _strip("feature.", stacked))

    def task_logits(self, x: torch.Tensor, stacked: Params, features: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """Logits ``[T, n, n_way]`` of T tasks' sets ``x [T, n, ...]`` under per-task weights
        ``stacked[name] [T, *shape]`` (or of given per-task ``features [T, n, D]``)."""
        h = self.task_features(x, stacked) if features is None else features
        for i, layer in enumerate(self.classifier):
            if isinstance(layer, nn.Linear):
                weight, bias = stacked[f"classifier.{i}.weight"], stacked[f"classifier.{i}.bias"]
                h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
            else:
                h = layer(h)
        return h

    def forward(self, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        params = self.universal_params() if params is None else params
        return self.classify(self.features(x, params), params)

    # Whether accumulate_meta_gradient has a batched engine (one backbone pass for all tasks).
    supports_batched_engine = False
    # Whether a test draws classifiers from a posterior over the adapted weights
    # (--hm_weight_set_num_test), so that predict.py can report their spread.
    samples_classifiers = False
    # Whether a CPU runs this method faster with channels_last activations (measured with
    # bench/throughput.py --memory_format contiguous,channels_last: the hypernetwork methods
    # are; MAML's double backward through the convolutions is slower in that layout).
    prefers_channels_last_on_cpu = True

    @classmethod
    def from_options(cls, opts, backbone) -> "MetaLearner":
        """The method for ``opts`` (resolved options) on ``backbone``."""
        raise NotImplementedError(f"{cls.__name__} must define from_options")

    @classmethod
    def adapt_more_at_test(cls, opts, steps: int) -> None:
        """``--adaptation``: change ``opts`` so that the test adapts ``steps`` more steps."""
        raise UserError(f"--adaptation: {cls.__name__} has no test-time adaptation")

    @classmethod
    def own_options(cls) -> set[str]:
        """The options of the method family that this method reads (the other methods'
        options are ignored by it)."""
        return set()

    @classmethod
    def inner_loop(cls, opts) -> str | None:
        """The inner loop, as train.py's start line names it; None for a method with none."""
        return None

    @classmethod
    def training_notes(cls, opts, total_epochs: int) -> list[str]:
        """Things a user starting this training should know (printed at the start)."""
        return []

    @classmethod
    def check_options(cls, opts) -> None:
        """Refuse option combinations this method cannot run, before any work starts."""

    @classmethod
    def fixed_shots(cls, opts) -> int | None:
        """The support images per class a model of ``opts`` must be given, or None where any
        number works (the inner loop takes whatever support set it gets)."""
        return None

    def set_epoch(self, epoch: int | None, total_epochs: int | None = None) -> None:
        """Tell a method with an epoch-dependent schedule where training is, out of how many
        epochs (None: not training, evaluate as at test time)."""

    def schedule_state(self) -> dict:
        """The schedule values of the current epoch, for the progress bar and metrics log."""
        return {}

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

    def accumulate_meta_gradient(self, episodes: Iterable[Episode], batched: bool = False
                                 ) -> list[TaskResult]:
        """Add d(sum of query losses)/d(universal weights) into ``.grad``, task by task (a
        method with a batched engine takes the tasks together where ``batched``)."""
        results = []
        for episode in episodes:
            loss, logits = self.task_loss(episode, training=True)
            loss.backward()
            results.append(task_result(loss, logits, episode.query_y))
        return results

    def evaluate_task(self, episode: Episode) -> TaskResult:
        """Adapt to the support set and score the query set, building no meta-graph."""
        loss, logits = self.task_loss(episode, training=False)
        return task_result(loss, logits, episode.query_y, keep_logits=True)

    def evaluate_tasks(self, episodes: list[Episode], batched: bool = False
                       ) -> list[TaskResult]:
        """:meth:`evaluate_task` of several episodes; the batched engine (``batched``, where the
        method has one) shares backbone calls."""
        return [self.evaluate_task(episode) for episode in episodes]


def make_classifier(feature_dim: int, n_way: int, depth: int = 1,
                    hidden: int | None = None) -> nn.Sequential:
    """The classifier: ``depth`` linear layers (ReLU between), biases initialised to 0."""
    widths = [feature_dim] + [hidden] * (depth - 1) + [n_way]
    layers: list[nn.Module] = []
    for i, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
        if i:
            layers.append(nn.ReLU())
        linear = nn.Linear(width_in, width_out)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
    return nn.Sequential(*layers)


def _strip(prefix: str, params: Params) -> Params:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def task_result(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                keep_logits: bool = False) -> TaskResult:
    correct = int((logits.argmax(dim=1) == labels).sum())
    result = TaskResult(loss=float(loss.detach()), correct=correct, total=int(labels.numel()))
    if keep_logits:
        result.logits, result.labels = logits.detach().float().cpu(), labels.cpu()
    return result
