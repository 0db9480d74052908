"""Writes that either complete or leave nothing behind, and the check that a folder can be
written before any work starts; a failure is one :class:`WriteError` line.

The ground floor of the toolkit's files: it knows nothing of runs, data or models, so that the
data store and the figures can use it as the checkpoints do.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable

from cli.errors import UserError

# Called with the path of every file written here: a held run lock notes the files written
# into its folder, so that a run that fails before its first checkpoint can remove them
# (storage.run_folder registers it; this module does not know about run folders).
WRITE_WATCHERS: list[Callable[[Path], None]] = []


class WriteError(UserError):
    """A file could not be written (disk full, folder removed, permissions)."""

    def __init__(self, path: Path, exc: OSError):
        super().__init__(f"could not write {path}: {exc.strerror or exc}")


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


def file_mode() -> int:
    """The mode a plain ``open`` gives a new file under the current umask (0644 under 022):
    mkstemp's 0600 would make run folders unreadable to the rest of a group."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_file(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a reader (or a crash)
    never sees a half-written file, and the previous version survives a failed write. The
    folder must exist: a run folder removed mid-run is an error, not silently made anew."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.chmod(tmp, file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _written(path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        cause = _os_error(exc)
        if cause is not None:
            raise WriteError(path, cause) from None
        raise


def write_text(path: Path, text: str) -> None:
    write_file(path, lambda f: f.write(text.encode()))


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
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, file_mode())
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
            _written(path)
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


def _written(path) -> None:
    for watcher in WRITE_WATCHERS:
        watcher(Path(path))
