"""Meta-train a few-shot method: ``python train.py --dataset cross_char --method maml ...``.

Option names and meanings follow the reference code, so its published commands run unchanged
(see README.md and commands.sh). Checkpoints go to
``{save_dir}/checkpoints/{dataset}/{model}_{method}_{n}way_{k}shot[_{suffix}]/``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cli import config
from cli.errors import UserError, run_cli
from data.episodes import TRAIN_QUERY
from methods import METHODS
from reports import statistics, testing
from runtime import allocator, distributed, loops, progress, setup
from runtime.course import Course, refuse_another_optimiser, start_course
from storage import atomic, checkpoints, records, run_folder


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def find_run(opts, last_path, say=print) -> dict | None:
    """The saved state to resume (``--resume``), or None for a fresh run. ``--resume`` with
    nothing saved yet starts the run, as the reference does (one of its published commands
    carries --resume from its first launch)."""
    if not opts.resume:
        return None
    if not last_path.exists():
        say(f"note: --resume, but nothing to resume in {last_path.parent}: starting a new run")
        return None
    return checkpoints.load_checkpoint(last_path, opts.method)


def refuse_to_overwrite(last_path) -> None:
    """A fresh run never starts over an existing one."""
    if last_path.exists():
        raise UserError(f"{last_path.parent} already holds a run; pass --resume to continue it, "
                        "or --checkpoint_suffix NAME (or another --save_dir) to start another")


def run(argv=None) -> int:
    opts, given = config.parse("train", list(METHODS), argv)
    return distributed.run_in_world(opts, functools.partial(train, opts, given))


def train(opts, given: set[str], device: torch.device, world: distributed.World) -> int:
    config.note_other_entry("train", given, world.say)
    if opts.evaluate_model:
        return final_test(opts, given, device, world)
    folder = run_folder.checkpoint_dir(opts)
    # Rank 0 holds the folder's lock from before it reads a checkpoint to after the final test.
    lock = run_folder.RunLock(folder)
    world.from_main(lock.acquire)
    try:
        outcome = train_in(folder, opts, given, device, world)
    except BaseException:
        # A run that stopped before it saved its first epoch leaves nothing to resume: what
        # it wrote goes with it (and the folder, if it made it), so the same command starts
        # cleanly again and no half-begun run folder looks like a run.
        lock.release(discard_written=not (folder / "last_model.tar").exists())
        raise
    lock.release()
    return outcome


def train_in(folder: Path, opts, given: set[str], device: torch.device,
             world: distributed.World) -> int:
    last_path = folder / "last_model.tar"
    # Rank 0 reads the checkpoint and sends it: the other ranks need no shared file system.
    resume_state = world.from_main(lambda: find_run(opts, last_path, world.say))
    opts, benchmark = setup.settle(opts, given, "train", resume_state, str(last_path),
                                   world.say)
    compute = setup.choose_compute(opts, device)  # refused before any work if it cannot run
    check_training(opts, resume_state, last_path, world)
    split_note = world.check_fits(opts.tasks_per_update, opts.n_episode)
    samplers = setup.samplers(opts, benchmark, device, world, {
        "train": ("base", opts.train_n_way, TRAIN_QUERY),
        "val": ("val", opts.test_n_way, TRAIN_QUERY)})
    torch.manual_seed(opts.seed)
    model = setup.build_method(opts, benchmark, compute, resume_state, last_path)
    course = start_course(opts, model, resume_state, last_path, world)
    world.broadcast_parameters(model)
    logs = open_logs(folder, opts, resume_state, world)
    announce(opts, compute, course, folder, world, split_note)
    for epoch in range(course.start_epoch, course.epochs):
        record = train_one_epoch(epoch, opts, model, compute, course, samplers, world, last_path)
        if world.is_main:
            save_epoch(opts, folder, course, record, model, logs, samplers["train"], world)
        world.say(epoch_line(record, course, model.schedule_state()), flush=True)
        # Every rank has the gathered validation accuracy, so all stop together.
        if (opts.es_threshold > 0 and epoch >= opts.es_epoch
                and course.best_acc < opts.es_threshold):
            world.say(f"Early stop at epoch {epoch}: best validation accuracy "
                      f"{course.best_acc:.2f}% is below --es_threshold {opts.es_threshold}%")
            break
    world.say(f"Done. Best validation accuracy {course.best_acc:.2f}% at epoch "
              f"{course.best_epoch}; checkpoints in {folder}")
    return final_test(opts, given, device, world) if opts.final_test else 0


def check_training(opts, resume_state: dict | None, last_path: Path,
                   world: distributed.World) -> None:
    """What only training refuses, before any work."""
    if resume_state is not None:
        refuse_another_optimiser(opts, resume_state["config"], last_path)
    if opts.hm_save_delta_params and not hasattr(METHODS[opts.method], "hypernet_update"):
        raise UserError(f"--hm_save_delta_params records a hypernetwork's updates; "
                        f"{opts.method} has no hypernetwork")
    if resume_state is None:
        world.from_main(lambda: refuse_to_overwrite(last_path))
    if opts.test_n_way != opts.train_n_way:
        raise UserError(f"--test_n_way {opts.test_n_way} differs from --train_n_way "
                        f"{opts.train_n_way}: the MAML family's classifier has train_n_way "
                        "outputs, so validation must use the same number of classes")


@dataclass
class Logs:
    """The per-epoch records rank 0 writes: metrics.jsonl, delta_params.jsonl with
    --hm_save_delta_params, and metrics.jsonl's TensorBoard mirror (:func:`board_folder`)
    where the tensorboard package is installed."""
    metrics: records.EpochLog | None = None
    deltas: records.EpochLog | None = None
    board: records.TensorBoardLog | None = None


def open_logs(folder: Path, opts, resume_state: dict | None, world: distributed.World) -> Logs:
    if not world.is_main:
        return Logs()
    resumed_after = None if resume_state is None else resume_state["epoch"]
    logs = Logs(records.EpochLog(folder / "metrics.jsonl", resumed_after),
                board=records.TensorBoardLog(board_folder(opts, folder),
                                             -1 if resumed_after is None else resumed_after))
    if opts.hm_save_delta_params:
        logs.deltas = records.EpochLog(folder / "delta_params.jsonl", resumed_after)
    # After the records were read: a refused resume leaves the run's options as they were.
    atomic.write_text(folder / "args.json", json.dumps(opts.to_dict(), indent=2) + "\n")
    return logs


def board_folder(opts, folder: Path) -> Path:
    """Where a run's TensorBoard scalars go: SAVE_DIR/tensorboard/ laid out as
    SAVE_DIR/checkpoints/, so that ``tensorboard --logdir SAVE_DIR/tensorboard`` shows every
    run of a save folder side by side, and the run folder holds only the run's own files."""
    return Path(opts.save_dir) / "tensorboard" / folder.relative_to(
        Path(opts.save_dir) / "checkpoints")


def announce(opts, compute: setup.Compute, course: Course, folder: Path,
             world: distributed.World, split_note: str | None) -> None:
    """The start line: what trains where, for how long, and how."""
    updates = loops.updates_per_epoch(opts.n_episode, opts.tasks_per_update)
    inner = METHODS[opts.method].inner_loop(opts)
    processes = f"{world.size} processes, " if world.size > 1 else ""
    world.say(f"{opts.method} on {opts.dataset}, {opts.train_n_way}-way {opts.n_shot}-shot, "
              f"{processes}device {compute.device}: --stop_epoch {opts.stop_epoch} x n_task "
              f"{opts.n_task} = {count(course.epochs, 'epoch')} of "
              f"{count(updates, 'meta-update')} x {count(opts.tasks_per_update, 'task')}; "
              f"{inner + '; ' if inner else ''}"
              f"{compute.engine} engine, {compute.precision}; checkpoints in {folder}",
              flush=True)
    if split_note:
        world.say(split_note)
    for note in METHODS[opts.method].training_notes(opts, course.epochs):
        world.say(note)


def train_one_epoch(epoch: int, opts, model, compute: setup.Compute, course: Course,
                    samplers: dict, world: distributed.World, last_path: Path) -> dict:
    """The meta-updates of ``epoch``, then its validation where due; returns its record."""
    started = time.time()
    model.set_epoch(epoch, course.epochs)
    schedule = model.schedule_state()
    lr = course.optimizer.param_groups[0]["lr"]  # the rate this epoch trains at
    results = []
    updates = loops.train_epoch(model, compute, course.optimizer, samplers["train"], epoch,
                                 opts.n_episode, opts.tasks_per_update, world)
    bar = progress.progress(updates, loops.updates_per_epoch(opts.n_episode, opts.tasks_per_update),
                            f"epoch {epoch}/{course.epochs}", world.is_main)
    try:
        for batch in bar:
            check_interrupt()
            results += batch
            bar.set_postfix(loss=f"{np.mean([r.loss for r in results]):.4f}",
                            acc=f"{np.mean([r.accuracy for r in results]):.2f}%", **schedule)
    except loops.Diverged as exc:
        raise UserError(divergence_message(exc, opts, last_path, course.saved_epoch)) from None
    if course.scheduler is not None:
        course.scheduler.step()
    record = {"epoch": epoch, "train_loss": float(np.mean([r.loss for r in results])),
              "train_acc": float(np.mean([r.accuracy for r in results])),
              "lr": lr, **schedule}
    if (epoch + 1) % opts.eval_freq == 0 or epoch == course.epochs - 1:
        record.update(validate(epoch, opts, model, compute, course, samplers["val"], world,
                               last_path))
    record["seconds"] = round(time.time() - started, 3)
    return record


def validate(epoch: int, opts, model, compute: setup.Compute, course: Course, sampler,
             world: distributed.World, last_path: Path) -> dict:
    """The validation accuracy after ``epoch``, with ``best`` where it is the best so far."""
    val_iter = loops.evaluate(model, compute, sampler, opts.n_episode, opts.tasks_per_update, world)
    mine = list(progress.progress(val_iter, len(world.share(opts.n_episode)), "validation",
                                  world.is_main))
    val = world.gather_results(mine)
    problem = loops.non_finite_logits(val)
    if problem:
        raise UserError(divergence_message(
            loops.Diverged(f"in the validation after epoch {epoch}", problem), opts,
            last_path, course.saved_epoch))
    found = dict(zip(("val_acc", "val_ci95"),
                     statistics.reference_interval([r.accuracy for r in val])))
    if found["val_acc"] > course.best_acc:
        course.best_acc, course.best_epoch = found["val_acc"], epoch
        found["best"] = True
    return found


def epoch_line(record: dict, course: Course, schedule: dict) -> str:
    val_text = (f", val {record['val_acc']:.2f}% +- {record['val_ci95']:.2f}%"
                f" (best {course.best_acc:.2f}% at epoch {course.best_epoch})"
                if "val_acc" in record else "")
    schedule_text = "".join(f", {k} {v:.3g}" if isinstance(v, float) else f", {k} {v}"
                            for k, v in schedule.items())
    return (f"epoch {record['epoch']}: loss {record['train_loss']:.4f}, train acc "
            f"{record['train_acc']:.2f}%{val_text}{schedule_text}, {record['seconds']:.1f}s")


def save_epoch(opts, folder: Path, course: Course, record: dict, model, logs: Logs, sampler,
               world: distributed.World) -> None:
    """The epoch's records, then its checkpoints, ``last_model.tar`` last: a write that fails
    part-way leaves ``last_model.tar`` at the previous epoch, and the records of the unsaved
    epoch are dropped when ``--resume`` continues from it (:class:`storage.records.EpochLog`);
    the failure is one line saying what to run."""
    epoch = record["epoch"]
    state = course.state(opts, epoch, model, model.schedule_state(), world.size)
    try:
        write_epoch(opts, folder, state, record, model, logs, sampler, course.epochs)
    except atomic.WriteError as exc:
        last_path = folder / "last_model.tar"
        again = ("no checkpoint was saved yet: run the same command again"
                 if course.saved_epoch is None else
                 f"{last_path} holds epoch {course.saved_epoch}: --resume continues from it "
                 "(dropping the records of later epochs)")
        raise UserError(f"{exc}; training stopped in epoch {epoch}; {again} once the "
                        "folder can be written again") from None
    course.saved_epoch = epoch


def write_epoch(opts, folder: Path, state: dict, record: dict, model, logs: Logs, sampler,
                epochs: int) -> None:
    """The epoch's records, then its checkpoints, ``last_model.tar`` last: a write that fails
    part-way leaves ``last_model.tar`` at the previous epoch, and the records of the unsaved
    epoch are dropped when ``--resume`` continues from it (:class:`storage.records.EpochLog`)."""
    epoch = state["epoch"]
    logs.metrics.append(record)
    if logs.deltas is not None:
        logs.deltas.append(delta_record(model, sampler, epoch, opts.n_episode, state["schedule"]))
    if record.get("best"):
        checkpoints.save_checkpoint(state, folder / "best_model.tar")
    if epoch % opts.save_freq == 0 or epoch == epochs - 1:
        checkpoints.save_checkpoint(state, folder / f"{epoch}.tar")
    if opts.maml_save_feature_network and "val_acc" in record:
        if record.get("best"):
            checkpoints.save_feature_net(model.feature, epoch, folder / "best_feature_net.tar")
        checkpoints.save_feature_net(model.feature, epoch, folder / "last_feature_net.tar")
    checkpoints.save_checkpoint(state, folder / "last_model.tar")
    if logs.board is not None:  # once the epoch is saved: a failed save leaves no mirror
        logs.board.append(record)


def divergence_message(exc: loops.Diverged, opts, last_path: Path,
                       saved_epoch: int | None) -> str:
    cause = f"the learning rate (--lr {opts.lr:g}) is too high for this model"
    if opts.precision == "bf16":
        cause += ", or bfloat16 overflowed (--precision fp32 avoids that)"
    kept = (f"{last_path} (epoch {saved_epoch}) and the other checkpoints are the last finite "
            "ones, kept" if saved_epoch is not None else
            "no checkpoint was saved before it")
    again = ("--resume with a lower --lr continues from it" if saved_epoch is not None else
             "start again with a lower --lr")
    return f"training diverged {exc}; usually {cause}; {kept}; training stopped: {again}"


def delta_record(model, sampler, epoch: int, n_episode: int, schedule: dict) -> dict:
    """``--hm_save_delta_params``: the hypernetwork's output, after the epoch's updates, for the
    epoch's first training task (the reference kept the first task's update of each epoch)."""
    first = epoch * n_episode
    outputs = model.hypernet_update(sampler.episode(first))
    return {"epoch": epoch, "episode": first, **schedule,
            **{head: {name: value.tolist() for name, value in values.items()}
               for head, values in outputs.items()}}


def final_test(opts, given: set[str], device: torch.device, world: distributed.World) -> int:
    """What the reference's train.py does once training ends: test best_model.tar on the novel
    split, with test.py's report and record (here without its sweep over hn_val_epochs)."""
    if opts.final_test <= 0:
        raise UserError("--evaluate_model runs the final test alone, but --final_test 0 skips "
                        "it: nothing to do")
    world.say(f"Final test of the best model on the novel split, {opts.repeat} x "
              f"{opts.final_test} episodes (--final_test 0 skips it):", flush=True)
    test_opts = dataclasses.replace(opts, split="novel", save_iter=-1, checkpoint=None,
                                    n_episode=opts.final_test)
    return testing.test_checkpoint(test_opts, given, device, world)


_interrupted = False


def _on_interrupt(signum, frame):
    """Ctrl-C raises KeyboardInterrupt and is remembered: Python swallows an exception raised
    inside a finaliser (seen: in tqdm's ``__del__``, and the run went on to its end), so the
    training loop raises it again at the next meta-update (:func:`check_interrupt`)."""
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def check_interrupt() -> None:
    if _interrupted:
        raise KeyboardInterrupt


def main(argv=None) -> int:
    # Only where Ctrl-C would interrupt anyway (a background job ignores it, and still does).
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_interrupt)
    try:
        return run_cli(lambda: run(argv))
    except KeyboardInterrupt:
        print("interrupted: the last completed epoch is in last_model.tar; continue with "
              "--resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    allocator.keep_freed_memory()
    sys.exit(main())
