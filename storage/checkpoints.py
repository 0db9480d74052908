"""Checkpoints (``.tar``) and model files (``.safetensors``): written atomically, read without
running code (``torch.load(weights_only=True)``: tensors and plain containers only; safetensors
holds nothing that runs), checked against their checksums, upgraded from older formats; and the
backbone alone, in this toolkit's format or the reference's. Every failure is one
:class:`UserError` line."""
from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from cli import config
from cli.errors import UserError
from data.benchmarks import find
from methods import METHODS
from storage.atomic import write_file

# 2: Conv4 reads three channels; format 1 (before) held the one-channel network, now Conv4S.
# 3: loadable with weights_only=True: no numpy RNG state (formats 1-2 held one).
CHECKPOINT_FORMAT = 3

# The numpy types of the RNG state that checkpoints of formats 1 and 2 held. Safe to allow:
# they rebuild an array of numbers, and anything inside still goes through the restricted
# unpickler.
_FORMAT_2_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype,
                     np.dtypes.UInt32DType]

CONVERT_HINT = "python convert_checkpoint.py"


def save_checkpoint(state: dict, path: Path) -> None:
    write_file(path, lambda f: torch.save({"format": CHECKPOINT_FORMAT, **state}, f))


def load_safely(path: Path, what: str):
    """``torch.load`` that cannot run code: only tensors and plain containers are rebuilt
    (and the numpy RNG state of checkpoints of formats 1-2). A file that names any other
    Python object (which a plain ``torch.load`` would call, whatever it does) is refused in
    one line, with the converter that rewrites numpy and argparse content as data."""
    path = Path(path)
    try:
        damaged = _failed_checksum(path)
        if damaged:
            raise UserError(f"{what} {path} is damaged: its record {damaged} does not match the "
                            "checksum written with it, so its weights are not what was saved; "
                            "use another copy, or an earlier checkpoint of the run")
        with torch.serialization.safe_globals(_FORMAT_2_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder, not a file") from None
    except PermissionError as exc:
        raise UserError(f"{what} {path} cannot be read: {exc.strerror}") from None
    except Exception as exc:
        names = unsafe_globals(path)
        if names:
            raise UserError(
                f"{what} {path} is not a plain checkpoint: it names Python objects beyond "
                f"tensors and plain containers ({', '.join(names[:3])}), which loading would "
                f"run, so it was not loaded; where they are numpy arrays or an argparse "
                f"Namespace, `{CONVERT_HINT} {path} NEW_FILE` converts it, running nothing "
                "either") from None
        raise UserError(f"{what} {path} is unreadable ({type(exc).__name__}); it may be "
                        "corrupt, truncated or not a PyTorch file") from None


def _failed_checksum(path: Path) -> str | None:
    """The first record of a checkpoint whose bytes fail the CRC-32 its zip archive keeps
    with it, or None. torch.load does not check them: flipped bits in a weight record load as
    other weights without a word."""
    if not zipfile.is_zipfile(path):
        return None  # not torch's zip format: torch.load says what it is
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"index ({exc})"


def unsafe_globals(path: Path, allowed: list = _FORMAT_2_GLOBALS) -> list[str]:
    """The Python objects a pickle file names beyond ``allowed`` (by default what the safe
    loader allows), read from its opcodes: nothing is run."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return []
    allowed_names = {f"{g.__module__}.{g.__qualname__}" for g in allowed}
    return [n for n in names if n not in allowed_names]


def load_checkpoint(path: Path, method: str | None) -> dict:
    """Read a run checkpoint (``.tar``) or a model file (``.safetensors``) of ``method``
    (None: of any method); every failure is one clear line."""
    path = Path(path)
    if not path.exists():
        runs = sorted(p.parent.name for p in path.parent.parent.glob("*/last_model.tar"))
        there = f" (runs in {path.parent.parent}: {', '.join(runs)})" if runs else ""
        raise UserError(f"no checkpoint at {path}; train first (same --dataset, --method, "
                        f"--n_shot, --train_n_way, --checkpoint_suffix and --save_dir){there}")
    if path.suffix == MODEL_SUFFIX:
        state = load_model_file(path)
    else:
        state = load_safely(path, "checkpoint")
    try:
        saved_method = state["config"]["method"]
        state["model"]
    except (KeyError, TypeError):
        raise UserError(f"checkpoint {path} is not one of this toolkit (no config and model "
                        "in it)") from None
    config.check_saved(state["config"], str(path), list(METHODS))
    if method is not None and saved_method != method:
        raise UserError(f"checkpoint {path} holds a {saved_method} model, not {method}")
    return _upgrade(state, path)


# A model file: the trained network's weights in safetensors (a format that holds tensors
# and a string table, nothing that runs), the run's configuration in its metadata.
MODEL_SUFFIX = ".safetensors"
MODEL_FORMAT = "few-shot-hypernets model 1"


def save_model_file(state: dict, path: Path, experiment: str = "") -> None:
    """The network of checkpoint ``state`` alone (no optimiser state), float32 as trained,
    with everything test.py and predict.py need to rebuild it: the run's configuration, the
    epoch and its validation accuracy, the schedule state (warm-up phase)."""
    from safetensors.torch import save

    tensors = {name: value.detach().contiguous() for name, value in state["model"].items()}
    # The input form, so that predict.py reads images right where the benchmark folder of an
    # image-folder dataset is not at hand (another machine, a clean clone).
    benchmark = find(state["config"]["dataset"])
    metadata = {"format": MODEL_FORMAT, "experiment": experiment,
                "weights_sha256": _weights_digest(tensors),
                "config": json.dumps(state["config"]), "epoch": str(state["epoch"]),
                "best_val_acc": repr(float(state["best_val_acc"])),
                "schedule": json.dumps(state.get("schedule", {})),
                "image_form": json.dumps({"image_size": benchmark.image_size,
                                          "colour": benchmark.colour})}
    write_file(path, lambda f: f.write(save(tensors, metadata)))


def load_model_file(path: Path) -> dict:
    """A model file as the checkpoint state it came from (without optimiser state)."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            model = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"model file {path} is unreadable ({exc}); it may be corrupt or "
                        "truncated") from None
    if metadata.get("format") != MODEL_FORMAT:
        raise UserError(f"{path} is a safetensors file but not a model file of this toolkit "
                        f"(its metadata has no format {MODEL_FORMAT!r})")
    # safetensors checks the layout, not the bytes: a flipped bit in a weight loads silently.
    # Files written before the digest (the shipped ones, whose SHA-256 models/README.md lists
    # and git verifies) have none.
    digest = metadata.get("weights_sha256")
    if digest is not None and digest != _weights_digest(model):
        raise UserError(f"model file {path} is damaged: its weights do not match the checksum "
                        "written with them (a changed byte, a bad copy); copy it again")
    try:
        state = {"format": CHECKPOINT_FORMAT, "config": json.loads(metadata["config"]),
                 "model": model, "epoch": int(metadata["epoch"]),
                 "best_val_acc": float(metadata["best_val_acc"]),
                 "schedule": json.loads(metadata["schedule"]),
                 "image_form": json.loads(metadata.get("image_form", "null")),
                 "experiment": metadata.get("experiment", "")}
    except (KeyError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise UserError(f"model file {path} has unreadable metadata ({type(exc).__name__}: "
                        f"{str(exc)[:80]}); it was not written by this toolkit, or was "
                        "altered") from None
    form = state["image_form"]
    if not isinstance(state["schedule"], dict) or not (form is None or (
            isinstance(form, dict) and isinstance(form.get("colour"), bool)
            and type(form.get("image_size")) is int and 8 <= form["image_size"] <= 1024)):
        raise UserError(f"model file {path} has unreadable metadata (its schedule or image "
                        "form is not one this toolkit writes); it was not written by this "
                        "toolkit, or was altered")
    return state


def _weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the weights: each tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _upgrade(state: dict, path: Path) -> dict:
    """Read a checkpoint of an older format as what the current format holds.

    ``state["former_names"]`` maps an option to the value an older format called it by, so
    the command line that trained the run (``--model Conv4``) still names it.
    """
    state["former_names"] = {}
    if state.get("format", 1) < 2 and state["config"].get("model") == "Conv4":
        state["config"]["model"] = "Conv4S"
        state["former_names"]["model"] = "Conv4"
        print(f"note: {path} was written before Conv4 read three channels; it holds the "
              "one-channel network, now called Conv4S, and runs as that")
    if "rng" in state:
        state["rng"].pop("numpy", None)  # formats 1-2; nothing draws from numpy's global RNG
    return state


def load_state(module: torch.nn.Module, state: dict, what: str) -> None:
    """``module.load_state_dict(state)``, a mismatch told in one line that starts with
    ``what``: how many keys are missing, unexpected or of another shape, and the first few
    of each."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [f"{k} (saved {list(state[k].shape)}, model {list(expected[k].shape)})"
                for k in expected if k in state and state[k].shape != expected[k].shape]
    # A weight saved as integers, booleans or complex numbers would be cast without a word
    # (load_state_dict copies into the model's dtype): garbage weights, confident answers.
    retyped = [f"{k} (saved {str(state[k].dtype).removeprefix('torch.')}, model "
               f"{str(expected[k].dtype).removeprefix('torch.')})" for k in expected
               if k in state and isinstance(state[k], torch.Tensor)
               and _number_kind(state[k]) != _number_kind(expected[k])]
    problems = [_few(len(keys), kind, keys) for keys, kind in
                ((missing, "missing"), (unexpected, "unexpected"), (reshaped, "of another shape"),
                 (retyped, "of another kind of number")) if keys]
    if problems:
        raise UserError(f"{what}: {'; '.join(problems)}")
    module.load_state_dict(state)


def _number_kind(tensor: torch.Tensor) -> str:
    return ("complex" if tensor.is_complex() else "float" if tensor.is_floating_point() else
            "bool" if tensor.dtype == torch.bool else "integer")


def _few(count: int, kind: str, keys: list[str], shown: int = 3) -> str:
    more = f", ... ({count - shown} more)" if count > shown else ""
    return f"{count} key{'s' if count != 1 else ''} {kind}: {', '.join(keys[:shown])}{more}"


def load_model_state(model: torch.nn.Module, state: dict, path: Path) -> None:
    load_state(model, state["model"], f"checkpoint {path} does not fit the requested model")


def save_feature_net(feature: torch.nn.Module, epoch: int, path: Path) -> None:
    """The backbone alone, as the reference's ``--maml_save_feature_network`` writes it:
    ``{"epoch": epoch, "state": backbone state_dict}``."""
    write_file(path, lambda f: torch.save({"epoch": epoch, "state": feature.state_dict()}, f))


# The reference's Conv4 state_dict keys (ConvBlock ``C`` and ``BN`` of ``trunk.{i}``) -> ours.
_REFERENCE_KEY = re.compile(r"^trunk\.(\d+)\.(C|BN)\.(weight|bias)$")


def load_feature_net(feature: torch.nn.Module, path: Path) -> int:
    """Initialise ``feature`` from a saved backbone and return the epoch it was saved at.

    Takes a feature network file of this toolkit or of the reference (``{"epoch", "state"}``;
    the reference's keys ``trunk.{i}.C.*`` / ``trunk.{i}.BN.*`` are mapped to ours and its
    unused BatchNorm running statistics dropped), or a run checkpoint of this toolkit (its
    ``feature.*`` weights)."""
    saved = load_safely(path, "--hm_feature_net_path")
    try:
        if "model" in saved:  # a whole run checkpoint
            state = {k[len("feature."):]: v for k, v in saved["model"].items()
                     if k.startswith("feature.")}
            epoch = saved.get("epoch", -1)
        else:
            state, epoch = saved["state"], saved.get("epoch", -1)
    except (KeyError, TypeError, AttributeError):
        raise UserError(f"--hm_feature_net_path {path} is not a saved feature network (no "
                        "state or model in it)") from None
    if any(k.startswith("trunk.") for k in state):
        state = {f"blocks.{m[1]}.{0 if m[2] == 'C' else 1}.{m[3]}": v
                 for k, v in state.items() if (m := _REFERENCE_KEY.match(k))}
    load_state(feature, state, f"--hm_feature_net_path {path} does not fit the backbone")
    return int(epoch)
