"""Test a meta-trained method: ``python test.py --dataset cross_char --method maml ...``.

Loads ``best_model.tar`` (or ``{save_iter}.tar``) of the run the options name, rebuilds the
model from the configuration saved in it, and reports the accuracy over ``--repeat`` runs of
600 episodes (seeds seed .. seed+repeat-1) with 95% confidence intervals, as the reference.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import config
import data
import engine
import io_utils
from data.episodes import TEST_QUERY
from errors import UserError
from methods import METHODS, build_method


def run(argv=None) -> int:
    opts, given = config.parse("test", list(METHODS), argv)
    folder = io_utils.checkpoint_dir(opts)
    name = f"{opts.save_iter}.tar" if opts.save_iter >= 0 else "best_model.tar"
    path = folder / name
    state = io_utils.load_checkpoint(path, opts.method)
    config.adopt_saved(opts, state["config"], given, str(path))
    opts = config.resolve(opts, "test")
    METHODS[opts.method].check_options(opts)
    if opts.test_n_way != opts.train_n_way:
        raise UserError(f"--test_n_way {opts.test_n_way} differs from the {opts.train_n_way} "
                        f"classes the model in {path} was trained for")
    device = io_utils.resolve_device(opts.device)
    io_utils.ensure_writable(Path(opts.record_dir))

    model = build_method(opts).to(device)
    io_utils.load_model_state(model, state, path)
    data_dir = data.prepared_data_dir(opts)
    print(f"Testing {path} (epoch {state['epoch']}, validation {state['best_val_acc']:.2f}%) "
          f"on {opts.dataset} {opts.split}, {opts.test_n_way}-way {opts.n_shot}-shot, "
          f"{opts.repeat} x {opts.n_episode} episodes, device {device}", flush=True)

    repeat_means = []
    for r in range(opts.repeat):
        sampler = data.split_sampler(opts, data_dir, opts.split, opts.test_n_way, TEST_QUERY,
                                     opts.seed + r, device)
        episodes = engine.evaluate(model, sampler, opts.n_episode)
        accuracies = [res.accuracy for res in
                      io_utils.progress(episodes, opts.n_episode, f"repeat {r + 1}/{opts.repeat}")]
        mean, ci95 = engine.mean_and_ci95(accuracies)
        repeat_means.append(mean)
        print(f"{opts.n_episode} Test Acc = {mean:.2f}% +- {ci95:.2f}%", flush=True)
    overall, spread = float(np.mean(repeat_means)), float(np.std(repeat_means))
    print(f"Mean over {opts.repeat} repeats: {overall:.2f}%, std {spread:.2f}%")

    stamp = time.strftime("%Y%m%d-%H%M%S")
    line = (f"{stamp} {opts.dataset} split={opts.split} {opts.model} {opts.method} "
            f"{opts.n_shot}shot {opts.test_n_way}way checkpoint={path}: "
            f"{opts.n_episode} Test Acc = {overall:.2f}% (std over {opts.repeat} repeats "
            f"{spread:.2f}%; repeats {', '.join(f'{m:.2f}' for m in repeat_means)})")
    record = {"time": stamp, "dataset": opts.dataset, "split": opts.split, "model": opts.model,
              "method": opts.method, "n_shot": opts.n_shot, "n_way": opts.test_n_way,
              "checkpoint": str(path), "epoch": state["epoch"], "n_episode": opts.n_episode,
              "seeds": [opts.seed + r for r in range(opts.repeat)],
              "repeat_acc": repeat_means, "acc_mean": overall, "acc_std": spread,
              "config": opts.to_dict()}
    io_utils.append_result(Path(opts.record_dir), line, record)
    return 0


def main(argv=None) -> int:
    try:
        return run(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
