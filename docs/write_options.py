"""Write docs/options.md, the reference of every option of train.py, test.py and predict.py,
from the code that parses them (config.Options, predict.build_parser):

    python -m docs.write_options          # write the page
    python -m docs.write_options --check  # exit 1 if the committed page is not what it writes
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import itertools
import re
import sys
from pathlib import Path

import predict
from cli import config
from data.benchmarks import BENCHMARKS
from methods import METHODS, options_ignored_by
from storage import atomic

REPO_ROOT = Path(__file__).resolve().parents[1]

PAGE = REPO_ROOT / "docs" / "options.md"
COMMAND = "python -m docs.write_options"

# Which entry points read an option of each scope (cli/config.py's docstring defines the scopes).
ENTRY_POINTS = {
    "run": "train.py, test.py",
    "model": "train.py; test.py: the checkpoint's value (one given must agree)",
    "train": "train.py",
    "test": "test.py",
    "eval": "test.py, train.py's final test",
    "inference": "train.py's validation and final test; test.py, the run's value unless given",
}
ONE_ENTRY = ("train", "test")


def sections() -> list[tuple[str, list[dataclasses.Field]]]:
    """The fields of config.Options under each ``# --- title ---`` comment of the classes
    declaring them (the runs' options and each method's), in order."""
    fields = {f.name: f for f in dataclasses.fields(config.Options)}
    groups: list[tuple[str, list[dataclasses.Field]]] = []
    declaring = [c for c in reversed(config.Options.__mro__) if dataclasses.is_dataclass(c)]
    source = "\n".join(inspect.getsource(c) for c in declaring)
    for line in source.splitlines():
        title = re.match(r"    # --- (.+?) -+$", line)
        name = re.match(r"    (\w+):", line)
        if title:
            groups.append((title.group(1), []))
        elif name and name.group(1) in fields:
            groups[-1][1].append(fields.pop(name.group(1)))
    if fields:
        raise RuntimeError(f"config.Options fields {', '.join(fields)} not found in its source")
    return groups


def resolved_defaults() -> dict[str, list[str]]:
    """What each default that config.resolve fills in depends on, e.g. n_task: [dataset]:
    found by resolving the defaults for every combination of what resolve may read."""
    axes = {"dataset": [next(n for n, b in BENCHMARKS.items() if b.colour == colour)
                        for colour in (False, True)],
            "method": list(METHODS), "entry point": list(ONE_ENTRY), "n_shot": [1, 5]}
    cases = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    for case in cases:
        case["opts"] = config.resolve(config.Options(dataset=case["dataset"],
                                                     method=case["method"],
                                                     n_shot=case["n_shot"]),
                                      case["entry point"])
    defaults, depends = config.Options(), {}
    for f in dataclasses.fields(config.Options):
        if f.name in axes:
            continue
        scope = f.metadata["scope"]
        # An option of one entry point is resolved for that one alone (stop_epoch: train.py).
        mine = [c for c in cases if scope not in ONE_ENTRY or c["entry point"] == scope]
        if all(getattr(c["opts"], f.name) == getattr(defaults, f.name) for c in mine):
            continue
        depends[f.name] = [axis for axis in axes if _varies(mine, f.name, axis)]
    return depends


def _varies(cases: list[dict], name: str, axis: str) -> bool:
    """Whether two cases differing in ``axis`` alone resolve ``name`` to different values."""
    values: dict[tuple, set] = {}
    for c in cases:
        rest = tuple(repr(v) for k, v in c.items() if k not in (axis, "opts"))
        values.setdefault(rest, set()).add(repr(getattr(c["opts"], name)))
    return any(len(v) > 1 for v in values.values())


def cell(text: str) -> str:
    """``text`` as a Markdown table cell: | would end it, * and a _ outside a word would
    start emphasis."""
    return re.sub(r"[|*]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", lambda m: "\\" + m.group(), text)


def code(value) -> str:
    return f"`{value}`" if value != "" else '`""`'


def invocation(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The option as ``-h`` shows it where that lists its values ({adam,sgd}, [BOOL]), else
    its name alone."""
    if action.choices is None and action.metavar is None:
        return action.option_strings[0] if action.option_strings else action.dest
    return parser._get_formatter()._format_action_invocation(action)


def options_table(fields: list[dataclasses.Field], parser: argparse.ArgumentParser,
                  resolved: dict[str, list[str]]) -> list[str]:
    actions = {a.dest: a for a in parser._actions}
    rows = ["| Option | Default | Entry point | Methods | Help |", "|---|---|---|---|---|"]
    for f in fields:
        action = actions[f.name]
        if f.name in config.WHAT_TO_RUN:
            default = "required"
        elif f.name in resolved:
            default = f"{code(action.default)} (by {' and '.join(resolved[f.name])})"
        else:
            default = code(action.default)
        readers = [m for m in METHODS if f.name not in options_ignored_by(m)]
        methods = "all" if len(readers) == len(METHODS) else ", ".join(readers)
        rows.append(f"| {code(invocation(parser, action))} | {default} | "
                    f"{ENTRY_POINTS[f.metadata['scope']]} | {methods} | "
                    f"{cell(f.metadata['help'])} |")
    return rows


def predict_table() -> list[str]:
    parser = predict.build_parser()
    rows = ["| Argument | Default | Help |", "|---|---|---|"]
    for action in parser._actions:
        if action.dest == "help":
            continue
        default = "required" if action.required else code(action.default)
        rows.append(f"| {code(invocation(parser, action))} | {default} | "
                    f"{cell(action.help or '')} |")
    return rows


def page() -> str:
    # train.py's parser: the same options, defaults and choices as test.py's.
    parser = config.build_parser("train", list(METHODS))
    resolved = resolved_defaults()
    lines = [
        "# Options",
        "",
        "This page answers what each option of train.py, test.py and predict.py does, what its "
        "default is and which entry points and methods read it; it is generated from "
        f"config.Options and predict.py's parser by `{COMMAND}`: do not edit it by hand, run "
        "that instead.",
        "",
        "train.py and test.py accept every option in the tables below, so that one command "
        "line serves both, as in the reference's published commands; an option that the entry "
        "point or the method does not read is accepted and ignored. *Default* is argparse's; "
        "one marked *by* something is filled in at start from that, as its help says. "
        "*Entry point* follows the option's scope (see cli/config.py); *Methods* "
        f"lists those of {', '.join(METHODS)} that read it.",
    ]
    for title, fields in sections():
        lines += ["", f"## {title[0].upper()}{title[1:]}", ""]
        lines += options_table(fields, parser, resolved)
    lines += ["", "## predict.py", "",
              "predict.py classifies your own images with a trained model, whose options it "
              "takes from the model file; its own command line:", ""]
    lines += predict_table()
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the "
                        "committed page differs from what this would write")
    args = parser.parse_args(argv)
    text = page()
    if args.check:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE} is out of date: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    atomic.write_text(PAGE, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
