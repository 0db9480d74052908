"""The record files of runs: a test's results (``results.txt`` and ``results.jsonl``, appended
both or neither) and a training run's per-epoch log (``metrics.jsonl``)."""
from __future__ import annotations

import json
from pathlib import Path

from cli.errors import UserError
from storage.atomic import (WriteError, append_text, append_together, ensure_writable, json_line,
                            write_text)


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


class EpochLog:
    """One line of strict JSON per epoch (``metrics.jsonl``, ``delta_params.jsonl``), written
    before the epoch's checkpoints; on resume, lines of epochs the checkpoint does not contain
    (written after it, before an interruption or a failed checkpoint write) are dropped, and
    so is a last line cut short by a killed process."""

    def __init__(self, path, resume_after_epoch: int | None):
        self.path = path
        if resume_after_epoch is None:
            write_text(path, "")
        elif path.exists():
            complete = path.read_text().split("\n")[:-1]  # the part after the last newline
            kept = [line for n, line in enumerate(complete, 1)
                    if line and self._epoch(line, n) <= resume_after_epoch]
            write_text(path, "".join(line + "\n" for line in kept))

    def _epoch(self, line: str, number: int) -> int:
        try:
            epoch = json.loads(line)["epoch"]
            if type(epoch) is int:
                return epoch
        except (ValueError, KeyError, TypeError):
            pass
        raise UserError(f"{self.path}, line {number}, is not an epoch's record (altered or "
                        "damaged); nothing was changed: repair or remove that line, then "
                        "--resume again")

    def append(self, record: dict) -> None:
        append_text(self.path, json_line(record))


class TensorBoardLog:
    """The per-epoch records as TensorBoard scalars, one tag per numeric field of
    metrics.jsonl (``train_loss``, ``val_acc``, ``lr``, ...), at step = epoch: a mirror for
    the viewer most researchers use, metrics.jsonl staying the record. Off (``on`` False)
    where the tensorboard package is not installed: an optional dependency. Nothing is
    written before the first record (a refused start leaves nothing).

    Events after epoch ``purge_after`` that earlier writers left in ``folder`` are hidden by
    TensorBoard (its purge step), as EpochLog drops their lines on resume; -1 hides all."""

    def __init__(self, folder: Path, purge_after: int | None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch says so when tensorboard is missing
            SummaryWriter = None
        self._open = None if SummaryWriter is None else (
            lambda: SummaryWriter(str(folder),
                                  purge_step=None if purge_after is None else purge_after + 1))
        self.writer = None

    @property
    def on(self) -> bool:
        return self._open is not None

    def append(self, record: dict) -> None:
        if self._open is None:
            return
        if self.writer is None:
            self.writer = self._open()
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> "TensorBoardLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
