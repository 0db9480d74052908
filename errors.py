"""The one exception type the entry points turn into a one-line message and a non-zero exit."""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """Bad input from the user (arguments, files, checkpoints, data not prepared).

    The message is a complete sentence that says what is wrong and what to do; train.py and
    test.py print it on one line and exit with status 1, without a traceback.
    """


def run_cli(run: Callable[[], int]) -> int:
    """Run an entry point's body: a :class:`UserError` becomes one ``error:`` line on stderr
    and exit status 1."""
    try:
        return run()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
