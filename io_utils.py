"""Files of a run: checkpoint folder, atomic writes, checkpoint loading, result records."""
from __future__ import annotations

import json
import os
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
    """Create ``folder`` and prove a file can be written there, before any work starts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to {folder}: {exc.strerror or exc}") from None


def _atomic(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a reader (or a crash)
    never sees a half-written file, and the previous version survives a failed write."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
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
        raise UserError(f"no checkpoint at {path}; train first (same --dataset, --method, "
                        "--n_shot, --train_n_way, --checkpoint_suffix and --save_dir)")
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


def load_model_state(model: torch.nn.Module, state: dict, path: Path) -> None:
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) or first[0]
        raise UserError(f"checkpoint {path} does not fit the requested model: {detail}") from None


def append_result(record_dir: Path, line: str, record: dict) -> None:
    """Append one human-readable line to results.txt and one JSON record to results.jsonl."""
    ensure_writable(record_dir)
    with open(record_dir / "results.txt", "a") as f:
        f.write(line + "\n")
    with open(record_dir / "results.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def progress(iterable, total: int, desc: str, shown: bool = True):
    """A progress bar on an interactive terminal; nothing in logs (tqdm's ``disable=None``)
    nor where ``shown`` is False (the ranks other than 0)."""
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True,
                disable=None if shown else True)
