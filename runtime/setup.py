"""One way from the options to what an entry point runs, shared by train.py, test.py (and
train.py's final test), predict.py and the benchmarks:

1. :func:`settle`: the options of a saved run (a checkpoint or model file) adopted, the
   dataset- and method-dependent defaults resolved once, the options the method does not read
   noted, the method's checks passed; the benchmark looked up once and returned as an object;
2. :func:`choose_compute`: how the tasks compute on the device (:class:`Compute`), refused
   before any work where the device lacks it;
3. :func:`build_method`: the method on its backbone, with the saved weights if any;
4. :func:`samplers`: the episode samplers of the splits asked for, the data prepared first.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

import data
from backbones import BACKBONES
from cli import config
from cli.errors import UserError
from data.benchmarks import Benchmark, find
from methods import METHODS, options_ignored_by
from methods.meta_learner import MetaLearner
from runtime.distributed import World
from storage.checkpoints import load_model_state

# Options a resumed run takes from where it runs now, not from the checkpoint.
NOT_RESUMED = ("resume", "save_dir", "device", "dist_timeout")


def settle(opts: config.Options, given: set[str], entry: str, saved: dict | None = None,
           source: str = "", say=print, benchmark: Benchmark | None = None
           ) -> tuple[config.Options, Benchmark]:
    """The options ``entry`` ("train" or "test"; predict.py tests) runs with, and their
    benchmark (``benchmark``, where the caller has it: a model file's image form).

    With ``saved`` (the state of a checkpoint or model file, read from ``source``), its model
    options are taken (a conflicting one given is refused) and so are its inference options
    not given; a resumed training run also continues every run and training option not given
    again, and a test tests on the classes per episode the model learnt unless told otherwise.
    """
    method = saved["config"]["method"] if saved is not None else opts.method
    ignored = options_ignored_by(method)
    if saved is not None:
        config.adopt_saved(opts, saved["config"], given, source, saved.get("former_names"),
                           ignored)
        if entry == "train":
            for f in config.option_fields(("run", "train")):
                if (f.name in saved["config"] and f.name not in given
                        and f.name not in NOT_RESUMED):
                    setattr(opts, f.name, saved["config"][f.name])
        elif "test_n_way" not in given:
            opts.test_n_way = opts.train_n_way
    benchmark = find(opts.dataset) if benchmark is None else benchmark
    opts = config.resolve(opts, entry, benchmark)
    config.note_ignored(opts, given, ignored, say)
    if entry == "test" and opts.adaptation:
        METHODS[opts.method].adapt_more_at_test(opts, config.adaptation_steps(opts))
    METHODS[opts.method].check_options(opts)
    return opts, benchmark


@dataclass(frozen=True)
class Compute:
    """How a run's tasks compute, chosen once (:func:`choose_compute`) and handed to the
    method and the loops: the device, whether the tasks of a meta-batch go through the
    backbone together (``batched``) or one at a time, the arithmetic, the memory layout."""
    device: torch.device
    batched: bool = False
    precision: str = "fp32"
    channels_last: bool = False

    @property
    def engine(self) -> str:
        """The ``--engine`` these settings are: loop or batched."""
        return "batched" if self.batched else "loop"

    @contextmanager
    def arithmetic(self):
        """The arithmetic of ``precision`` for the forward passes inside (and the backward
        passes of their graphs): bf16 autocast, or TF32 allowed on CUDA; fp32 is full float32
        on every device (cuDNN would otherwise use TF32 for convolutions)."""
        device_type = self.device.type
        if self.precision == "bf16":
            with torch.autocast(device_type, dtype=torch.bfloat16):
                yield
            return
        if device_type != "cuda":
            yield
            return
        tf32 = self.precision == "tf32"
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            with torch.backends.cudnn.flags(enabled=True, allow_tf32=tf32):
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved


def choose_compute(opts, device) -> Compute:
    """The :class:`Compute` of ``opts`` on ``device``; an option the device or the method
    cannot run is refused in one line, before any work."""
    device = torch.device(device)
    return Compute(device, choose_engine(opts, device) == "batched",
                   choose_precision(opts, device),
                   choose_memory_format(opts, device) == "channels_last")


def choose_engine(opts, device: torch.device) -> str:
    """``--engine auto`` is batched on CUDA where the method has it (on a CPU the per-task
    loop is faster: the batch's activations leave the cache); an explicit choice must exist."""
    batched = METHODS[opts.method].supports_batched_engine
    if opts.engine == "batched" and not batched:
        raise UserError(f"--engine batched is not available for {opts.method}; use loop")
    if opts.engine == "auto":
        return "batched" if batched and device.type == "cuda" else "loop"
    return opts.engine


def choose_precision(opts, device: torch.device) -> str:
    """``--precision``, where the device has it: TF32 is a CUDA format, and bf16 autocast runs
    on CUDA and on CPUs (slowly on those without native bf16 arithmetic)."""
    if opts.precision == "tf32" and device.type != "cuda":
        raise UserError(f"--precision tf32 is a CUDA GPU format; on {device.type} use fp32 or "
                        "bf16")
    if opts.precision == "bf16" and device.type not in ("cpu", "cuda"):
        raise UserError(f"--precision bf16 runs on cpu and cuda, not {device.type}")
    return opts.precision


def choose_memory_format(opts, device: torch.device) -> str:
    """``auto``: channels_last on a CPU for the methods that run faster in it (their
    ``prefers_channels_last_on_cpu``), contiguous elsewhere."""
    if opts.memory_format != "auto":
        return opts.memory_format
    preferred = METHODS[opts.method].prefers_channels_last_on_cpu
    return "channels_last" if device.type == "cpu" and preferred else "contiguous"


def bf16_kernels(device) -> str:
    """Which bf16 arithmetic ``device`` runs. On a CPU it follows the instructions it has (AMX
    tiles, AVX512-BF16, or neither, where bf16 is converted to float32 and back), and each
    rounds differently: a bf16 test repeats a record query for query only on the same kind."""
    kind = getattr(device, "type", str(device))
    if kind != "cpu":
        return kind
    has = lambda name: getattr(torch.cpu, name, lambda: False)()  # noqa: E731 (private, 2.4+)
    if has("_is_amx_tile_supported"):
        return "amx"
    if has("_is_avx512_bf16_supported"):
        return "avx512_bf16"
    return f"no bf16 units ({torch.backends.cpu.get_cpu_capability()})"


def build_method(opts, benchmark: Benchmark, compute: Compute, saved: dict | None = None,
                 source: Path | str = "") -> MetaLearner:
    """The method ``opts.method`` on a fresh backbone ``opts.model`` for the benchmark's
    images, in the compute's memory layout, on its device; with ``saved`` (a checkpoint's or
    model file's state, read from ``source``) its trained weights. The initial weights come
    from torch's global generator, which the caller seeds."""
    backbone = BACKBONES[opts.model](benchmark.image_size)
    model = METHODS[opts.method].from_options(opts, backbone)
    if compute.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = model.to(compute.device)
    if saved is not None:
        load_model_state(model, saved, source)
    return model


def samplers(opts, benchmark: Benchmark, device, world: World,
             wanted: dict[str, tuple[str, int, int]], say=None) -> dict:
    """An episode sampler for each ``name: (split, n_way, queries per class)`` of ``wanted``,
    seeded by ``--seed``, the benchmark's data prepared first where it is not (one process
    per machine prepares it, and caches; the others wait). Notes go to ``say`` (default:
    the world's main process prints them)."""
    with world.local_main_first():
        data_dir = data.prepared_data_dir(opts, benchmark)
        return {name: data.split_sampler(opts, benchmark, data_dir, split, n_way, n_query,
                                          opts.seed, device, say or world.say)
                for name, (split, n_way, n_query) in wanted.items()}
