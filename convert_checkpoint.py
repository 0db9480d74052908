"""Rewrite a checkpoint or feature-network file that train.py and test.py refuse to load (it
names Python objects beyond tensors and plain containers) in the form they load safely:

    python convert_checkpoint.py FILE NEW_FILE

FILE is read without running code either: torch's restricted unpickler, allowed only the
numpy arrays, scalars and dtypes and the ``argparse.Namespace`` that research code saves
beside its weights (:data:`CONVERTIBLE`). What FILE holds is kept as data: numpy arrays become
tensors, numpy scalars numbers, a Namespace a dict; a file naming any other Python object is
refused in one line naming it, before anything in it is built. NEW_FILE is checked to load
with the safe loader before the command reports success; FILE is left as it was.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from cli.errors import UserError, run_cli
from storage import atomic, checkpoints


# What research code saves beside its weights, and what this converter turns into plain data:
# numpy arrays (rebuilt from their bytes, dtype and shape), numpy scalars and an argparse
# Namespace. The restricted unpickler builds these and refuses every other object.
CONVERTIBLE = [np._core.multiarray._reconstruct, np._core.multiarray.scalar, np.ndarray,
               np.dtype, argparse.Namespace,
               *(getattr(np.dtypes, name) for name in np.dtypes.__all__)]


def plain(value, where: str = "the file"):
    """``value`` as tensors and plain containers, or a :class:`UserError` naming the first
    part that is neither."""
    if isinstance(value, np.generic):  # before float: numpy's float64 is a float
        return value.item()
    if value is None or isinstance(value, (torch.Tensor, bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return [plain(v, f"{where}[{i}]") for i, v in enumerate(value.tolist())]
        return torch.from_numpy(value.copy())
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, dict):
        return {plain(k, f"a key of {where}"): plain(v, f"{where}[{k!r}]")
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise UserError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which "
                    "has no plain form here; convert that part by hand")


def convert(source: Path, target: Path) -> None:
    if target.exists():
        raise UserError(f"{target} exists; name a new file (the original is never replaced)")
    try:
        with torch.serialization.safe_globals(CONVERTIBLE):
            content = torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{source}: no such file") from None
    except Exception as exc:
        others = checkpoints.unsafe_globals(source, CONVERTIBLE)
        if others:
            raise UserError(f"{source} names Python objects that have no plain form here "
                            f"({', '.join(others[:3])}); nothing in it was run: convert those "
                            "parts by hand") from None
        raise UserError(f"{source} could not be read ({type(exc).__name__}: {exc})") from None
    converted = plain(content)
    atomic.write_file(target, lambda f: torch.save(converted, f))
    try:
        checkpoints.load_safely(target, "the converted file")
    except UserError:
        target.unlink()
        raise
    print(f"wrote {target}: loads without running code")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="FILE is read without running code: see the "
                                     "module's help.")
    parser.add_argument("file", type=Path, help="the file that the toolkit refused")
    parser.add_argument("new_file", type=Path, help="where to write the converted file")
    args = parser.parse_args(argv)
    return run_cli(lambda: convert(args.file, args.new_file) or 0)


if __name__ == "__main__":
    sys.exit(main())
