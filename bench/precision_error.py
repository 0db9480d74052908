"""What lower precision does to the meta-gradient: the meta-gradient of a few real cross_char
training episodes (published options, the same weights) computed in float32 and under bf16
autocast, each compared with float64:

    python -m bench.precision_error [--method maml,hyper_maml] [--episodes 8] [--json out.json]

Prints, per method and precision, the relative error ||g - g64|| / ||g64|| of the whole
meta-gradient and of its worst layer, the cosine to the float64 gradient and the relative
error of the summed query loss.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bench.throughput import CONFIGS
from cli import config
from data.episodes import TRAIN_QUERY
from methods import METHODS
from runtime import setup
from runtime.distributed import World
from storage import atomic


def meta_gradient(model, episodes, precision: str, dtype: torch.dtype):
    """The meta-gradient (dict of float64 tensors) and the summed query loss."""
    model = model.to(dtype)
    model.zero_grad(set_to_none=True)
    with setup.Compute(torch.device("cpu"), precision=precision).arithmetic():
        results = model.accumulate_meta_gradient(
            [type(e)(e.support_x.to(dtype), e.support_y, e.query_x.to(dtype), e.query_y, e.seed)
             for e in episodes])
    grads = {n: p.grad.double().clone() for n, p in model.named_parameters()
             if p.grad is not None}
    return grads, sum(r.loss for r in results)


def compare(method: str, phase: str, n_episodes: int, data_dir: str | None) -> list[dict]:
    options, epoch = CONFIGS[(method, phase)]
    argv = ["--dataset", "cross_char", "--method", method, "--n_shot", "1", "--device", "cpu",
            *options] + (["--data_dir", data_dir] if data_dir else [])
    opts, benchmark = setup.settle(config.parse("train", list(METHODS), argv)[0], set(), "train")
    sampler = setup.samplers(opts, benchmark, "cpu", World(), {"base": ("base", 5, TRAIN_QUERY)},
                             say=lambda *_: None)["base"]
    episodes = [sampler.episode(i) for i in range(n_episodes)]
    torch.manual_seed(0)
    model = setup.build_method(opts, benchmark, setup.choose_compute(opts, "cpu"))
    model.set_epoch(epoch, 2048)
    exact, exact_loss = meta_gradient(model, episodes, "fp32", torch.float64)
    rows = []
    for precision in ("fp32", "bf16"):
        grads, loss = meta_gradient(model, episodes, precision, torch.float32)
        flat = torch.cat([grads[n].flatten() for n in exact])
        ref = torch.cat([exact[n].flatten() for n in exact])
        # Some gradients are zero in exact arithmetic (conv biases before BatchNorm, the
        # class-shared hypernetwork bias under softmax): their float64 value is rounding noise,
        # so they are left out of the per-layer comparison.
        per_layer = {n: ((grads[n] - exact[n]).norm() / exact[n].norm()).item()
                     for n in exact if exact[n].norm() > 1e-6 * ref.norm()}
        worst = max(per_layer, key=per_layer.get)
        rows.append({"method": method, "phase": phase, "precision": precision,
                     "episodes": n_episodes,
                     "relative_error": ((flat - ref).norm() / ref.norm()).item(),
                     "cosine": torch.nn.functional.cosine_similarity(flat, ref, dim=0).item(),
                     "worst_layer": worst, "worst_layer_error": per_layer[worst],
                     "loss_relative_error": abs(loss - exact_loss) / abs(exact_loss)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="maml,hyper_maml")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    unmeasured = sorted(set(args.method.split(",")) - {name for name, _ in CONFIGS})
    if unmeasured:
        parser.error(f"--method {','.join(unmeasured)}: no configuration in CONFIGS of "
                     "bench/throughput.py")
    rows = []
    print(f"{'method':<12}{'phase':<10}{'precision':<10}{'rel. error':>11}{'cosine':>10}"
          f"{'loss rel. err':>15}  worst layer")
    for method in args.method.split(","):
        phases = [p for (m, p) in CONFIGS if m == method]
        for phase in phases:
            for row in compare(method, phase, args.episodes, args.data_dir):
                rows.append(row)
                print(f"{method:<12}{phase:<10}{row['precision']:<10}"
                      f"{row['relative_error']:>11.2e}{row['cosine']:>10.6f}"
                      f"{row['loss_relative_error']:>15.2e}  {row['worst_layer']} "
                      f"{row['worst_layer_error']:.2e}", flush=True)
    print(f"meta-gradient of {args.episodes} cross_char 1-shot training episodes, against "
          "float64 with the same weights and episodes")
    if args.json:
        atomic.write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
