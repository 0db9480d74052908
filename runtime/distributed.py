"""Meta-training and evaluation across processes with torch.distributed (``torchrun``).

The tasks of a meta-batch are independent and the meta-loss is their SUM, so each rank takes
a contiguous share of every meta-batch, accumulates the meta-gradient of its tasks, and one
all-reduce (SUM) of the gradients gives every rank the gradient one process would have
computed over all the tasks; every rank then takes the same optimizer step. Episodes are a
pure function of (seed, split, index), so N ranks see exactly the tasks of a 1-rank run.
Validation and test episodes are shared out the same way and the results gathered in episode
order. Only rank 0 writes files and prints.

A plain ``python train.py`` is a world of one: nothing here touches torch.distributed then.
The set-up is read from the environment ``torchrun`` writes (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT); the backend is ``nccl`` on CUDA and ``gloo`` elsewhere. Every
collective waits at most ``--dist_timeout`` seconds, and a failed one (a rank died or stopped
answering) ends this rank with one clear line instead of a hang.
"""
from __future__ import annotations

import datetime
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from cli.errors import UserError, exit_now
from methods.meta_learner import TaskResult
from runtime.device import resolve_device

T = TypeVar("T")


def run_in_world(opts, body: Callable[[torch.device, "World"], T]) -> T:
    """Resolve ``--device``, join torchrun's processes if there are any, and run
    ``body(device, world)``; the process group is left however the body ends."""
    device = resolve_device(opts.device)
    world = World.from_environment(device, opts.dist_timeout)
    try:
        result = body(world.device(device), world)
        world.barrier()  # no rank tears the group down while another still uses it
        return result
    finally:
        world.close()


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run (a world of one without torchrun)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    timeout_s: float = 0.0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, logs and results, and prints."""
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: torch.device, timeout_s: float) -> "World":
        """Join the process group ``torchrun`` describes in the environment, if any."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size == 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if timeout_s <= 0:
            raise UserError(f"--dist_timeout must be positive, got {timeout_s}")
        if device.type == "mps":
            raise UserError("torchrun with --device mps is not supported (neither gloo nor "
                            "nccl takes Apple GPU tensors); use --device cpu")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        # Before the group exists: torch.distributed.nn's functions take ``group.WORLD`` as a
        # default argument, so imported after (torch._dynamo imports it, and the first
        # optimizer imports torch._dynamo) they would keep the group alive past
        # destroy_process_group. Its gloo threads would then outlive the interpreter, and one
        # releasing a finished collective's tensors during the exit aborts the rank (SIGABRT,
        # 6 of about 125 runs of bench/throughput.py --processes 2 here; a core dump showed it).
        import torch.distributed.nn  # noqa: F401
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as exc:
            raise UserError(f"rank {rank} could not join the {size} processes "
                            f"({backend}): {_first_line(exc)}") from None
        return cls(rank, size, local_rank, timeout_s)

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process on a machine: ``cuda`` means ``cuda:LOCAL_RANK``."""
        if device.type == "cuda" and self.size > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def close(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    # --- who does what --------------------------------------------------------------------------
    def share(self, count: int) -> range:
        """This rank's contiguous block of ``count`` items (tasks or episodes): blocks in rank
        order, the first ``count % size`` ranks one item longer."""
        base, extra = divmod(count, self.size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def check_fits(self, n_task: int, n_episode: int) -> str | None:
        """Refuse a world that leaves a rank without tasks; explain an uneven split."""
        if self.size == 1:
            return None
        if n_task < self.size:
            raise UserError(f"{self.size} processes cannot share meta-batches of n_task "
                            f"{n_task}: a rank would have no task; use at most {n_task} "
                            "processes or a larger --n_task")
        if n_task % self.size:
            sizes = sorted({len(World(r, self.size).share(n_task)) for r in range(self.size)})
            return (f"note: n_task {n_task} does not divide by {self.size} processes: ranks "
                    f"take {' or '.join(map(str, reversed(sizes)))} tasks of each meta-batch "
                    "(same result, the ranks with fewer tasks wait for the others)")
        return None

    def say(self, *args, **kwargs) -> None:
        """``print`` on rank 0 only."""
        if self.is_main:
            print(*args, **kwargs)

    # --- collectives ------------------------------------------------------------------------------
    def _collective(self, what: str, fn: Callable[[], T]) -> T:
        """Run a collective; if it fails, end this process with one line. Not by raising:
        tearing down a gloo group whose peer vanished mid-collective can std::terminate the
        interpreter (seen about one time in five: "terminate called without an active
        exception", status -6), and nothing is left to save (writes happen between
        collectives, atomically)."""
        try:
            return fn()
        except RuntimeError as exc:  # DistBackendError, timeouts and closed peers included
            exit_now(UserError(f"rank {self.rank} of {self.size}: {what} failed, another "
                               f"rank stopped or did not answer within --dist_timeout "
                               f"{self.timeout_s:g}s ({_first_line(exc)})"))

    def barrier(self) -> None:
        if self.size > 1:
            self._collective("waiting for the other ranks", dist.barrier)

    @contextmanager
    def local_main_first(self):
        """Rank 0 of each machine runs the block first (data preparation and caches), then
        the others, so that no two processes of a machine write the same files."""
        if self.local_rank != 0:
            self.barrier()
        yield
        if self.local_rank == 0:
            self.barrier()

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run by rank 0 and sent to every rank; a :class:`UserError` there is raised
        on every rank (so the run stops everywhere with rank 0's message)."""
        if self.size == 1:
            return fn()
        box: list = [None]
        if self.is_main:
            try:
                box[0] = ("value", fn())
            except UserError as exc:
                box[0] = ("error", str(exc))
        self._collective("receiving rank 0's state",
                         lambda: dist.broadcast_object_list(box, src=0))
        kind, value = box[0]
        if kind == "error":
            raise UserError(value)
        return value

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Start every rank from rank 0's weights, whatever their initialisation did."""
        if self.size == 1:
            return
        for tensor in module.state_dict().values():
            self._collective("broadcasting the weights", lambda: dist.broadcast(tensor, src=0))

    def sum_meta_gradient(self, sums: list[torch.Tensor], present: list[bool],
                          results: list[TaskResult], n_task: int
                          ) -> tuple[list[bool], list[TaskResult]]:
        """Sum the ranks' float64 meta-gradient ``sums`` (in place) and gather the per-task
        results, in one all-reduce; returns which sums any rank gave a gradient to, and the
        results of all ``n_task`` tasks in task order, on every rank.

        A parameter no rank gave a gradient stays without one (as in one process, where the
        optimizer then skips it); one some rank did gets zeros from the others.
        """
        if self.size == 1:
            return present, results
        device = sums[0].device
        flags = torch.tensor(present, dtype=torch.float64, device=device)
        stats = torch.zeros(n_task, 3, dtype=torch.float64, device=device)
        mine = self.share(n_task)
        stats[mine.start:mine.stop] = torch.tensor(
            [[r.loss, r.correct, r.total] for r in results], dtype=torch.float64)
        buffer = torch.cat([s.reshape(-1) for s in sums] + [flags, stats.flatten()])
        self._collective("summing the meta-gradient", lambda: dist.all_reduce(buffer))
        offset = 0
        for s in sums:
            s.copy_(buffer[offset:offset + s.numel()].view_as(s))
            offset += s.numel()
        present = [flag > 0 for flag in buffer[offset:offset + len(sums)].tolist()]
        stats = buffer[-3 * n_task:].view(n_task, 3).tolist()
        return present, [TaskResult(loss=loss, correct=int(correct), total=int(total))
                         for loss, correct, total in stats]

    def gather_results(self, results: list[TaskResult]) -> list[TaskResult]:
        """Every rank's evaluation results (blocks of :meth:`share`), in episode order."""
        if self.size == 1:
            return results
        gathered: list = [None] * self.size
        self._collective("gathering evaluation results",
                         lambda: dist.all_gather_object(gathered, results))
        return [r for block in gathered for r in block]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
