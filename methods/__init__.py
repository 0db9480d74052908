"""The registry of methods, shared by train.py and test.py."""
import torch

from backbones import BACKBONES
from data.benchmarks import find
from errors import UserError
from methods.bayes_hmaml import BayesHMAML
from methods.hypermaml import HyperMAML
from methods.maml import MAML, MAMLApprox

METHODS = {
    "maml": MAML,
    "maml_approx": MAMLApprox,
    "hyper_maml": HyperMAML,
    "bayes_hmaml": BayesHMAML,
}


def options_ignored_by(method: str) -> set[str]:
    """Options that other methods read and ``method`` does not (e.g. --hn_hidden_size for
    maml): given to it, they are noted and ignored, never compared with a checkpoint."""
    every = set().union(*(m.own_options() for m in METHODS.values()))
    return every - METHODS[method].own_options()


def build_method(opts, device=None):
    """The method named by ``opts.method`` with a fresh backbone ``opts.model``, its task
    engine chosen for ``device``."""
    backbone = BACKBONES[opts.model](find(opts.dataset).image_size)
    model = METHODS[opts.method].from_options(opts, backbone)
    model.engine = choose_engine(opts, device)
    model.precision = choose_precision(opts, device)
    if choose_memory_format(opts, device) == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    return model


def choose_memory_format(opts, device) -> str:
    """``auto``: channels_last on a CPU for the methods that run faster in it (their
    ``prefers_channels_last_on_cpu``), contiguous elsewhere."""
    if opts.memory_format != "auto":
        return opts.memory_format
    on_cpu = device is None or getattr(device, "type", str(device)) == "cpu"
    preferred = METHODS[opts.method].prefers_channels_last_on_cpu
    return "channels_last" if on_cpu and preferred else "contiguous"


def choose_precision(opts, device) -> str:
    """``--precision``, where the device has it: TF32 is a CUDA format, and bf16 autocast runs
    on CUDA and on CPUs (slowly on those without native bf16 arithmetic)."""
    kind = "cpu" if device is None else getattr(device, "type", str(device))
    if opts.precision == "tf32" and kind != "cuda":
        raise UserError(f"--precision tf32 is a CUDA GPU format; on {kind} use fp32 or bf16")
    if opts.precision == "bf16" and kind not in ("cpu", "cuda"):
        raise UserError(f"--precision bf16 runs on cpu and cuda, not {kind}")
    return opts.precision


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


def choose_engine(opts, device) -> str:
    """``--engine auto`` is batched on CUDA where the method has it (on a CPU the per-task
    loop is faster: the batch's activations leave the cache); an explicit choice must exist."""
    batched = METHODS[opts.method].supports_batched_engine
    if opts.engine == "batched" and not batched:
        raise UserError(f"--engine batched is not available for {opts.method}; use loop")
    if opts.engine == "auto":
        on_gpu = device is not None and getattr(device, "type", str(device)) == "cuda"
        return "batched" if batched and on_gpu else "loop"
    return opts.engine
