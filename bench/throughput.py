"""Throughput benchmark on the real cross_char data: training, validation and test tasks per
second, the wall time of one epoch (100 training + 100 validation episodes; fewer with
``--epoch_episodes``, as the smoke runs), the episode
sampling rate alone, and peak memory, for each method and phase.

    python -m bench.throughput                       # all methods, 1 and 5 shots, this machine
    python -m bench.throughput --method hyper_maml --n_shot 1 --device cuda --json out.json
    python -m bench.throughput --dataset CUB --data_dir ROOT --train_aug   # 84-pixel photographs

With ``--engine loop,batched`` both task engines, with ``--memory_format
contiguous,channels_last`` both layouts, and with ``--precision fp32,bf16`` (or tf32 on CUDA)
both arithmetics, are timed on the same episodes in the same process, and their ratios
printed. ``--processes 1,2`` also times each configuration under
``torchrun --nproc_per_node 2`` (the meta-batch and the evaluation episodes split across the
processes, as train.py does) and prints the speed-up over the first count. ``--allocator
glibc,keep`` times each configuration with glibc's own malloc settings and with the entry
points' (runtime/allocator.py), in two processes one after the other, and prints the speed-up of the
second. ``--profile`` also names where one meta-update's time goes: the operators with the
most self time under torch.profiler, each with its share. Each (method, phase, shots) runs in
its own process, so peak memory (RSS on a CPU, peak allocated on CUDA) belongs to that
configuration alone. The options are the published ones (n_task 32, one inner step of 0.1,
the HyperMAML/BayesHMAML architecture); the HyperMAML phases are taken at an epoch inside the
warm-up (p = 1) and after it (p = 0).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from cli import config
from cli.errors import run_cli
from data.benchmarks import find
from data.episodes import TEST_QUERY, TRAIN_QUERY
from methods import METHODS
from runtime import allocator, distributed, loops, setup
from runtime.device import resolve_device
from storage import atomic

REPO = Path(__file__).resolve().parents[1]

HYPERNET = ["--hn_head_len", "3", "--hn_hidden_size", "512", "--hm_enhance_embeddings", "True",
            "--hm_use_class_batch_input", "--hm_maml_warmup", "--hm_maml_warmup_epochs", "50",
            "--hm_maml_warmup_switch_epochs", "500"]
BAYES = ["--kl_scale", "1e-24", "--kl_stop_val", "0.001", "--hm_weight_set_num_train", "5",
         "--hm_weight_set_num_test", "0"]
# (method, phase) -> (options, epoch at which the phase is measured)
CONFIGS = {
    ("maml", "-"): ([], 0),
    ("hyper_maml", "warm-up"): (HYPERNET, 0),
    ("hyper_maml", "hypernet"): (HYPERNET, 1000),
    ("bayes_hmaml", "warm-up"): (HYPERNET + BAYES, 0),
    ("bayes_hmaml", "hypernet"): (HYPERNET + BAYES, 1000),
    # The standard baselines, with the reference's MAML-family defaults.
    ("protonet", "-"): ([], 0),
    ("anil", "-"): ([], 0),
    ("meta_sgd", "-"): ([], 0),
}


def measure(method: str, phase: str, n_shot: int, device_name: str, data_dir: str | None,
            model_name: str, dataset: str, train_aug: bool,
            updates: int, eval_episodes: int, engines: list[str], formats: list[str],
            precisions: list[str], n_task: int | None = None, epoch_episodes: int = 100,
            n_way: int = 5, profile: bool = False) -> dict | None:
    """Run one configuration in this process (this rank, under torchrun) and return its
    measurements (None on the ranks other than 0)."""

    options, epoch = CONFIGS[(method, phase)]
    argv = ["--dataset", dataset, "--method", method, "--n_shot", str(n_shot),
            "--train_n_way", str(n_way), "--test_n_way", str(n_way), "--device", device_name,
            "--precision", precisions[0], "--model", model_name, *options,
            *(["--train_aug"] if train_aug else [])]
    if n_shot > 1 and method != "maml":
        argv += ["--hn_sup_aggregation", "mean"]
    if data_dir:
        argv += ["--data_dir", data_dir]
    if n_task:
        argv += ["--n_task", str(n_task)]
    opts, benchmark = setup.settle(config.parse("train", list(METHODS), argv)[0], set(), "train")
    variants = [(e, f, p) for e in engines for f in formats for p in precisions]

    # Joined and left as train.py's ranks do (run_in_world): one path, one place for its care.
    def body(device, world) -> dict | None:
        bench = Measurement(opts, benchmark, device, world, n_way, epoch)
        found = bench.measure(variants, updates, eval_episodes, epoch_episodes, profile)
        if not world.is_main:
            return None
        return {"method": method, "phase": phase, "n_shot": n_shot, "n_way": n_way,
                "device": str(device), "model": model_name, "dataset": dataset,
                "train_aug": train_aug, "processes": world.size,
                "threads": torch.get_num_threads(), "n_task": opts.n_task,
                "engine": engines[0], "memory_format": formats[0], "precision": precisions[0],
                **found}

    return distributed.run_in_world(opts, body)


class Measurement:
    """One configuration on this rank: its samplers, model and optimiser, built as train.py
    builds them (runtime.setup), and the work that is timed on them."""

    def __init__(self, opts, benchmark, device, world, n_way: int, epoch: int):
        self.opts, self.device, self.world = opts, device, world
        found = setup.samplers(opts, benchmark, device, world, {
            "train": ("base", n_way, TRAIN_QUERY), "val": ("val", n_way, TRAIN_QUERY),
            "test": ("novel", n_way, TEST_QUERY)}, say=lambda *_: None)
        self.train, self.val, self.test = found["train"], found["val"], found["test"]
        torch.manual_seed(0)
        self.compute = setup.choose_compute(opts, device)
        self.model = setup.build_method(opts, benchmark, self.compute)
        self.model.set_epoch(epoch, 2048)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=opts.lr)

    def timed(self, fn) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def train_updates(self, count: int, first_epoch: int) -> None:

        # n_episode = n_task: each engine epoch is exactly one meta-update.
        for e in range(first_epoch, first_epoch + count):
            for _ in loops.train_epoch(self.model, self.compute, self.optimizer, self.train, e,
                                       self.opts.n_task, self.opts.n_task, self.world):
                pass

    def evaluate(self, sampler, n: int) -> None:
        self.world.gather_results(list(loops.evaluate(self.model, self.compute, sampler, n,
                                                      self.opts.n_task, self.world)))

    def use(self, engine: str, layout: str, precision: str) -> None:
        """Compute the next work with this engine, memory layout and arithmetic."""
        self.compute = setup.Compute(self.device, engine == "batched", precision,
                                     layout == "channels_last")
        self.model.to(memory_format=getattr(torch, layout.replace("contiguous",
                                                                  "contiguous_format")))

    def variant_rates(self, variants: list[tuple[str, str, str]], updates: int,
                      eval_episodes: int) -> tuple[dict, dict]:
        """Training and test tasks/s of each (engine, layout, precision), side by side in one
        process on the same episodes, keyed by what varies; the first variant is in use
        afterwards."""
        train_rates, test_rates = {}, {}
        for name, layout, precision in variants:
            self.use(name, layout, precision)
            self.train_updates(1, 30_000)  # warm-up of this variant
            key = "/".join(v for i, v in enumerate((name, layout, precision))
                           if i == 0 or len({variant[i] for variant in variants}) > 1)
            train_rates[key] = (updates * self.opts.n_task
                                / self.timed(lambda: self.train_updates(updates, 0)))
            test_rates[key] = eval_episodes / self.timed(
                lambda: self.evaluate(self.test, eval_episodes))
        self.use(*variants[0])
        return train_rates, test_rates

    def measure(self, variants, updates: int, eval_episodes: int, epoch_episodes: int,
                profile: bool) -> dict:
        self.train_updates(1, 10_000)  # warm-up: allocator, caches, lazy initialisation
        self.evaluate(self.val, 5)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sampling = self.timed(lambda: [self.train.episode(i) for i in range(200)])
        train_rates, test_rates = self.variant_rates(variants, updates, eval_episodes)
        train_gflop, test_gflop = gflop_per_task(lambda: self.train_updates(1, 40_000),
                                                 self.opts.n_task,
                                                 lambda: self.evaluate(self.test, 1))
        matmul = matmul_gflops(self.device)
        val_time = self.timed(lambda: self.evaluate(self.val, eval_episodes))
        test_time = self.timed(lambda: self.evaluate(self.test, eval_episodes))
        per_epoch = loops.updates_per_epoch(epoch_episodes, self.opts.n_task)
        epoch_time = self.timed(lambda: (self.train_updates(per_epoch, 20_000),
                                         self.evaluate(self.val, epoch_episodes)))
        operators = (profile_update(lambda: self.train_updates(1, 50_000), self.device)
                     if profile else None)
        return {"train_tasks_per_s": train_rates[next(iter(train_rates))],
                "train_tasks_per_s_by_variant": train_rates,
                "test_tasks_per_s_by_variant": test_rates,
                "val_tasks_per_s": eval_episodes / val_time,
                "test_tasks_per_s": eval_episodes / test_time,
                "epoch_s": epoch_time,
                "episodes_per_epoch": per_epoch * self.opts.n_task + epoch_episodes,
                "validation_episodes_per_epoch": epoch_episodes,
                "sampling_episodes_per_s": 200 / sampling,
                "train_gflop_per_task": train_gflop, "test_gflop_per_task": test_gflop,
                "matmul_gflops": matmul, "peak_memory_mb": self.peak_memory() / 2**20,
                "memory_kind": ("cuda peak allocated" if self.device.type == "cuda"
                                else "peak RSS"),
                **({"profile": operators} if profile else {})}

    def peak_memory(self) -> float:
        """Bytes at the peak, of all processes together under torchrun."""
        peak = (torch.cuda.max_memory_allocated() if self.device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        if self.world.size > 1:
            total = torch.tensor([float(peak)])
            torch.distributed.all_reduce(total)
            peak = total.item()
        return peak


def gflop_per_task(train_update, n_task: int, test_episode) -> tuple[float, float]:
    """The floating-point operations of one training task (forward, backward and, for MAML,
    the second-order terms: a meta-update's count over its tasks) and of one test task, added
    up from the matrix products and convolutions run, with torch's FLOP formulas. (Not with
    its FlopCounterMode, whose module hooks break MAML's autograd.grad.)"""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Count(TorchDispatchMode):
        flops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.flops += formula(*args, **(kwargs or {}), out_val=out)
            return out

    counts = []
    for run in (train_update, test_episode):
        with Count() as counter:
            run()
        counts.append(counter.flops / 1e9)
    return counts[0] / n_task, counts[1]


def profile_update(train_update, device, top: int = 12) -> list[dict]:
    """The ``top`` operators of one meta-update (its episodes' sampling and augmentation
    included) by self time under torch.profiler (the device's kernels on a GPU, the CPU's
    otherwise), each with its milliseconds, calls and share of the update's total self time."""
    from torch.profiler import ProfilerActivity, profile
    on_gpu = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU]
                 + ([ProfilerActivity.CUDA] if on_gpu else [])) as profiler:
        train_update()
    events = profiler.key_averages()
    self_us = lambda e: e.self_device_time_total if on_gpu else e.self_cpu_time_total
    total = sum(map(self_us, events))
    return [{"op": e.key, "ms": self_us(e) / 1e3, "calls": e.count,
             "share": self_us(e) / total}
            for e in sorted(events, key=self_us, reverse=True)[:top]]


def profile_text(operators: list[dict]) -> str:
    return "  where one meta-update's time goes (self time): " + ", ".join(
        f"{o['op']} {o['share']:.0%}" for o in operators)


def matmul_gflops(device) -> float:
    """What this device computes in float32 matrix products of 2,048 x 2,048 (GFLOP/s, best
    of five), measured in the same process with the same threads: the practical peak the
    tasks' rates are put against."""
    a, b = (torch.randn(2048, 2048, device=device) for _ in range(2))
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * 2048 ** 3 / best / 1e9


def default_memory_format(method: str, device_name: str) -> str:
    opts = argparse.Namespace(memory_format="auto", method=method)
    return setup.choose_memory_format(opts, resolve_device(device_name))


def achieved(row: dict) -> float:
    """The training tasks' GFLOP/s as a share of the same device's matrix-product rate."""
    return row["train_gflop_per_task"] * row["train_tasks_per_s"] / row["matmul_gflops"]


def variant_text(row: dict) -> str:
    """Training and test tasks/s of every (engine, memory format) timed, and the ratio of
    each to the first."""
    train, test = row["train_tasks_per_s_by_variant"], row["test_tasks_per_s_by_variant"]
    first = next(iter(train))
    return "; ".join(f"{key} {train[key]:.1f}/{test[key]:.1f}"
                     + (f" ({train[key] / train[first]:.2f}x/{test[key] / test[first]:.2f}x)"
                        if key != first else "") for key in train)


def speedup_text(row: dict, base: dict) -> str:
    """Training and test tasks/s and epoch time of ``row`` against ``base`` (the first process
    count and malloc setting)."""
    train = row["train_tasks_per_s"] / base["train_tasks_per_s"]
    return (f"vs {base['processes']} process(es), {base['allocator']} malloc: "
            f"training {train:.2f}x, "
            f"test {row['test_tasks_per_s'] / base['test_tasks_per_s']:.2f}x, "
            f"epoch {base['epoch_s'] / row['epoch_s']:.2f}x shorter")


def worker_failure(stderr: str) -> str:
    """What a failed worker said, in a few lines: the end of the ranks' own output, and under
    torchrun its summary's rank and exit-code lines (a rank killed for memory says nothing
    itself; its exit code names the signal). torchrun's own traceback and log lines, which
    end its stderr and say only that a rank failed, are left out."""
    lines = stderr.rstrip().splitlines()
    summary = next((i for i, line in enumerate(lines)
                    if line.startswith("torch.distributed.elastic.multiprocessing.errors."
                                       "ChildFailedError")), None)
    if summary is None:  # one process, no launcher
        return "\n".join(lines[-15:])
    agent = max((i for i in range(summary) if lines[i].startswith("Traceback")), default=summary)
    own = [line for line in lines[:agent] if not re.match(r"[DIWE]\d{4} \d", line)]
    codes = [line.strip() for line in lines[summary:]
             if line.strip().startswith(("rank ", "exitcode ", "traceback "))]
    return "\n".join(own[-15:] + codes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="maml,hyper_maml,bayes_hmaml",
                        help="comma-separated methods")
    parser.add_argument("--n_shot", default="1,5", help="comma-separated shot counts")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--engine", default="loop",
                        help="comma-separated task engines (loop, batched); with two, both are "
                             "timed in the same process and their training ratio printed")
    parser.add_argument("--memory_format", default=None,
                        help="comma-separated layouts (contiguous, channels_last) timed side by "
                             "side; default: what --memory_format auto picks")
    parser.add_argument("--precision", default="fp32",
                        help="comma-separated arithmetics (fp32, bf16, tf32 on CUDA) timed side "
                             "by side; the first is used for the other columns")
    parser.add_argument("--dataset", default="cross_char",
                        help="benchmark (its prepared data in --data_dir): cross_char, or a "
                             "photograph one (CUB, miniImagenet, cross) at 84 pixels")
    parser.add_argument("--train_aug", action="store_true",
                        help="photograph benchmarks: time training with the augmentation")
    parser.add_argument("--model", default=None, choices=("Conv4", "Conv4S", "Conv4Pool",
                                                          "Conv6"),
                        help="backbone (default: Conv4, three input channels as the "
                             "reference, for characters; Conv4Pool, as the published "
                             "commands, for photographs)")
    parser.add_argument("--processes", default="1",
                        help="comma-separated process counts; more than 1 runs the "
                             "configuration under torchrun (gloo on a CPU, nccl on CUDA)")
    parser.add_argument("--allocator", default="keep",
                        help="comma-separated malloc settings, each timed in its own process: "
                             "keep (the entry points', runtime/allocator.py), glibc (glibc's own)")
    parser.add_argument("--n_way", type=int, default=5,
                        help="classes per episode (20 for the Omniglot 20-way rows)")
    parser.add_argument("--data_dir", default=None, help="prepared data root (default filelists/)")
    parser.add_argument("--updates", type=int, default=3,
                        help="meta-updates timed (of n_task tasks: 32 for characters, 4 for "
                             "photographs)")
    parser.add_argument("--eval_episodes", type=int, default=100, help="val/test episodes timed")
    parser.add_argument("--epoch_episodes", type=int, default=100,
                        help="training and validation episodes of the timed epoch (default 100, "
                             "train.py's default --n_episode)")
    parser.add_argument("--n_task", type=int, default=None,
                        help="tasks per meta-update (default: the published 32 for characters, "
                             "4 for photographs); smaller for a quick smoke run")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one meta-update: its operators by self time")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "PHASE", "SHOTS"),
                        help=argparse.SUPPRESS)  # one configuration, in a child process
    return parser


def main() -> int:
    parser = build_parser()
    args = parser.parse_args()
    unmeasured = sorted(set(args.method.split(",")) - {name for name, _ in CONFIGS})
    if unmeasured:  # silently measuring nothing would read as a finished benchmark
        parser.error(f"--method {','.join(unmeasured)}: no configuration in CONFIGS of "
                     f"bench/throughput.py (it has "
                     f"{', '.join(dict.fromkeys(n for n, _ in CONFIGS))})")
    if set(args.allocator.split(",")) - {"keep", "glibc"}:
        parser.error(f"--allocator {args.allocator}: the settings are keep and glibc")
    if args.model is None:
        args.model = "Conv4Pool" if find(args.dataset).colour else "Conv4"
    if args.worker:
        return run_worker(args)
    rows = []
    print(f"{'method':<12}{'phase':<10}{'shot':>4}{'procs':>6}{'malloc':>7}{'train t/s':>11}"
          f"{'val t/s':>9}{'test t/s':>10}{'epoch s':>9}{'sample e/s':>12}{'peak MB':>9}"
          f"{'GFLOP/task':>12}{'of matmul':>10}"
          f"  train/test t/s by engine/layout/precision (ratio to the first)")
    for method in args.method.split(","):
        for phase in [phase for name, phase in CONFIGS if name == method]:
            for shots in args.n_shot.split(","):
                base = None
                for processes, setting in itertools.product(map(int, args.processes.split(",")),
                                                            args.allocator.split(",")):
                    row = run_configuration(args, method, phase, shots, processes, setting)
                    if row is None:
                        return 1
                    rows.append(row)
                    print(row_text(row, method, phase, shots, processes, base), flush=True)
                    base = base or row
                    if args.profile:
                        print(profile_text(row["profile"]), flush=True)
    if rows:
        print(summary_text(rows))
    if args.json:
        atomic.write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


def run_worker(args) -> int:
    """``--worker``: one configuration measured in this process; its row printed as JSON."""
    kept = allocator.keep_freed_memory()  # unless the parent set FSL_MALLOC=glibc
    method, phase, shots = args.worker
    engines = args.engine.split(",")
    formats = (args.memory_format.split(",") if args.memory_format
               else [default_memory_format(method, args.device)])
    row = measure(method, phase, int(shots), args.device, args.data_dir, args.model,
                  args.dataset, args.train_aug, args.updates, args.eval_episodes, engines,
                  formats, args.precision.split(","), args.n_task, args.epoch_episodes,
                  args.n_way, args.profile)
    if row is not None:
        # "glibc" also where nothing was changed for another reason (runtime/allocator.py)
        print(json.dumps({**row, "allocator": "keep" if kept else "glibc"}))
    return 0


def run_configuration(args, method: str, phase: str, shots: str, processes: int,
                      setting: str) -> dict | None:
    """One configuration measured in a process of its own (under torchrun for more than
    one), with the malloc ``setting``; None, the worker's failure told, if it failed."""
    launcher = [sys.executable] + (
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         str(processes)] if processes > 1 else [])
    # As a module from the toolkit's folder (cwd=REPO), as torchrun's -m runs it too.
    command = launcher + [
        "-m", "bench.throughput", "--worker", method, phase, shots, "--device", args.device,
        "--updates", str(args.updates), "--eval_episodes", str(args.eval_episodes),
        "--epoch_episodes", str(args.epoch_episodes), "--engine", args.engine,
        "--precision", args.precision, "--model", args.model,
        "--dataset", args.dataset, "--n_way", str(args.n_way)
    ] + (["--train_aug"] if args.train_aug else []) + (["--profile"] if args.profile else [])
    if args.memory_format:
        command += ["--memory_format", args.memory_format]
    if args.data_dir:
        command += ["--data_dir", args.data_dir]
    if args.n_task:
        command += ["--n_task", str(args.n_task)]
    env = {k: v for k, v in os.environ.items() if k != allocator.OPT_OUT}
    if setting == "glibc":
        env[allocator.OPT_OUT] = "glibc"
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    if done.returncode:
        print(f"{method} {phase} {shots}-shot, {processes} process(es): the worker exited "
              f"with {done.returncode}:\n{worker_failure(done.stderr)}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def row_text(row: dict, method: str, phase: str, shots: str, processes: int,
             base: dict | None) -> str:
    compared = f"; {speedup_text(row, base)}" if base else ""
    return (f"{method:<12}{phase:<10}{shots:>4}{processes:>6}{row['allocator']:>7}"
            f"{row['train_tasks_per_s']:>11.1f}"
            f"{row['val_tasks_per_s']:>9.1f}{row['test_tasks_per_s']:>10.1f}"
            f"{row['epoch_s']:>9.2f}{row['sampling_episodes_per_s']:>12.0f}"
            f"{row['peak_memory_mb']:>9.0f}{row['train_gflop_per_task']:>12.1f}"
            f"{achieved(row):>10.0%}  {variant_text(row)}{compared}")


def summary_text(rows: list[dict]) -> str:
    threads = ", ".join(sorted({f"{r['processes']} process(es) x {r['threads']} threads"
                                for r in rows}))
    validation = rows[0]["validation_episodes_per_epoch"]
    return (f"device {rows[0]['device']}, {threads}; {rows[0]['n_task']} tasks per "
            f"meta-update; epoch = {rows[0]['episodes_per_epoch'] - validation} training + "
            f"{validation} validation episodes; "
            f"peak memory is {rows[0]['memory_kind']} (of all processes together); GFLOP/task "
            f"is one training task's (torch's FLOP counter), 'of matmul' the training rate "
            f"as a share of {rows[0]['matmul_gflops']:.0f} GFLOP/s, this device's float32 "
            "2,048 x 2,048 matrix product measured in the same process")


if __name__ == "__main__":
    sys.exit(run_cli(main))  # bad input, a worker's too: one line, not a traceback
