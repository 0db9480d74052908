"""A run's folder: where it is (``checkpoint_dir``), and the lock a run holds on it while it
writes there, so that two runs never interleave their checkpoints and records."""
from __future__ import annotations

import datetime
import fcntl
import os
import re
import socket
from pathlib import Path

from cli.errors import UserError
from data.benchmarks import folder_name
from storage.atomic import WRITE_WATCHERS, ensure_writable, file_mode


def checkpoint_dir(opts) -> Path:
    """``save/checkpoints/{dataset}/{model}_{method}_{n}way_{k}shot[_{suffix}]``, as the
    reference names it."""
    name = f"{opts.model}_{opts.method}_{opts.train_n_way}way_{opts.n_shot}shot"
    if opts.checkpoint_suffix:
        if "/" in opts.checkpoint_suffix or "\0" in opts.checkpoint_suffix:
            raise UserError(f"--checkpoint_suffix {opts.checkpoint_suffix!r}: give a plain name "
                            "(it is appended to the run's folder name; --save_dir says where)")
        name += f"_{opts.checkpoint_suffix}"
    return Path(opts.save_dir) / "checkpoints" / folder_name(opts.dataset) / name


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
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
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
    """Registered with storage.atomic: a file written into a locked run folder is noted."""
    folder = os.path.abspath(Path(path).parent)
    for lock in _HELD:
        if os.path.abspath(lock.folder) == folder:
            lock.written.add(Path(path))


def _drop_held_locks() -> None:
    for lock in _HELD:
        lock._drop_in_child()
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_held_locks)
WRITE_WATCHERS.append(_note_written)
