"""Peak memory of predict.py against the number of queries: classified in batches of
``--query_batch`` (its default, or the sizes given) and, side by side in the same run, all in
one batch. Each call is a process of its own, as a user runs it, and its peak RSS is read from
the kernel's accounting of that process alone (``wait4``).

    python -m bench.predict_memory                        # characters: HyperMAML, EMNIST novel
    python -m bench.predict_memory --queries 200,1000 \\
        --model models/hyper_maml_cub100_1shot_24.safetensors   # photographs: CUB-100 novel

The support set is the first ``n_shot`` images of the model's first ``n_way`` novel classes
and the queries are the novel split's other images, one of each class in turn (as links in a
temporary folder: nothing is written beside the data) until there are enough. Printed per
query count:
peak RSS and wall time in batches and in one batch, their ratio, the memory per query of the
growth between the smallest and largest count, and whether the batched answers are those of
one batch (BatchNorm takes each batch's statistics, so a few may differ). Each configuration
runs ``--repeats`` times and its largest peak is reported.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cli.errors import UserError, run_cli
from data.benchmarks import find
from data.store import images_root, read_filelist
from storage import atomic, checkpoints

REPO = Path(__file__).resolve().parents[1]

CHARACTER_MODEL = REPO / "models" / "hyper_maml_cross_char_1shot_128.safetensors"
ONE_BATCH = 100_000  # predict.py's largest --query_batch: every query in one batch


def episode_files(model: Path, data_dir: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """The support files per class and the query files in the order they are taken, from the
    model's novel split."""
    config = checkpoints.load_model_file(model)["config"] if model.suffix == ".safetensors" \
        else checkpoints.load_checkpoint(model, None)["config"]
    folder, filelist_name = find(config["dataset"]).splits["novel"]
    folder = Path(folder) if Path(folder).is_absolute() else data_dir / folder
    filelist = read_filelist(folder / f"{filelist_name}.json")
    root = images_root(folder)
    by_class: dict[int, list[Path]] = {}
    for name, label in zip(filelist["image_names"], filelist["image_labels"]):
        by_class.setdefault(label, []).append(root / name)
    labels = sorted(by_class)[:config["train_n_way"]]
    support = {f"class_{label}": by_class[label][:config["n_shot"]] for label in labels}
    chosen = {p for files in support.values() for p in files}
    # Round the classes, as a mixed folder of queries: a batch of one class alone would
    # measure BatchNorm's dependence on the batch, not the memory.
    remaining = [[p for p in by_class[label] if p not in chosen] for label in sorted(by_class)]
    pool = [p for turn in itertools.zip_longest(*remaining) for p in turn if p is not None]
    return support, pool


def link_episode(folder: Path, support: dict[str, list[Path]], queries: list[Path]) -> None:
    for name, files in support.items():
        (folder / "support" / name).mkdir(parents=True)
        for k, path in enumerate(files):
            (folder / "support" / name / f"{k}{path.suffix}").symlink_to(path)
    (folder / "queries").mkdir()
    for q, path in enumerate(queries):
        (folder / "queries" / f"{q:06d}{path.suffix}").symlink_to(path)


def predict(model: Path, folder: Path, query_batch: int | None, device: str) -> dict:
    """One predict.py process: its peak RSS (MiB), wall time and predictions."""
    command = [sys.executable, str(REPO / "predict.py"), str(model), str(folder / "support"),
               str(folder / "queries"), "--json", "--device", device,
               "--query_statistics", "batch"]  # the batches' memory is what is measured
    if query_batch is not None:
        command += ["--query_batch", str(query_batch)]
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, cwd=REPO,
                                   env={**os.environ, "TQDM_DISABLE": "1"})
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0), err.seek(0)
        if process.returncode != 0:
            raise UserError(f"predict.py exited with {process.returncode}: "
                            f"{err.read().decode(errors='replace').strip()[-500:]}")
        rows = json.loads(out.read())
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "seconds": seconds,
            "predictions": [row["prediction"] for row in rows]}


def run(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=CHARACTER_MODEL)
    parser.add_argument("--data_dir", type=Path, default=REPO / "filelists",
                        help="where the built-in benchmarks' data was prepared")
    parser.add_argument("--queries", default="250,1000,4000",
                        help="query counts, comma-separated (default 250,1000,4000)")
    parser.add_argument("--query_batch", type=int, default=None,
                        help="predict.py's --query_batch (default: its own default)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="processes per configuration, the largest peak reported")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)
    try:
        counts = sorted({int(c) for c in args.queries.split(",")})
    except ValueError:
        parser.error(f"--queries {args.queries}: give whole numbers, comma-separated")
    if not counts or counts[0] < 1 or args.repeats < 1:
        parser.error("--queries and --repeats: give counts of at least 1")
    rows = []
    print(f"predict.py {args.model.name} on {args.device}, --query_batch "
          f"{args.query_batch or 'default'} against one batch (peak RSS of each process)")
    print(f"{'queries':>8} {'batched MiB':>12} {'one batch MiB':>14} {'ratio':>6} "
          f"{'batched s':>10} {'one batch s':>12}  same answers")
    support, pool = episode_files(args.model, args.data_dir)
    for count in counts:
        queries = [pool[i % len(pool)] for i in range(count)]
        with tempfile.TemporaryDirectory() as tmp:
            link_episode(Path(tmp), support, queries)
            batched, whole = ([predict(args.model, Path(tmp), size, args.device)
                               for _ in range(args.repeats)]
                              for size in (args.query_batch, ONE_BATCH))
        # The peak of a run varies by a few hundred MiB with the allocator and the threads'
        # timing: the largest of the repeats is the bound a user meets.
        batched, whole = (max(runs, key=lambda r: r["peak_rss_mib"]) for runs in (batched, whole))
        same = sum(a == b for a, b in zip(batched["predictions"], whole["predictions"]))
        row = {"queries": count, "query_batch": args.query_batch,
               "batched_peak_rss_mib": round(batched["peak_rss_mib"], 1),
               "one_batch_peak_rss_mib": round(whole["peak_rss_mib"], 1),
               "batched_seconds": round(batched["seconds"], 2),
               "one_batch_seconds": round(whole["seconds"], 2), "same_answers": same}
        rows.append(row)
        print(f"{count:>8,} {row['batched_peak_rss_mib']:>12,.0f} "
              f"{row['one_batch_peak_rss_mib']:>14,.0f} "
              f"{row['one_batch_peak_rss_mib'] / row['batched_peak_rss_mib']:>5.2f}x "
              f"{row['batched_seconds']:>10.1f} {row['one_batch_seconds']:>12.1f}  "
              f"{same:,} / {count:,}", flush=True)
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        extra = last["queries"] - first["queries"]
        for kind in ("batched", "one_batch"):
            grown = last[f"{kind}_peak_rss_mib"] - first[f"{kind}_peak_rss_mib"]
            print(f"{kind.replace('_', ' ')}: peak RSS grew {grown:,.0f} MiB from "
                  f"{first['queries']:,} to {last['queries']:,} queries "
                  f"({grown * 1024 / extra:,.0f} KiB a query)")
    if args.json:
        atomic.write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(run))
