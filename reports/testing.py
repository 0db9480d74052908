"""Testing a trained run: the report and record of test.py, shared with the final test that
train.py runs on the best model once training ends (as the reference's train.py does).

The accuracy over ``--repeat`` runs of ``--n_episode`` episodes (seeds seed ..
seed+repeat-1), each with its 95% confidence interval as the reference prints it, and the
calibration of the query predictions.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cli.errors import UserError
from data.benchmarks import folder_name
from data.episodes import TEST_QUERY
from reports import calibration, plots, statistics
from runtime import distributed, loops, progress, setup
from storage import atomic, checkpoints, records, run_folder


def evaluate_episodes(opts, model, compute, sampler, desc: str, world: distributed.World):
    """The results of ``opts.n_episode`` episodes, in episode order (under torchrun each rank
    evaluates its share and every rank gets them all), and all their query logits and
    labels."""
    episodes = loops.evaluate(model, compute, sampler, opts.n_episode, opts.tasks_per_update,
                              world)
    mine = list(progress.progress(episodes, len(world.share(opts.n_episode)), desc,
                                  world.is_main))
    results = world.gather_results(mine)
    loops.require_finite(results, desc)
    return (results, torch.cat([r.logits for r in results]),
            torch.cat([r.labels for r in results]))


def episode_sheet(sampler, result, n_shot: int) -> plots.EpisodeSheet:
    """Episode 0 of ``sampler`` as :func:`plots.episode_sheet` draws it, with the
    predictions of its evaluated ``result``."""
    pixels, names = sampler.shown(0)
    return plots.EpisodeSheet(support=pixels[:, :n_shot], names=names,
                              queries=pixels[:, n_shot:].reshape(-1, *pixels.shape[2:]),
                              predicted=result.logits.argmax(dim=1).tolist(),
                              truth=result.labels.tolist())


def checkpoint_path(opts) -> Path:
    """The file test.py tests: ``--checkpoint``, or ``best_model.tar`` (``{save_iter}.tar``)
    of the run folder the options name."""
    if opts.checkpoint:
        if opts.save_iter >= 0:
            raise UserError("--save_iter picks a checkpoint of a run folder and --checkpoint "
                            "names the file itself: give one of them")
        return Path(opts.checkpoint)
    name = f"{opts.save_iter}.tar" if opts.save_iter >= 0 else "best_model.tar"
    return run_folder.checkpoint_dir(opts) / name


def test_checkpoint(opts, given: set[str], device: torch.device, world: distributed.World
                    ) -> int:
    """Test the checkpoint the options name (see :func:`checkpoint_path`) on ``--repeat`` x
    ``--n_episode`` episodes of ``--split``; print the report and append it to the record
    files. The body of test.py and of train.py's final test."""
    path = checkpoint_path(opts)
    state = world.from_main(lambda: checkpoints.load_checkpoint(path, opts.method))
    opts, benchmark = setup.settle(opts, given, "test", state, str(path), world.say)
    compute = setup.choose_compute(opts, device)
    if opts.test_n_way != opts.train_n_way:
        raise UserError(f"--test_n_way {opts.test_n_way} differs from the {opts.train_n_way} "
                        f"classes the model in {path} was trained for")
    if opts.plot:
        plots.require_matplotlib()
    if world.is_main:
        atomic.ensure_writable(Path(opts.record_dir))
    model = setup.build_method(opts, benchmark, compute, state, path)
    wanted = {"val": ("val", opts.test_n_way, TEST_QUERY)} if opts.temperature_scaling else {}
    samplers = setup.samplers(opts, benchmark, device, world,
                              {**wanted, "test": (opts.split, opts.test_n_way, TEST_QUERY)})
    processes = f"{world.size} processes, " if world.size > 1 else ""
    world.say(f"Testing {path} (epoch {state['epoch']}, validation "
              f"{state['best_val_acc']:.2f}%) on {opts.dataset} {opts.split}, "
              f"{opts.test_n_way}-way {opts.n_shot}-shot, {opts.repeat} x {opts.n_episode} "
              f"episodes, {processes}device {device}", flush=True)
    few = few_classes_note(samplers["test"].split.n_classes, opts.test_n_way, opts.split)
    if few:
        world.say(few)
    if state.get("schedule", {}).get("phase") == "maml-warmup":
        world.say(f"note: epoch {state['epoch']} is in the pure MAML warm-up: the "
                  "hypernetwork, which the test uses, is not trained yet")
    temperature = (fit_temperature(opts, model, compute, samplers["val"], world)
                   if "val" in samplers else None)
    tested = test_repeats(opts, model, compute, samplers["test"], temperature, world)
    if world.is_main:  # every rank has every result; rank 0 reports and records them
        report(opts, path, state, tested, temperature, samplers["test"], compute)
    return 0


def few_classes_note(classes: int, n_way: int, split: str) -> str | None:
    """A note where a split has so few classes (under 3 x n_way) that its episodes keep
    drawing the same ones: the interval then covers these classes' episodes only."""
    if classes >= 3 * n_way:
        return None
    return (f"note: the {split} split has only {classes} classes, so every {n_way}-way "
            f"episode draws from the same {classes}: the interval covers episodes of these "
            "classes, not how the model does on other new classes, and is narrower than a "
            "claim about those needs")


def fit_temperature(opts, model, compute, sampler, world: distributed.World) -> float:
    """The softmax temperature that minimises the NLL of ``--n_episode`` val episodes."""
    _, val_logits, val_labels = evaluate_episodes(opts, model, compute, sampler,
                                                  "val (temperature)", world)
    temperature = calibration.fit_temperature(val_logits, val_labels)
    world.say(f"Temperature fitted on {opts.n_episode} val episodes: T = {temperature:.4f}")
    note = calibration.temperature_note(temperature)
    if note:  # the value is still used and recorded: the note says what it means
        world.say(note)
    return temperature


@dataclass
class Tested:
    """The repeats of a test: each repeat's record entry, its first episode's result (for the
    episode sheet), and every query's logits and label."""
    repeats: list[dict]
    first_episode: object
    logits: torch.Tensor
    labels: torch.Tensor


def test_repeats(opts, model, compute, sampler, temperature: float | None,
                 world: distributed.World) -> Tested:
    """``--repeat`` passes over ``--n_episode`` episodes, seeds seed .. seed+repeat-1, each
    printed as the reference prints it, with its calibration on the next line."""
    repeats, all_logits, all_labels, first_episode = [], [], [], None
    for r in range(opts.repeat):
        results, logits, labels = evaluate_episodes(
            opts, model, compute, sampler.with_seed(opts.seed + r),
            f"repeat {r + 1}/{opts.repeat}", world)
        mean, ci95 = statistics.reference_interval([e.accuracy for e in results])
        report = calibration.calibration_report(logits, labels)
        # Each episode's count of correct queries: what a shipped model must reproduce.
        entry = {"seed": opts.seed + r, "acc": mean, "ci95": ci95, **report.as_dict(),
                 "episode_correct": [e.correct for e in results],
                 "episode_queries": results[0].total,
                 "episodes_sha": sampler.with_seed(opts.seed + r).fingerprint(opts.n_episode)}
        # The accuracy line exactly as the reference prints it; calibration on the next.
        world.say(f"{opts.n_episode} Test Acc = {mean:.2f}% +- {ci95:.2f}%")
        text = f"  calibration: {report}"
        if temperature is not None:
            scaled = calibration.calibration_report(logits, labels, temperature)
            entry["temperature_scaled"] = scaled.as_dict()
            text += f"; after temperature scaling {scaled}"
        world.say(text, flush=True)
        repeats.append(entry)
        first_episode = results[0] if r == 0 else first_episode
        all_logits.append(logits)
        all_labels.append(labels)
    return Tested(repeats, first_episode, torch.cat(all_logits), torch.cat(all_labels))


def report(opts, path: Path, state: dict, tested: Tested, temperature: float | None, sampler,
           compute) -> None:
    """The summary over the repeats and all test queries, the figures with ``--plot``, and
    the results.txt line and results.jsonl record."""
    means = [e["acc"] for e in tested.repeats]
    over_episodes = statistics.t_interval(episode_accuracies(tested.repeats))
    spread = statistics.t_interval(means).sd
    logits, labels = tested.logits, tested.labels
    pooled = calibration.calibration_report(logits, labels)
    print(f"Mean over {opts.repeat} repeats: {over_episodes.mean:.2f}% +- "
          f"{over_episodes.half:.2f}% (95%, Student-t over the {over_episodes.n:,} test "
          f"episodes: the test sampling of this one model, not training seeds); the repeats' "
          f"sample std {spread:.2f}%; each repeat's +- above is the reference's "
          f"1.96 x std / sqrt({opts.n_episode})")
    print(f"Calibration over all {len(labels):,} test queries: {pooled}")
    few = few_classes_note(sampler.split.n_classes, opts.test_n_way, opts.split)
    if few:
        print(few)
    record = {"calibration": pooled.as_dict()}
    panels = {"uncalibrated": calibration.reliability_bins(logits, labels)}
    if temperature is not None:
        scaled = calibration.calibration_report(logits, labels, temperature)
        print(f"After temperature scaling (T = {temperature:.4f}): {scaled}")
        record.update(temperature=temperature, calibration_temperature_scaled=scaled.as_dict())
        panels[f"temperature T = {temperature:.3g}"] = calibration.reliability_bins(
            logits.double() / temperature, labels)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if opts.plot:
        record.update(draw(opts, panels, sampler, tested, len(labels), stamp))
    line = (f"{stamp} {opts.dataset} split={opts.split} {opts.model} {opts.method} "
            f"{opts.n_shot}shot {opts.test_n_way}way checkpoint={path}: "
            f"{opts.n_episode} Test Acc = {over_episodes.mean:.2f}% +- {over_episodes.half:.2f}% "
            f"(95% over {over_episodes.n} test "
            f"episodes; repeats {', '.join(f'{m:.2f}' for m in means)}, sample std "
            f"{spread:.2f}%); {pooled}")
    record.update({"time": stamp, "dataset": opts.dataset, "split": opts.split,
                   "model": opts.model, "method": opts.method, "n_shot": opts.n_shot,
                   "n_way": opts.test_n_way, "checkpoint": str(path), "epoch": state["epoch"],
                   "n_episode": opts.n_episode, "seeds": [e["seed"] for e in tested.repeats],
                   "repeats": tested.repeats, "repeat_acc": means,
                   "acc_mean": over_episodes.mean, "acc_ci95": over_episodes.half,
                   "repeat_sample_std": spread, "config": opts.to_dict()})
    if opts.precision == "bf16":  # what the counts depend on beyond the options
        record["bf16_kernels"] = setup.bf16_kernels(compute.device)
    records.append_result(Path(opts.record_dir), line, record)


def episode_accuracies(repeats: list[dict]) -> list[float]:
    """Every test episode's accuracy in %, repeat after repeat, from the record's counts."""
    return [100.0 * correct / repeat["episode_queries"]
            for repeat in repeats for correct in repeat["episode_correct"]]


def draw(opts, panels: dict, sampler, tested: Tested, queries: int, stamp: str) -> dict:
    """``--plot``: the reliability diagram and the sheet of episode 0; their paths."""
    record_dir = Path(opts.record_dir)
    record_dir.mkdir(parents=True, exist_ok=True)
    run_name = (f"{folder_name(opts.dataset)}_{opts.model}_{opts.method}_{opts.test_n_way}way_"
                f"{opts.n_shot}shot")
    figure = plots.reliability_diagram(
        panels, record_dir / f"reliability_{run_name}_{stamp}.png",
        f"{opts.method} on {opts.dataset} {opts.split}, {opts.test_n_way}-way "
        f"{opts.n_shot}-shot, {queries:,} test queries")
    print(f"Reliability diagram: {figure}")
    sheet = episode_sheet(sampler.with_seed(opts.seed), tested.first_episode, opts.n_shot)
    sheet_figure = plots.episode_sheet(
        sheet, record_dir / f"episode_{run_name}_{stamp}.png",
        f"{opts.method} on {opts.dataset} {opts.split}, episode 0 of repeat 1")
    print(f"Episode sheet: {sheet_figure}")
    return {"reliability_diagram": str(figure), "episode_sheet": str(sheet_figure)}
