"""The training and evaluation loops. They yield per-task results; progress bars, logs and
checkpoints wrap them from outside (train.py, test.py)."""
from __future__ import annotations

import math
from typing import Iterator

import torch

from cli.errors import UserError
from data.episodes import EpisodeSampler
from methods.meta_learner import MetaLearner, TaskResult
from runtime.distributed import World

ALONE = World()  # a plain single-process run


def updates_per_epoch(n_episode: int, n_task: int) -> int:
    """Meta-updates in an epoch of ``n_episode`` episodes; the reference also dropped the
    remainder (it computed those tasks and never used their gradients; here they are skipped)."""
    return n_episode // n_task


def train_epoch(model: MetaLearner, compute, optimizer: torch.optim.Optimizer,
                sampler: EpisodeSampler, epoch: int, n_episode: int, n_task: int,
                world: World = ALONE) -> Iterator[list[TaskResult]]:
    """One epoch of meta-training: ``n_episode // n_task`` updates of ``n_task`` tasks each;
    yields the results of all the tasks of each update.

    Episode ``epoch * n_episode + k`` is the k-th task of the epoch, so the stream of tasks is
    fixed by the seed alone and a resumed run continues it exactly. Under torchrun each rank
    computes its share of the tasks and the gradients are summed before the step. ``compute``
    (:class:`runtime.setup.Compute`) says whether the tasks go through the method together
    and in what arithmetic.
    """
    model.train()
    parameters = list(model.parameters())
    tasks = world.share(n_task)
    # The loop engine gets one task per call, so that each task's gradient enters the float64
    # sum on its own; the batched engine takes the rank's whole share in one call.
    calls = [tasks] if compute.batched else [range(t, t + 1) for t in tasks]
    for update in range(updates_per_epoch(n_episode, n_task)):
        first = epoch * n_episode + update * n_task
        optimizer.zero_grad(set_to_none=True)
        meta = MetaGradient(parameters)
        results = []
        for call in calls:
            with compute.arithmetic():
                results += model.accumulate_meta_gradient(
                    (sampler.episode(first + t) for t in call), batched=compute.batched)
            meta.add_grads()
        meta.present, results = world.sum_meta_gradient(meta.sums, meta.present, results,
                                                        n_task)
        # Every rank has the same sums and results here, so all stop together.
        problem = non_finite_loss(results) or meta.non_finite()
        if problem is None:
            meta.write_grads()
            optimizer.step()
            problem = non_finite_weights(parameters)
        if problem is not None:
            raise Diverged(f"at epoch {epoch}, meta-update {update}", problem)
        yield results


class Diverged(Exception):
    """Training produced a non-finite loss, meta-gradient, weight or validation logit; the
    update that did is not taken (or, for weights and logits, nothing after it is saved)."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")


def non_finite_loss(results: list[TaskResult]) -> str | None:
    bad = [r.loss for r in results if not math.isfinite(r.loss)]
    return (f"the training loss is {bad[0]} in {len(bad)} of {len(results)} tasks"
            if bad else None)


def non_finite_weights(parameters: list[torch.nn.Parameter]) -> str | None:
    """One reduction and one device-to-host sync per update: a float64 sum of float32 values
    is finite exactly when every value is."""
    total = torch.stack([p.detach().sum(dtype=torch.float64) for p in parameters]).sum()
    return None if torch.isfinite(total) else "a weight became non-finite after the step"


class MetaGradient:
    """The running sum of the tasks' meta-gradients, kept in float64 beside the parameters.

    Rounded once to the parameters' dtype at the end, a float64 sum of float32 task gradients
    does not depend (to float32 precision) on the order of the tasks, nor on how they are split
    across processes, so N ranks take the very step one process takes. A float32 running sum
    differs in the last bits, and Adam turns last-bit differences of near-zero gradients (the
    conv biases before BatchNorm have exactly zero gradient in exact arithmetic) into steps of
    the full learning rate.
    """

    def __init__(self, parameters: list[torch.nn.Parameter]):
        self.parameters = parameters
        self.sums = [torch.zeros_like(p, dtype=torch.float64) for p in parameters]
        self.present = [False] * len(parameters)

    def add_grads(self) -> None:
        """Move the parameters' ``.grad`` into the sum (leaving them empty for the next task)."""
        for i, p in enumerate(self.parameters):
            if p.grad is not None:
                self.sums[i].add_(p.grad)
                self.present[i] = True
                p.grad = None

    def non_finite(self) -> str | None:
        """Whether a task's gradient held inf or NaN (then so does its float64 sum)."""
        total = torch.stack([s.sum() for s in self.sums]).sum()
        return None if torch.isfinite(total) else "the meta-gradient is not finite"

    def write_grads(self) -> None:
        """Set ``.grad`` to the sum, in the parameters' dtype; None where no task gave one."""
        for p, total, present in zip(self.parameters, self.sums, self.present):
            p.grad = total.to(p.dtype) if present else None


def evaluate(model: MetaLearner, compute, sampler: EpisodeSampler, n_episode: int,
             batch_size: int = 1, world: World = ALONE) -> Iterator[TaskResult]:
    """This rank's share of episodes 0..n_episode-1 of ``sampler`` (all of them in a single
    process): the same tasks at every call. The batched engine evaluates ``batch_size``
    episodes at a time. :meth:`World.gather_results` puts the shares together."""
    model.eval()
    mine = world.share(n_episode)
    step = batch_size if compute.batched else 1
    kept = QueryBlock(len(mine))
    for first in range(mine.start, mine.stop, step):
        indices = range(first, min(first + step, mine.stop))
        with compute.arithmetic():
            results = model.evaluate_tasks([sampler.episode(i) for i in indices],
                                           batched=compute.batched)
        yield from map(kept.hold, results)


class QueryBlock:
    """The query logits and labels of a pass's episodes, in one block allocated at its first.

    Each episode's own logits tensor (1.5 KB) would outlive the episode in the heap, among the
    episode's freed activations (17 MB each for 84-pixel photographs), where malloc keeps freed
    memory (runtime/allocator.py): the next episode's activations no longer fit in the split
    holes, and the heap grew by up to an activation per episode. test.py on CUB-100
    photographs held 7.6 to 16 GB where its tensors took 85 MB (docs/performance.md); copied
    into one block, only the block stays."""

    def __init__(self, n_episode: int):
        self.n_episode = n_episode
        self.count = 0
        self.logits = self.labels = None

    def hold(self, result: TaskResult) -> TaskResult:
        if self.logits is None:
            self.logits = result.logits.new_empty((self.n_episode, *result.logits.shape))
            self.labels = result.labels.new_empty((self.n_episode, *result.labels.shape))
        self.logits[self.count], self.labels[self.count] = result.logits, result.labels
        result.logits, result.labels = self.logits[self.count], self.labels[self.count]
        self.count += 1
        return result


def non_finite_logits(results: list[TaskResult]) -> str | None:
    """Whether evaluated episodes have non-finite logits: the argmax of NaNs is class 0, which
    would read as chance accuracy instead of a broken model, so they are not scored."""
    bad = [i for i, r in enumerate(results)
           if not (math.isfinite(r.loss) and bool(torch.isfinite(r.logits).all()))]
    return (f"the model's logits are not finite in {len(bad)} of {len(results)} episodes "
            f"(the first is episode {bad[0]})" if bad else None)


def require_finite(results: list[TaskResult], what: str) -> None:
    problem = non_finite_logits(results)
    if problem:
        raise UserError(f"{what}: {problem}: its weights diverged or overflowed in training, "
                        "so no accuracy is reported")
