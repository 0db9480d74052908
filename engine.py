"""The training and evaluation loops. They yield per-task results; progress bars, logs and
checkpoints wrap them from outside (train.py, test.py)."""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from data.episodes import EpisodeSampler
from methods.meta_template import MetaTemplate, TaskResult


def updates_per_epoch(n_episode: int, n_task: int) -> int:
    """Meta-updates in an epoch of ``n_episode`` episodes; the reference also dropped the
    remainder (it computed those tasks and never used their gradients; here they are skipped)."""
    return n_episode // n_task


def train_epoch(model: MetaTemplate, optimizer: torch.optim.Optimizer, sampler: EpisodeSampler,
                epoch: int, n_episode: int, n_task: int) -> Iterator[list[TaskResult]]:
    """One epoch of meta-training: ``n_episode // n_task`` updates of ``n_task`` tasks each.

    Episode ``epoch * n_episode + k`` is the k-th task of the epoch, so the stream of tasks is
    fixed by the seed alone and a resumed run continues it exactly.
    """
    model.train()
    for update in range(updates_per_epoch(n_episode, n_task)):
        first = epoch * n_episode + update * n_task
        optimizer.zero_grad(set_to_none=True)
        results = model.accumulate_meta_gradient(
            sampler.episode(first + t) for t in range(n_task))
        optimizer.step()
        yield results


def evaluate(model: MetaTemplate, sampler: EpisodeSampler, n_episode: int,
             batch_size: int = 1) -> Iterator[TaskResult]:
    """Episodes 0..n_episode-1 of ``sampler``: the same tasks at every call. The batched
    engine evaluates ``batch_size`` episodes at a time."""
    model.eval()
    step = batch_size if model.engine == "batched" else 1
    for first in range(0, n_episode, step):
        indices = range(first, min(first + step, n_episode))
        yield from model.evaluate_batch([sampler.episode(i) for i in indices])


def mean_and_ci95(accuracies: list[float]) -> tuple[float, float]:
    """Mean accuracy and the half-width 1.96 * std / sqrt(n) of the reference's reports."""
    values = np.asarray(accuracies, dtype=np.float64)
    return float(values.mean()), float(1.96 * values.std() / math.sqrt(len(values)))
