"""Run one experiment of results/experiments.py, resumably:

    python -m results.run NAME [--threads N] [--device cpu|cuda] [-- extra train.py options]
    python -m results.run --list

Trains into ``results/runs/NAME/`` (continuing with ``--resume`` if that folder holds a run,
e.g. after a stopped shell or a restarted machine), then tests the best model with test.py
(5 x 600 episodes, calibration with temperature scaling, a reliability diagram) and writes it
as the model file ``models/NAME.safetensors``; ``--test_only`` tests again without training
(from the model file where the checkpoints are not on this machine). Each launch
appends what it runs and where to ``results/runs/NAME/segments.jsonl`` (command, git commit,
threads, device, CPU, torch) when it starts, and its wall time and exit status when it ends;
``python -m results.report`` reads these records.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from cli import config
from cli.errors import UserError, closest, run_cli
from methods import METHODS
from results.experiments import EXPERIMENTS, experiment, seed_run
from storage import atomic, checkpoints
from storage.run_folder import RunLock, checkpoint_dir

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "results" / "runs"
MODELS = REPO / "models"


def run_folder(name: str) -> Path:
    return RUNS / name


def record_folder(name: str) -> Path:
    """Where test.py writes the records (results.jsonl, reliability diagram) of ``name``."""
    return run_folder(name) / "record"


def checkpoint_folder(name: str) -> Path:
    """Where train.py writes the run of ``name`` (its checkpoint naming rule)."""
    argv = experiment(name).argv()
    # An image-folder benchmark (filelists/cub100) exists only once results.run has made it,
    # and parsing checks --dataset: parse with a built-in one, since the folder's name is all
    # the naming rule reads of it.
    dataset = argv[argv.index("--dataset") + 1]
    argv[argv.index("--dataset") + 1] = "CUB"
    opts, _ = config.parse("train", list(METHODS), argv)
    opts.dataset, opts.save_dir = dataset, str(run_folder(name))
    return checkpoint_dir(opts)


def model_file(name: str) -> Path:
    """The trained model of ``name`` that the repository ships."""
    return MODELS / f"{name}{checkpoints.MODEL_SUFFIX}"


def earlier_attempts(name: str) -> list[Path]:
    """The folders of the attempts of ``name`` set aside by :func:`set_aside_lost_run`, in
    order; each holds the records of one attempt as the run folder does."""
    earlier = run_folder(name) / "earlier"
    return sorted((p for p in earlier.glob("*") if p.is_dir()), key=lambda p: int(p.name))


# What train.py writes beside its checkpoints: the records a lost run leaves behind.
RUN_RECORDS = ("metrics.jsonl", "args.json", "delta_params.jsonl")


def set_aside_lost_run(name: str) -> str | None:
    """If the checkpoint folder of ``name`` holds a run's records but no ``last_model.tar``
    (its checkpoints stayed on another machine), move its records, and the test records of
    the model that went with them, into ``earlier/N/`` of the run folder, so that a restart
    neither refuses nor overwrites them; say what was done."""
    folder = checkpoint_folder(name)
    if (folder / "last_model.tar").exists() or not (folder / "metrics.jsonl").exists():
        return None
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    last_epoch = json.loads(lines[-1])["epoch"] if lines else None
    target = run_folder(name) / "earlier" / str(len(earlier_attempts(name)) + 1)
    target.mkdir(parents=True)
    for record_name in RUN_RECORDS:
        if (folder / record_name).exists():
            os.replace(folder / record_name, target / record_name)
    if record_folder(name).exists():
        os.replace(record_folder(name), target / "record")
    return (f"restarted from epoch 0: the checkpoints of the earlier attempt (to epoch "
            f"{last_epoch}) were not on this machine; its records are in "
            f"{target.relative_to(run_folder(name))}/")


def machine() -> dict:
    """What the records say about where a segment ran."""
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__}


def git_commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout
    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", "*.py").strip()
    return commit + ("+uncommitted" if changed else "")


def launch(kind: str, name: str, argv: list[str], threads: int) -> int:
    """Run ``python {kind}.py argv`` with its output appended to ``{kind}.log``, after
    recording the segment."""
    folder = run_folder(name)
    folder.mkdir(parents=True, exist_ok=True)
    segment = {"kind": kind, "started": datetime.datetime.now().isoformat(timespec="seconds"),
               "commit": git_commit(), "threads": threads, "argv": argv, **machine()}
    last = checkpoint_folder(name) / "last_model.tar"
    if kind == "train" and last.exists():
        segment["resumed_after_epoch"] = checkpoints.load_safely(last, "checkpoint")["epoch"]
    record(folder, segment)  # before it runs: a segment cut short by a stop stays on record
    started = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(folder / f"{kind}.log", "a") as log:
        child = subprocess.Popen([sys.executable, str(REPO / f"{kind}.py"), *argv], cwd=REPO,
                                 env=env, stdout=log, stderr=subprocess.STDOUT)
        # A SIGTERM to this process (kill PID, a job scheduler's stop) stops the training it
        # runs, which would otherwise go on orphaned with no end on record. Ctrl-C reaches the
        # child from the terminal itself and ends it at its own pace, recorded below.
        stop = signal.signal(signal.SIGTERM, lambda signum, _: child.send_signal(signum))
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            code = child.wait()
        finally:
            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, interrupt)
    record(folder, {"kind": kind, "ended": datetime.datetime.now().isoformat(timespec="seconds"),
                    "seconds": round(time.time() - started, 1), "exit_code": code})
    return code


def record(folder: Path, entry: dict) -> None:
    atomic.append_text(folder / "segments.jsonl", atomic.json_line(entry))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Options after -- go to train.py and test.py, "
                                     "e.g. -- --precision bf16.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", type=run_name, metavar="NAME",
                        help="experiment (see --list), or NAME_seedS: NAME trained with seed S")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="S",
                        help="run NAME once per training seed, one after the other, each in "
                        "a run of its own (NAME_seedS; NAME itself for its own seed), each "
                        "resumable; RESULTS.md reports their mean over seeds")
    parser.add_argument("--list", action="store_true", help="list the experiments")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: two runs share a 2-core machine best)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--skip_test", action="store_true", help="train only")
    parser.add_argument("--test_only", action="store_true",
                        help="test again without training: the run's best_model.tar where "
                        "this machine has it, else the shipped models/NAME.safetensors")
    parser.add_argument("--prepare_data", action="store_true", help="only make the benchmarks "
                        "of image folders that the experiments (NAME's, or all) read")
    # Split at "--" here: argparse gives a trailing nargs="*" positional nothing once an
    # option stands between it and NAME (``NAME --skip_test -- --precision bf16``).
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.extra = argv[cut + 1:]
    if args.skip_test and args.test_only:
        parser.error("--skip_test and --test_only exclude each other")
    if args.prepare_data:
        for name in [args.name] if args.name else EXPERIMENTS:
            prepare_benchmarks(name)
        return 0
    if args.list or not args.name:
        for name, entry in EXPERIMENTS.items():
            print(f"{name}  [{entry.group}]\n    {entry.train}")
        return 0
    seeds = args.seeds if args.seeds else [None]
    if args.seeds and (len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0):
        parser.error(f"--seeds takes distinct seeds >= 0, got {' '.join(map(str, args.seeds))}")
    base = args.name
    for seed in seeds:
        if seed is not None:
            args.name = seed_run(base, seed)
            print(f"{base}, seed {seed}: run {args.name}", flush=True)
        # One results.run per run at a time: a second would move or interleave the first's
        # records (its train.py locks the checkpoint folder below this one).
        lock = RunLock(run_folder(args.name))
        lock.acquire()
        try:
            code = run_experiment(args)
        finally:
            lock.release()
        if code != 0:
            return code
    return 0


def run_name(name: str) -> str:
    """argparse's check of NAME: an experiment or a seed of one."""
    try:
        experiment(name)
    except KeyError:
        close = closest(name, EXPERIMENTS)
        hint = f" (did you mean {close}?)" if close else ""
        raise argparse.ArgumentTypeError(f"no experiment {name}{hint}; --list names them")
    return name


def prepare_benchmarks(name: str) -> None:
    """Make the image-folder benchmarks ``name`` needs that are not there yet."""
    from data.benchmarks import OWN_DESCRIPTION
    from data.folder import main as make_benchmark
    for benchmark, folder_args in experiment(name).prepare:
        target = REPO / benchmark
        if (target / OWN_DESCRIPTION).exists():
            continue
        argv = [*folder_args, "--name", target.name, "--data_dir", str(target.parent)]
        if make_benchmark(argv) != 0:
            raise UserError(f"{name}: could not make the benchmark {benchmark} "
                            f"(python -m data.folder {' '.join(argv)})")


def run_experiment(args) -> int:
    folder = run_folder(args.name)
    prepare_benchmarks(args.name)
    if args.test_only:
        return test_again(args)
    lost = set_aside_lost_run(args.name)
    if lost:
        print(f"{args.name}: {lost}", file=sys.stderr)
        record(folder, {"kind": "restart", "note": lost,
                        "at": datetime.datetime.now().isoformat(timespec="seconds")})
    common = experiment(args.name).argv() + ["--device", args.device, "--save_dir",
                                              str(folder), *args.extra]
    resume = ["--resume"] if (checkpoint_folder(args.name) / "last_model.tar").exists() else []
    code = launch("train", args.name, common + ["--final_test", "0", *resume], args.threads)
    if code != 0:
        print(f"train.py stopped with status {code}; see {folder / 'train.log'}; run the same "
              "command again to continue", file=sys.stderr)
        return code
    if args.skip_test:
        return 0
    code = launch("test", args.name, common + test_options(args.name), args.threads)
    if code != 0:
        return code
    best = checkpoints.load_checkpoint(checkpoint_folder(args.name) / "best_model.tar", None)
    MODELS.mkdir(exist_ok=True)
    checkpoints.save_model_file(best, model_file(args.name), args.name)
    print(f"done: {args.name}; model in {model_file(args.name)}; python -m results.report "
          "rebuilds RESULTS.md")
    return 0


def test_options(name: str) -> list[str]:
    """What test.py gets beyond the training options: the protocol's calibration and figures,
    and where its records go."""
    return ["--record_dir", str(record_folder(name)), "--temperature_scaling", "--plot"]


def test_again(args) -> int:
    """Test ``args.name`` again (say, to the full protocol after a shorter test) from its run's
    best model, or from its model file where the checkpoints stayed on another machine; the
    new record is appended, and the report reads the latest."""
    best = checkpoint_folder(args.name) / "best_model.tar"
    if best.exists():
        source = ["--save_dir", str(run_folder(args.name))]
    elif model_file(args.name).exists():
        source = ["--checkpoint", str(model_file(args.name))]
    else:
        raise UserError(f"{args.name}: nothing to test: neither {best} nor "
                        f"{model_file(args.name)} exists")
    argv = experiment(args.name).argv() + ["--device", args.device, *source, *args.extra]
    return launch("test", args.name, argv + test_options(args.name), args.threads)


if __name__ == "__main__":
    sys.exit(run_cli(main))
