"""What predict.py's two ways of normalising the queries cost in accuracy, side by side on the
same test episodes: each query with the support set alone (``--query_statistics each``, its
default: an answer that does not depend on the other queries) against all of an episode's
queries together (``batch``, the benchmark protocol of test.py).

    python -m bench.query_statistics                                   # HyperMAML 1-shot
    python -m bench.query_statistics --model models/maml_cross_char_1shot_128.safetensors

Prints, for ``--episodes`` novel episodes of the model's benchmark (15 queries a class, seeds as
test.py's first repeat), the accuracy of each way with its Student-t 95% interval over the
episodes, and their paired difference.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cli.errors import run_cli
from data.episodes import TEST_QUERY
from predict import load_model, query_probabilities
from reports import statistics
from runtime import setup
from runtime.device import resolve_device
from runtime.distributed import World
from storage import checkpoints

REPO = Path(__file__).resolve().parents[1]


def accuracies(model_path: Path, episodes: int, device: str, data_dir: str | None = None
               ) -> dict[str, list[float]]:
    """Per episode, the accuracy (%) of each way of normalising the queries."""
    found: dict[str, list[float]] = {"each": [], "batch": []}
    device = resolve_device(device)
    shots = checkpoints.load_checkpoint(model_path, None)["config"]["n_shot"]
    model, opts, benchmark, compute = load_model(model_path, device, shots, "fp32")
    opts.seed, opts.data_dir = 0, data_dir or opts.data_dir
    sampler = setup.samplers(opts, benchmark, device, World(),
                             {"test": ("novel", opts.test_n_way, TEST_QUERY)})["test"]
    for index in range(episodes):
        episode = sampler.episode(index)
        for mode in found:
            predicted = query_probabilities(model, compute, episode, mode == "each").argmax(1)
            right = predicted.cpu() == episode.query_y.cpu()
            found[mode].append(100.0 * float(right.double().mean()))
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path,
                        default=REPO / "models" / "hyper_maml_cross_char_1shot_128.safetensors")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data_dir", help="where the prepared benchmarks are (default "
                        "filelists/)")
    args = parser.parse_args(argv)

    def run() -> int:
        torch.set_num_threads(1)
        found = accuracies(args.model, args.episodes, args.device, args.data_dir)
        for mode, values in found.items():
            print(f"{mode:5s}: {statistics.t_interval(values)} % over {len(values)} episodes")
        difference = statistics.paired(found["each"], found["batch"]).difference
        print(f"each - batch: {difference.mean:+.2f} +- {difference.half:.2f} points (paired "
              f"95%), {args.model.name}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
