"""Episodic data: preparation of the raw files, the decoded image store, episode sampling.

:func:`prepared_data_dir` and :func:`split_sampler` are the one data factory that train.py and
test.py share.
"""
from __future__ import annotations

import os
from pathlib import Path

from cli.errors import UserError


def prepared_data_dir(opts, benchmark) -> Path:
    """The data root of ``opts``, preparing the datasets of ``benchmark`` (``--dataset``'s)
    first if they are not.

    Preparation downloads the public files, or takes them from ``--data_source`` /
    ``$FSL_DATA_SOURCE`` (a folder laid out as ``../shared/data``); ``--no_download`` turns it
    off and makes a missing dataset an error that names the script to run.
    """
    from data.prepare import default_data_dir, is_prepared, prepare

    data_dir = Path(opts.data_dir) if opts.data_dir else default_data_dir()
    if benchmark.own:  # a folder of your own images: its filelists are written
        return data_dir
    source = opts.data_source or os.environ.get("FSL_DATA_SOURCE")
    for name in benchmark.datasets:
        if is_prepared(data_dir, name):
            continue
        if opts.no_download:
            where = f" --data_dir {data_dir}" if opts.data_dir else ""
            raise UserError(f"dataset {name} is not prepared in {data_dir}: run "
                            f"bash filelists/{name}/download_{name}.sh [--source DIR]{where}, "
                            "or drop --no_download (with --data_source DIR offline)")
        origin = f"from {Path(source) / name}" if source else "by downloading the public files"
        print(f"Dataset {name} is not prepared in {data_dir}: preparing it {origin} ...",
              flush=True)
        prepare(name, data_dir, Path(source) / name if source else None)
    return data_dir


def split_sampler(opts, benchmark, data_dir: Path, split: str, n_way: int, wanted_query: int,
                  seed: int, device, announce=print):
    """An :class:`~data.episodes.EpisodeSampler` over ``split`` of ``benchmark``
    (``--dataset``'s), with the image channels the backbone ``opts.model`` reads, its images
    cropped to the benchmark's input size (augmented on the base split with ``--train_aug``)."""
    from backbones import BACKBONES
    from data.episodes import EpisodeSampler, fitting_query_count
    from data.store import load_split

    images = load_split(data_dir, benchmark, split)
    n_query = fitting_query_count(images, opts.n_shot, wanted_query)
    if n_query < wanted_query:
        announce(f"note: {split} classes have {images.min_count} images, so {opts.n_shot}-shot "
                 f"episodes get {n_query} queries per class instead of {wanted_query}")
    return EpisodeSampler(images, n_way, opts.n_shot, n_query, seed, device,
                          BACKBONES[opts.model].input_channels,
                          crop=benchmark.image_size,
                          augment=opts.train_aug and split == "base")
