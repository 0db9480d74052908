"""Compare two trained models on the same test episodes, episode by episode:

    python -m results.compare A B [--seed S --repeat R --n_episode N] [--test] [--json]

A and B are each an experiment or run name of RESULTS.md (its recorded test, else its model
file), a model file (``.safetensors``) or a run checkpoint (``.tar``). Episodes are a pure
function of (seed, split, index), so two tests with the same benchmark, ways, shots, seeds and
episode count ran on the very same episodes (their recorded digests are compared too); the
difference of the two accuracies is then taken episode by episode, which cancels how hard each
episode is and needs several times fewer episodes than comparing two means. Recorded
per-episode counts are read where they cover the episodes asked for (the first N of each
seed's stream); otherwise, or with ``--test``, each model is tested anew by test.py.

What the result covers: the test sampling of these two trained models, not their training
seeds (docs/comparing.md).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cli.errors import UserError, run_cli
from reports import statistics
from results.experiments import experiment
from results.run import checkpoint_folder, model_file, record_folder
from storage import checkpoints

REPO = Path(__file__).resolve().parents[1]
MODEL_FILES = (checkpoints.MODEL_SUFFIX, ".tar")


@dataclass
class Side:
    """One of the two things compared: where its recorded test and its model are."""
    label: str
    record: dict | None
    model: Path | None

    def config(self) -> dict:
        if self.record is not None:
            return self.record["config"]
        return checkpoints.load_checkpoint(self.model, None)["config"]


@dataclass(frozen=True)
class Episodes:
    """Which test episodes: the benchmark's split, the task shape and the streams."""
    dataset: str
    split: str
    n_way: int
    n_shot: int
    seeds: tuple[int, ...]
    n_episode: int

    def describe(self) -> str:
        seeds = (f"seed {self.seeds[0]}" if len(self.seeds) == 1 else
                 f"seeds {self.seeds[0]}-{self.seeds[-1]}")
        return (f"{self.dataset} {self.split}, {self.n_way}-way {self.n_shot}-shot, "
                f"{len(self.seeds)} x {self.n_episode} = {len(self.seeds) * self.n_episode:,} "
                f"episodes ({seeds})")


def side(name: str) -> Side:
    """What ``name`` is: a model file or checkpoint, or a run of RESULTS.md."""
    path = Path(name)
    if path.suffix in MODEL_FILES:
        if not path.is_file():
            raise UserError(f"no such model file: {name}")
        return Side(str(path), None, path)
    try:
        experiment(name)
    except KeyError:
        raise UserError(f"{name} is neither a model file ({', '.join(MODEL_FILES)}) nor an "
                        "experiment of RESULTS.md (python -m results.run --list)") from None
    records = record_folder(name) / "results.jsonl"
    record = (json.loads(records.read_text().splitlines()[-1])
              if records.exists() and records.read_text().strip() else None)
    model = next((p for p in (model_file(name), checkpoint_folder(name) / "best_model.tar")
                  if p.exists()), None)
    if record is None and model is None:
        raise UserError(f"{name} has neither a recorded test nor a model file: python -m "
                        f"results.run {name} trains and tests it")
    return Side(name, record, model)


def recorded_episodes(record: dict) -> Episodes:
    return Episodes(record["dataset"], record["split"], record["n_way"], record["n_shot"],
                    tuple(record["seeds"]), record["n_episode"])


def wanted_episodes(args, a: Side, b: Side) -> Episodes:
    """The episodes asked for: the options given, the rest from the first recorded test
    (both sides' tests if neither option is given), else test.py's defaults; the benchmark,
    ways and shots from the models, which must agree."""
    configs = {s.label: s.config() for s in (a, b)}
    shape = {}
    for key in ("dataset", "n_shot", "train_n_way"):
        values = {label: config[key] for label, config in configs.items()}
        if len(set(map(str, values.values()))) > 1:
            raise UserError(f"{a.label} and {b.label} cannot be tested on the same episodes: "
                            f"--{key} {values[a.label]} against {values[b.label]}")
        shape[key] = values[a.label]
    records = [s.record for s in (a, b) if s.record is not None and not args.test]
    if len(records) == 2 and args.seed is None and args.repeat is None and \
            args.n_episode is None and recorded_episodes(records[0]) != \
            recorded_episodes(records[1]):
        first, second = (recorded_episodes(r) for r in records)
        raise UserError(f"{a.label} and {b.label} were tested on different episodes "
                        f"({first.describe()} against {second.describe()}): give --seed, "
                        "--repeat and --n_episode that both tests cover, or --test to test "
                        "both models anew on the same episodes")
    base = recorded_episodes(records[0]) if records else None
    seed = args.seed if args.seed is not None else (base.seeds[0] if base else 0)
    repeat = args.repeat if args.repeat is not None else (len(base.seeds) if base else 5)
    n_episode = args.n_episode if args.n_episode is not None else (base.n_episode if base
                                                                   else 600)
    return Episodes(shape["dataset"], args.split, shape["train_n_way"], shape["n_shot"],
                    tuple(range(seed, seed + repeat)), n_episode)


def from_record(record: dict, wanted: Episodes) -> list[float] | None:
    """The per-episode accuracies (%) of ``wanted`` out of ``record``, if it covers them:
    the same benchmark, split and task shape, each wanted seed tested, with at least as many
    episodes (episode i of a stream is the same whatever the count)."""
    have = recorded_episodes(record)
    if (have.dataset, have.split, have.n_way, have.n_shot) != \
            (wanted.dataset, wanted.split, wanted.n_way, wanted.n_shot):
        return None
    by_seed = {r["seed"]: r for r in record["repeats"]}
    if not set(wanted.seeds) <= set(by_seed) or wanted.n_episode > have.n_episode:
        return None
    return [100.0 * correct / by_seed[seed]["episode_queries"]
            for seed in wanted.seeds for correct in by_seed[seed]["episode_correct"]
            [:wanted.n_episode]]


def test_anew(one: Side, wanted: Episodes, args) -> dict:
    """Test ``one``'s model with test.py on the ``wanted`` episodes; its record."""
    if one.model is None:
        raise UserError(f"{one.label}: its recorded test does not cover {wanted.describe()}, "
                        "and it has no model file to test")
    with tempfile.TemporaryDirectory() as records:
        argv = [sys.executable, str(REPO / "test.py"), "--checkpoint", str(one.model),
                "--split", wanted.split, "--seed", str(wanted.seeds[0]), "--repeat",
                str(len(wanted.seeds)), "--n_episode", str(wanted.n_episode), "--record_dir",
                records, "--device", args.device]
        argv += ["--data_dir", args.data_dir] if args.data_dir else []
        print(f"testing {one.label} on {wanted.describe()} ...", file=sys.stderr, flush=True)
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
            raise UserError(f"testing {one.label} failed: {' '.join(last)}")
        return json.loads((Path(records) / "results.jsonl").read_text().splitlines()[-1])


def accuracies(one: Side, wanted: Episodes, args) -> tuple[list[float], dict, str]:
    """``one``'s per-episode accuracies on ``wanted``, the record they come from and how."""
    if one.record is not None and not args.test:
        found = from_record(one.record, wanted)
        if found is not None:
            return found, one.record, f"recorded test of {one.record['time']}"
    record = test_anew(one, wanted, args)
    found = from_record(record, wanted)
    if found is None:  # test.py took the benchmark, ways or shots from the model file
        raise UserError(f"{one.label} was tested on {recorded_episodes(record).describe()}, "
                        f"not {wanted.describe()}")
    return found, record, "tested now"


def same_draws(first: dict, second: dict, wanted: Episodes) -> bool:
    """Whether the two records' digests of the wanted streams agree (where both have them,
    for streams tested to the same length)."""
    digests = []
    for record in (first, second):
        digests.append({r["seed"]: r.get("episodes_sha") for r in record["repeats"]
                        if record["n_episode"] == wanted.n_episode})
    return all(digests[0][s] == digests[1][s] for s in wanted.seeds
               if digests[0].get(s) and digests[1].get(s))


def compare(args) -> dict:
    a, b = side(args.a), side(args.b)
    wanted = wanted_episodes(args, a, b)
    acc_a, record_a, how_a = accuracies(a, wanted, args)
    acc_b, record_b, how_b = accuracies(b, wanted, args)
    if not same_draws(record_a, record_b, wanted):
        raise UserError(f"{a.label} and {b.label} drew different episodes for the same seeds "
                        "(their records' episode digests differ: another benchmark folder "
                        "under the same name?); --test tests both anew here")
    result = statistics.paired(acc_a, acc_b)
    return {"a": a.label, "b": b.label, "sources": [how_a, how_b],
            "episodes": wanted.describe(), "n": len(acc_a),
            "acc_a": statistics.t_interval(acc_a), "acc_b": statistics.t_interval(acc_b),
            "result": result}


def p_text(p: float) -> str:
    return "< 1e-300" if p == 0 else f"= {p:.2g}"


def report(found: dict) -> str:
    result, diff = found["result"], found["result"].difference
    verdict = ((f"{found['a'] if diff.mean > 0 else found['b']} is better on these episodes"
                if result.significant else "no significant difference on these episodes")
               + f" (two-sided, at the {100 * (1 - statistics.CONFIDENCE):.0f}% level)")
    return "\n".join([
        f"A: {found['a']} ({found['sources'][0]})",
        f"B: {found['b']} ({found['sources'][1]})",
        f"episodes: {found['episodes']}, the same for both",
        f"A {found['acc_a']} %, B {found['acc_b']} % (each: 95% over these episodes)",
        f"A - B = {diff.mean:+.2f} +- {diff.half:.2f} points (paired 95%, Student-t over "
        f"{found['n']:,} episodes); paired t-test p {p_text(result.p_t)}, Wilcoxon "
        f"signed-rank p {p_text(result.p_wilcoxon)}",
        f"{verdict}. Compared as two independent means the interval would be +- "
        f"{result.unpaired_half:.2f}: pairing needs {result.episodes_saved():.1f}x fewer "
        "episodes for the same precision.",
        "This covers the test sampling of these two trained models, not their training "
        "seeds: see docs/comparing.md."])


def as_json(found: dict) -> dict:
    result = found["result"]
    return {"a": found["a"], "b": found["b"], "sources": found["sources"],
            "episodes": found["episodes"], "n_episodes": found["n"],
            "acc_a": vars(found["acc_a"]), "acc_b": vars(found["acc_b"]),
            "difference": vars(result.difference), "p_t": result.p_t,
            "p_wilcoxon": result.p_wilcoxon, "significant": result.significant,
            "unpaired_half": result.unpaired_half}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m results.compare", description=__doc__.split("\n\n")[0],
        epilog="Names and files: python -m results.run --list; models/README.md.")
    parser.add_argument("a", metavar="A", help="experiment or run name, model file or .tar")
    parser.add_argument("b", metavar="B", help="the same, for the other side")
    parser.add_argument("--seed", type=int, help="first test seed (default: the record's, "
                        "else 0)")
    parser.add_argument("--repeat", type=int, help="test streams (default: the record's, "
                        "else 5)")
    parser.add_argument("--n_episode", type=int, help="episodes per stream (default: the "
                        "record's, else 600)")
    parser.add_argument("--split", default="novel", choices=("novel", "val", "base"))
    parser.add_argument("--test", action="store_true", help="test both models anew instead of "
                        "reading their records")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--data_dir", help="where the prepared benchmarks are (test.py's "
                        "--data_dir; default: filelists/)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    for option in ("seed", "repeat", "n_episode"):
        value = getattr(args, option)
        if value is not None and value < (0 if option == "seed" else 1):
            parser.error(f"--{option} must be {'>= 0' if option == 'seed' else '>= 1'}")
    if args.split != "novel" and not args.test:
        args.test = True  # the recorded tests are of the novel split
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    found = compare(args)
    print(json.dumps(as_json(found)) if args.json else report(found))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
