"""The one exception type the entry points turn into a one-line message and a non-zero exit."""
from __future__ import annotations

import difflib
import os
import sys
from typing import Callable, NoReturn


class UserError(Exception):
    """Bad input from the user (arguments, files, checkpoints, data not prepared).

    The message is a complete sentence that says what is wrong and what to do; train.py and
    test.py print it on one line and exit with status 1, without a traceback.
    """


def closest(word: str, choices) -> str | None:
    """The choice ``word`` was most likely meant to be, ignoring case (``cub`` -> ``CUB``),
    or None when none is close."""
    by_lower = {c.lower(): c for c in choices}
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=1)
    return by_lower[found[0]] if found else None


def run_cli(run: Callable[[], int]) -> int:
    """Run an entry point's body: a :class:`UserError` becomes one ``error:`` line on stderr
    and exit status 1; so does an operating-system error no layer below turned into one (a
    disk that filled, a folder that vanished: the file and the reason are what matter)."""
    try:
        return run()
    except UserError as exc:
        report(exc)
        return 1
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        report(UserError(f"could not access{where}: {exc.strerror or exc}"))
        return 1


def report(exc: UserError) -> None:
    print(f"error: {exc}", file=sys.stderr, flush=True)


def exit_now(exc: UserError) -> NoReturn:
    """Report ``exc`` and end the process at once with status 1, skipping the interpreter's
    teardown (for states where that teardown itself can crash, see runtime/distributed.py)."""
    report(exc)
    sys.stdout.flush()
    os._exit(1)
