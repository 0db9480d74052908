"""Test a meta-trained method: ``python test.py --dataset cross_char --method maml ...``.

Loads ``best_model.tar`` (or ``{save_iter}.tar``) of the run the options name, rebuilds the
model from the configuration saved in it, and reports the accuracy over ``--repeat`` runs of
600 episodes (seeds seed .. seed+repeat-1) with 95% confidence intervals, as the reference
(see testing.py).
"""
from __future__ import annotations

import functools
import sys

from cli import config
from cli.errors import run_cli
from methods import METHODS
from reports import testing
from runtime import allocator, distributed


def run(argv=None) -> int:
    opts, given = config.parse("test", list(METHODS), argv)
    return distributed.run_in_world(opts, functools.partial(test, opts, given))


def test(opts, given: set[str], device, world: distributed.World) -> int:
    # Not in testing.test_checkpoint: train.py's final test runs it with train.py's options.
    config.note_other_entry("test", given, world.say)
    return testing.test_checkpoint(opts, given, device, world)


def main(argv=None) -> int:
    return run_cli(lambda: run(argv))


if __name__ == "__main__":
    allocator.keep_freed_memory()
    sys.exit(main())
