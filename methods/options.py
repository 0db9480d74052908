"""How an option is declared, once: a dataclass field with its default, its help text, its
*scope* (see cli/config.py's docstring) and what argparse needs beyond its type. A method declares
its own options so (:class:`methods.hypermaml.HyperOptions`), and config.Options gathers them
with the runs' options into the command line of train.py and test.py."""
from __future__ import annotations

from dataclasses import field
from typing import Any


def option(default: Any, help: str, scope: str = "run", **argparse_kwargs: Any) -> Any:
    metadata = {"help": help, "scope": scope, "argparse": argparse_kwargs}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)
