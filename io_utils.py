"""Files of a run: checkpoint folder, atomic writes, checkpoint loading, result records."""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from errors import UserError

# 2: Conv4 reads three channels; format 1 (before) held the one-channel network, now Conv4S.
CHECKPOINT_FORMAT = 2


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an explicit choice must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA GPU")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for but torch sees no Apple GPU")
    return torch.device(name)


def checkpoint_dir(opts) -> Path:
    """``save/checkpoints/{dataset}/{model}_{method}_{n}way_{k}shot[_{suffix}]``, as the reference."""
    name = f"{opts.model}_{opts.method}_{opts.train_n_way}way_{opts.n_shot}shot"
    if opts.checkpoint_suffix:
        name += f"_{opts.checkpoint_suffix}"
    return Path(opts.save_dir) / "checkpoints" / opts.dataset / name


def ensure_writable(folder: Path) -> None:
    """Prove, before any work starts, that ``folder`` can be created and written, without
    creating it: a start refused later leaves no empty folder behind. The probe file goes into
    the nearest folder that exists, and is removed."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is a file")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-probe"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to {folder}: {exc.strerror or exc}") from None


def _file_mode() -> int:
    """The mode a plain ``open`` gives a new file under the current umask (0644 under 022):
    mkstemp's 0600 would make run folders unreadable to the rest of a group."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic(path: Path, write) -> None:
    """Write through a temporary file in the same folder (created if need be), then rename: a
    reader (or a crash) never sees a half-written file, and the previous version survives a
    failed write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.chmod(tmp, _file_mode())
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict, path: Path) -> None:
    _atomic(path, lambda f: torch.save({"format": CHECKPOINT_FORMAT, **state}, f))


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def load_checkpoint(path: Path, method: str) -> dict:
    """Read a checkpoint of ``method``; every failure is one clear line."""
    if not path.exists():
        runs = sorted(p.parent.name for p in path.parent.parent.glob("*/last_model.tar"))
        there = f" (runs in {path.parent.parent}: {', '.join(runs)})" if runs else ""
        raise UserError(f"no checkpoint at {path}; train first (same --dataset, --method, "
                        f"--n_shot, --train_n_way, --checkpoint_suffix and --save_dir){there}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        saved_method = state["config"]["method"]
        state["model"]
    except Exception as exc:
        raise UserError(f"checkpoint {path} is unreadable or not one of this toolkit "
                        f"({type(exc).__name__}); it may be corrupt or truncated") from None
    if saved_method != method:
        raise UserError(f"checkpoint {path} holds a {saved_method} model, not {method}")
    return _upgrade(state, path)


def _upgrade(state: dict, path: Path) -> dict:
    """Read a checkpoint of an older format as the network it holds.

    ``state["former_names"]`` maps an option to the value an older format called it by, so
    the command line that trained the run (``--model Conv4``) still names it.
    """
    state["former_names"] = {}
    if state.get("format", 1) < 2 and state["config"].get("model") == "Conv4":
        state["config"]["model"] = "Conv4S"
        state["former_names"]["model"] = "Conv4"
        print(f"note: {path} was written before Conv4 read three channels; it holds the "
              "one-channel network, now called Conv4S, and runs as that")
    return state


def _load_state(module: torch.nn.Module, state: dict, what: str) -> None:
    """``module.load_state_dict(state)``, a mismatch told in one line that starts with
    ``what``: load_state_dict's message has a header line, then the missing/unexpected keys
    and the size mismatches, which are what the user needs to see."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in lines[1:3]) or lines[0]
        raise UserError(f"{what}: {detail}") from None


def load_model_state(model: torch.nn.Module, state: dict, path: Path) -> None:
    _load_state(model, state["model"], f"checkpoint {path} does not fit the requested model")


def save_feature_net(feature: torch.nn.Module, epoch: int, path: Path) -> None:
    """The backbone alone, as the reference's ``--maml_save_feature_network`` writes it:
    ``{"epoch": epoch, "state": backbone state_dict}``."""
    _atomic(path, lambda f: torch.save({"epoch": epoch, "state": feature.state_dict()}, f))


# The reference's Conv4 state_dict keys (ConvBlock ``C`` and ``BN`` of ``trunk.{i}``) -> ours.
_REFERENCE_KEY = re.compile(r"^trunk\.(\d+)\.(C|BN)\.(weight|bias)$")


def load_feature_net(feature: torch.nn.Module, path: Path) -> int:
    """Initialise ``feature`` from a saved backbone and return the epoch it was saved at.

    Takes a feature network file of this toolkit or of the reference (``{"epoch", "state"}``;
    the reference's keys ``trunk.{i}.C.*`` / ``trunk.{i}.BN.*`` are mapped to ours and its
    unused BatchNorm running statistics dropped), or a run checkpoint of this toolkit (its
    ``feature.*`` weights)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if "model" in saved:  # a whole run checkpoint
            state = {k[len("feature."):]: v for k, v in saved["model"].items()
                     if k.startswith("feature.")}
            epoch = saved.get("epoch", -1)
        else:
            state, epoch = saved["state"], saved.get("epoch", -1)
    except FileNotFoundError:
        raise UserError(f"--hm_feature_net_path {path}: no such file") from None
    except Exception as exc:
        raise UserError(f"--hm_feature_net_path {path} is not a saved feature network "
                        f"({type(exc).__name__})") from None
    if any(k.startswith("trunk.") for k in state):
        state = {f"blocks.{m[1]}.{0 if m[2] == 'C' else 1}.{m[3]}": v
                 for k, v in state.items() if (m := _REFERENCE_KEY.match(k))}
    _load_state(feature, state, f"--hm_feature_net_path {path} does not fit the backbone")
    return int(epoch)


def append_result(record_dir: Path, line: str, record: dict) -> None:
    """Append one human-readable line to results.txt and one JSON record to results.jsonl."""
    ensure_writable(record_dir)
    Path(record_dir).mkdir(parents=True, exist_ok=True)
    with open(record_dir / "results.txt", "a") as f:
        f.write(line + "\n")
    with open(record_dir / "results.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def progress(iterable, total: int, desc: str, shown: bool = True):
    """A progress bar on an interactive terminal; nothing in logs (tqdm's ``disable=None``)
    nor where ``shown`` is False (the ranks other than 0)."""
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True,
                disable=None if shown else True)
