"""Files of a run: checkpoint folder, its lock, atomic writes, safe checkpoint loading,
result records.

Every file is read without running code (``torch.load(weights_only=True)``: tensors and plain
containers only), and every write either completes or leaves nothing behind; a failure of
either is one :class:`UserError` line.
"""
from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import math
import os
import re
import socket
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.benchmarks import folder_name
from errors import UserError

# 2: Conv4 reads three channels; format 1 (before) held the one-channel network, now Conv4S.
# 3: loadable with weights_only=True: no numpy RNG state (formats 1-2 held one).
CHECKPOINT_FORMAT = 3

# The numpy types of the RNG state that checkpoints of formats 1 and 2 held. Safe to allow:
# they rebuild an array of numbers, and anything inside still goes through the restricted
# unpickler.
_FORMAT_2_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype,
                     np.dtypes.UInt32DType]

CONVERT_HINT = "python convert_checkpoint.py"


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
        if "/" in opts.checkpoint_suffix or "\0" in opts.checkpoint_suffix:
            raise UserError(f"--checkpoint_suffix {opts.checkpoint_suffix!r}: give a plain name "
                            "(it is appended to the run's folder name; --save_dir says where)")
        name += f"_{opts.checkpoint_suffix}"
    return Path(opts.save_dir) / "checkpoints" / folder_name(opts.dataset) / name


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


class WriteError(UserError):
    """A file of a run could not be written (disk full, folder removed, permissions)."""

    def __init__(self, path: Path, exc: OSError):
        super().__init__(f"could not write {path}: {exc.strerror or exc}")


def write_file(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a reader (or a crash)
    never sees a half-written file, and the previous version survives a failed write. The
    folder must exist: a run folder removed mid-run is an error, not silently made anew."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.chmod(tmp, _file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _note_written(path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        cause = _os_error(exc)
        if cause is not None:
            raise WriteError(path, cause) from None
        raise


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError behind ``exc``: torch.save, for one, answers a full disk with a
    RuntimeError raised while handling the OSError."""
    while exc is not None and not isinstance(exc, OSError):
        exc = exc.__context__
    return exc


def append_text(path: Path, text: str) -> None:
    """Append ``text`` to ``path`` (created if missing), all of it or nothing: a failed write
    is cut back off, so a record file never ends in half a line."""
    append_together([(path, text)])


def append_together(appends: list[tuple[Path, str]]) -> None:
    """Append each text to its file, all of them or none: when one write fails, the files
    already appended to are cut back to their former size, so records kept in two forms (a
    line of results.txt and its results.jsonl record) never disagree."""
    done: list[tuple[int, int, Path | None]] = []  # descriptor, size before, path if created
    try:
        for path, text in appends:
            existed = os.path.exists(path)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _file_mode())
            except OSError as exc:
                raise WriteError(path, exc) from None
            done.append((fd, os.fstat(fd).st_size, None if existed else Path(path)))
            data = text.encode()
            try:
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            except OSError as exc:
                raise WriteError(path, exc) from None
        for path, _ in appends:
            _note_written(path)
    except WriteError:
        for fd, size, created in done:
            os.ftruncate(fd, size)
            if created is not None:
                created.unlink(missing_ok=True)
        raise
    finally:
        for fd, _, _ in done:
            os.close(fd)


def json_line(record: dict) -> str:
    """``record`` as one line of strict JSON: a non-finite number (which JSON cannot hold and
    strict parsers reject) is written as null."""
    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value
    return json.dumps(finite(record), allow_nan=False) + "\n"


def save_checkpoint(state: dict, path: Path) -> None:
    write_file(path, lambda f: torch.save({"format": CHECKPOINT_FORMAT, **state}, f))


def write_text(path: Path, text: str) -> None:
    write_file(path, lambda f: f.write(text.encode()))


class RunLock:
    """An exclusive lock on a run folder, held while a run writes there: a second run into
    the same folder stops at once instead of interleaving its records and checkpoints with
    the first's. ``flock`` locks belong to the open file, so the operating system releases
    them when the last descriptor of it closes, however the process ends: a killed run leaves
    no stale lock. A forked child (a decoding worker) would inherit that descriptor and hold
    the lock after its parent died, so every child closes its copy as it starts (``_HELD``);
    an executed program never gets it (``os.open`` descriptors are not inheritable)."""

    NAME = ".run.lock"

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self.fd: int | None = None
        self.created: list[Path] = []
        self.written: set[Path] = set()  # the files of the folder written under this lock

    def acquire(self) -> None:
        """Lock the folder, creating it if need be; refused in one line if another process
        holds it."""
        ensure_writable(self.folder)
        self.created = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        fd = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, _file_mode())
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.read(fd, 300).decode(errors="replace").strip()
                    os.close(fd)
                    self._remove_created()
                    raise UserError(
                        f"{self.folder} is in use by another run ({holder or 'a process'}); "
                        "two runs in one folder would overwrite each other's checkpoints and "
                        "records: wait for it to end, or use another --checkpoint_suffix or "
                        "--save_dir") from None
                # A holder that was releasing removed the file we opened: lock the new one.
                if os.path.exists(self.path) and os.path.samestat(os.fstat(fd),
                                                                  os.stat(self.path)):
                    break
                os.close(fd)
            started = datetime.datetime.now().isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.write(fd, f"process {os.getpid()} on {socket.gethostname()}, since "
                         f"{started}\n".encode())
        except OSError as exc:  # a full disk, say: no lock file left to keep the folder
            if fd is not None:
                self.path.unlink(missing_ok=True)
                os.close(fd)
            self._remove_created()
            raise UserError(f"cannot write to {self.folder}: {exc.strerror or exc}") from None
        self.fd = fd
        _HELD.add(self)
        _remove_temporaries(self.folder)

    def release(self, discard_written: bool = False) -> None:
        """Unlock; folders that :meth:`acquire` created and that stayed empty are removed (a
        start refused before any work leaves nothing behind). ``discard_written`` first
        removes every file written into the folder under the lock: a run that failed before
        it saved anything worth resuming."""
        if self.fd is None:
            return
        if discard_written:
            for path in self.written:
                path.unlink(missing_ok=True)
        self.written = set()
        self.path.unlink(missing_ok=True)  # while still locked: see acquire
        os.close(self.fd)
        self.fd = None
        _HELD.discard(self)
        self._remove_created()

    def _drop_in_child(self) -> None:
        """In a forked child: close the inherited descriptor, leaving the lock (and the lock
        file) to the parent alone."""
        os.close(self.fd)
        self.fd = None
        self.created = []

    def _remove_created(self) -> None:
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:  # not empty (the run wrote there), or gone
                break
        self.created = []


# write_file's temporary files (mkstemp: ".NAME." and 8 characters) of a run's own files.
_TEMPORARY = re.compile(r"\.(.+\.(?:tar|json|jsonl))\.[A-Za-z0-9_]{8}")


def _remove_temporaries(folder: Path) -> None:
    """Remove what writes killed mid-way (kill -9, power loss) left in a run folder: its
    lock is held, so no write of another run is under way there."""
    left = [p for p in Path(folder).iterdir() if _TEMPORARY.fullmatch(p.name)]
    for path in left:
        path.unlink(missing_ok=True)
    if left:
        print(f"note: removed {len(left)} temporary file(s) that interrupted writes left in "
              f"{folder} ({', '.join(p.name for p in left[:3])})", flush=True)


_HELD: set[RunLock] = set()  # the locks this process holds


def _note_written(path: Path) -> None:
    folder = os.path.abspath(Path(path).parent)
    for lock in _HELD:
        if os.path.abspath(lock.folder) == folder:
            lock.written.add(Path(path))


def _drop_held_locks() -> None:
    for lock in _HELD:
        lock._drop_in_child()
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_held_locks)


def load_safely(path: Path, what: str):
    """``torch.load`` that cannot run code: only tensors and plain containers are rebuilt
    (and the numpy RNG state of checkpoints of formats 1-2). A file that names any other
    Python object (which a plain ``torch.load`` would call, whatever it does) is refused in
    one line, with the way to convert a file one trusts."""
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
        names = _unsafe_globals(path)
        if names:
            raise UserError(
                f"{what} {path} is not a plain checkpoint: it names Python objects beyond "
                f"tensors and plain containers ({', '.join(names[:3])}), which loading would "
                f"run, so it was not loaded; if you trust its source, `{CONVERT_HINT} "
                f"{path} NEW_FILE` converts it") from None
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


def _unsafe_globals(path: Path) -> list[str]:
    """The Python objects a pickle file names that the safe loader does not allow (read
    from its opcodes, nothing is run)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _FORMAT_2_GLOBALS}
    return [n for n in names if n not in allowed]


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
    import config
    from methods import METHODS
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

    from data.benchmarks import find
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


def _load_state(module: torch.nn.Module, state: dict, what: str) -> None:
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
    _load_state(model, state["model"], f"checkpoint {path} does not fit the requested model")


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
    _load_state(feature, state, f"--hm_feature_net_path {path} does not fit the backbone")
    return int(epoch)


def append_result(record_dir: Path, line: str, record: dict) -> None:
    """Append one human-readable line to results.txt and one JSON record to results.jsonl,
    both or neither."""
    ensure_writable(record_dir)
    try:
        Path(record_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(record_dir, exc) from None
    append_together([(record_dir / "results.jsonl", json_line(record)),
                     (record_dir / "results.txt", line + "\n")])


def progress(iterable, total: int, desc: str, shown: bool = True):
    """A progress bar on an interactive terminal; nothing in logs (tqdm's ``disable=None``)
    nor where ``shown`` is False (the ranks other than 0)."""
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True,
                disable=None if shown else True)
