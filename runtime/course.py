"""The course of a training run: its optimiser and learning-rate schedule, the epochs it runs
(``--stop_epoch`` x n_task, as the reference), the best validation so far, and how a resumed run
continues exactly from its checkpoint (the optimiser's and scheduler's state, torch's
generators, a changed schedule applied at the resumed epoch)."""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from cli.errors import UserError
from runtime.distributed import World
from storage import checkpoints


def make_optimizer(opts, model):
    if opts.optim == "adam":
        return torch.optim.Adam(model.parameters(), lr=opts.lr)
    return torch.optim.SGD(model.parameters(), lr=opts.lr)


def make_scheduler(opts, optimizer, total_epochs: int):
    """``multisteplr``: lr x 0.3 at each milestone (default: every quarter of the run);
    ``cosine``: the reference's warm restarts with a period of the whole run."""
    if opts.lr_scheduler == "none":
        return None
    if opts.lr_scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=total_epochs)
    milestones = opts.milestones or [total_epochs * q // 4 for q in (1, 2, 3)]
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.3)


def refuse_another_optimiser(opts, saved: dict, source: Path) -> None:
    """``--resume --optim X`` of a run trained with another optimiser: its saved state (Adam's
    moments) cannot continue as another's."""
    if "optim" in saved and opts.optim != saved["optim"]:
        raise UserError(f"--optim {opts.optim}: the run in {source} was trained with "
                        f"{saved['optim']}, whose saved state cannot continue as "
                        f"{opts.optim}'s; resume without --optim, or start a new run (another "
                        "--checkpoint_suffix)")


def reschedule(opts, saved: dict, optimizer, scheduler, epochs: int, start_epoch: int, say):
    """The learning rate of a resumed run whose ``--lr``, ``--lr_scheduler``, ``--milestones``
    or schedule length changed: the loaded optimiser state holds the old rate and the loaded
    scheduler the old milestones, which would silently win over the options (and over the
    records, which show the options). The rate is set to what the new options give at
    ``start_epoch``, by a scheduler built from them and stepped to it; the optimiser's moments
    are kept. Returns the scheduler to continue with (the loaded one if nothing changed, so that
    a plain ``--resume`` stays exact)."""
    keys = ("lr", "lr_scheduler", "milestones", "stop_epoch", "n_task")
    was = dataclasses.replace(opts, **{k: saved[k] for k in keys if k in saved})
    before, now = ({"lr": o.lr, "lr_scheduler": o.lr_scheduler, "milestones": o.milestones,
                    "epochs": total_epochs(o)} for o in (was, opts))
    changed = [k for k in now if before[k] != now[k]
               and (k != "epochs" or opts.lr_scheduler != "none")]
    if not changed:
        return scheduler
    for group in optimizer.param_groups:
        group["lr"] = opts.lr
        group.pop("initial_lr", None)  # else the new scheduler would start from the old rate
    scheduler = make_scheduler(opts, optimizer, epochs)
    if scheduler is not None:
        with warnings.catch_warnings():  # stepping to the epoch, with no optimiser step between
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(start_epoch):
                scheduler.step()
    said = ", ".join(f"{k} {before[k]} -> {now[k]}" for k in changed)
    say(f"note: --resume with another schedule ({said}): the learning rate is "
        f"{optimizer.param_groups[0]['lr']:g} from epoch {start_epoch}, as these options give "
        "it there")
    return scheduler


def total_epochs(opts) -> int:
    """The reference multiplies ``--stop_epoch`` by n_task for the MAML family."""
    return opts.stop_epoch * opts.tasks_per_update


def rng_state() -> dict:
    """torch's generators, which draw the initial weights and BayesHMAML's samples (episodes
    come from generators of their own, seeded by (seed, split, index))."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Course:
    """Where a training run stands: its optimiser and learning-rate schedule, the epochs it
    runs, the best validation so far and the epoch ``last_model.tar`` holds."""
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    epochs: int
    start_epoch: int
    best_acc: float = -1.0
    best_epoch: int = -1
    saved_epoch: int | None = None

    def state(self, opts, epoch: int, model, schedule: dict, world_size: int) -> dict:
        """The checkpoint of ``epoch``: everything ``--resume`` needs to continue exactly."""
        return {"config": opts.to_dict(), "epoch": epoch, "model": model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "rng": rng_state(), "best_val_acc": self.best_acc,
                "best_epoch": self.best_epoch, "schedule": schedule, "world_size": world_size}


def start_course(opts, model, resume_state: dict | None, last_path: Path,
                 world: World) -> Course:
    """A fresh course (its backbone from --hm_feature_net_path if asked), or the one
    ``resume_state`` saved, continued with the rate these options give."""
    optimizer = make_optimizer(opts, model)
    epochs = total_epochs(opts)
    course = Course(optimizer, make_scheduler(opts, optimizer, epochs), epochs, opts.start_epoch)
    if resume_state is None:
        if opts.hm_load_feature_net:
            saved_at = checkpoints.load_feature_net(model.feature,
                                                    Path(opts.hm_feature_net_path))
            world.say(f"Backbone initialised from {opts.hm_feature_net_path} (epoch "
                      f"{saved_at})")
        return course
    optimizer.load_state_dict(resume_state["optimizer"])
    if course.scheduler is not None:
        course.scheduler.load_state_dict(resume_state["scheduler"])
    restore_rng(resume_state["rng"])
    course.saved_epoch = resume_state["epoch"]
    course.start_epoch = course.saved_epoch + 1
    course.scheduler = reschedule(opts, resume_state["config"], optimizer, course.scheduler,
                                  epochs, course.start_epoch, world.say)
    course.best_acc, course.best_epoch = resume_state["best_val_acc"], resume_state["best_epoch"]
    saved_world = resume_state.get("world_size", 1)
    world.say(f"Resuming {last_path} after epoch {resume_state['epoch']}"
              + (f" (saved by {saved_world} processes, continuing with {world.size}: "
                 "the same tasks and the same updates)" if saved_world != world.size else ""))
    return course
