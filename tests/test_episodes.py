"""Episodes on the real data: shapes, labels, determinism, split disjointness, rotations,
preprocessing and the on-disk image cache."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TEST_DEVICE
from data.augment import stored_size
from data.episodes import EpisodeSampler, fitting_query_count
from data.store import (CHANNEL_MEAN, CHANNEL_STD, CHARACTER_FORM, ImageStore, load_image,
                        load_split, read_filelist)

IMAGE_SIZE = CHARACTER_FORM.size
RESIZE_TO = stored_size(IMAGE_SIZE)
CACHE_NAME = CHARACTER_FORM.cache_name
from cli.errors import UserError


@pytest.fixture(scope="module")
def omniglot_base(data_dir):
    return load_split(data_dir, "omniglot", "base", verbose=False)


@pytest.fixture(scope="module")
def emnist_novel(data_dir):
    return load_split(data_dir, "cross_char", "novel", verbose=False)


@pytest.mark.parametrize("n_way,n_shot,n_query", [(5, 1, 16), (5, 5, 15), (20, 1, 5)])
def test_episode_shapes_and_labels(omniglot_base, n_way, n_shot, n_query):
    sampler = EpisodeSampler(omniglot_base, n_way, n_shot, n_query, seed=3, device=TEST_DEVICE)
    episode = sampler.episode(11)
    assert episode.support_x.device.type == TEST_DEVICE.type
    assert episode.support_x.shape == (n_way * n_shot, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert episode.query_x.shape == (n_way * n_query, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert episode.support_x.dtype == torch.float32
    # Class-major labels 0..n_way-1: all shots of class 0 first.
    assert episode.support_y.tolist() == [c for c in range(n_way) for _ in range(n_shot)]
    assert episode.query_y.tolist() == [c for c in range(n_way) for _ in range(n_query)]


def test_episode_draws_distinct_classes_and_images(omniglot_base):
    sampler = EpisodeSampler(omniglot_base, 20, 5, 15, seed=0)
    for index in range(50):
        classes, picks, _ = sampler.draw(index)
        assert len(set(classes.tolist())) == 20
        for row in picks:
            assert len(set(row.tolist())) == 20  # 5 shots + 15 queries, no image twice


@pytest.mark.parametrize("channels", [3, 1])
def test_episode_images_are_the_split_images(emnist_novel, channels):
    """The tensor of an episode is exactly the drawn images of the drawn classes, as the
    reference feeds them: the grayscale image copied to RGB, channel c normalised with
    ImageNet's mean[c] and std[c] (the one-channel backbone reads channel 0)."""
    sampler = EpisodeSampler(emnist_novel, 5, 2, 3, seed=1, device=TEST_DEVICE,
                             channels=channels)
    classes, picks, _ = sampler.draw(7)
    episode = sampler.episode(7)
    assert episode.support_x.device.type == TEST_DEVICE.type
    gray = emnist_novel.images[classes[:, None], picks].float() / 255  # [5, 5, 28, 28]
    rgb = torch.stack([(gray - mean) / std
                       for mean, std in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))], 2)
    expected = rgb[:, :, :channels]
    torch.testing.assert_close(episode.support_x.cpu(),
                               expected[:, :2].reshape(-1, channels, 28, 28))
    torch.testing.assert_close(episode.query_x.cpu(),
                               expected[:, 2:].reshape(-1, channels, 28, 28))


def test_episodes_are_a_function_of_seed_split_and_index(data_dir, omniglot_base):
    a = EpisodeSampler(omniglot_base, 5, 1, 16, seed=0)
    b = EpisodeSampler(omniglot_base, 5, 1, 16, seed=0)
    # Out of order and repeated: the draw does not depend on what was drawn before.
    for index in (5, 0, 5, 123456):
        assert torch.equal(a.episode(index).query_x, b.episode(index).query_x)
    assert not torch.equal(a.episode(0).query_x, a.episode(1).query_x)
    other_seed = EpisodeSampler(omniglot_base, 5, 1, 16, seed=1)
    assert not torch.equal(a.episode(0).query_x, other_seed.episode(0).query_x)
    # A sampler re-seeded for another test repeat draws exactly what a new one would.
    assert torch.equal(a.with_seed(1).episode(3).query_x, other_seed.episode(3).query_x)
    assert a.seed == 0
    # Seed 0 is a real seed, distinct from every other.
    classes_by_seed = {s: tuple(EpisodeSampler(omniglot_base, 5, 1, 16, s).draw(0)[0])
                       for s in range(4)}
    assert len(set(classes_by_seed.values())) == 4
    val = load_split(data_dir, "omniglot", "val", verbose=False)
    val_sampler = EpisodeSampler(val, 5, 1, 16, seed=0)
    assert val_sampler.draw(0)[0].tolist() != a.draw(0)[0].tolist()


def test_fingerprint_names_the_episodes_drawn(data_dir, omniglot_base):
    """Equal for the same stream wherever drawn; different for another seed, count, task
    shape or split (what results.compare relies on to refuse tests of other episodes)."""
    sampler = EpisodeSampler(omniglot_base, 5, 1, 15, seed=0)
    digest = sampler.fingerprint(50)
    assert EpisodeSampler(omniglot_base, 5, 1, 15, seed=0).fingerprint(50) == digest
    others = {sampler.with_seed(1).fingerprint(50), sampler.fingerprint(49),
              EpisodeSampler(omniglot_base, 5, 5, 15, seed=0).fingerprint(50),
              EpisodeSampler(load_split(data_dir, "omniglot", "val", verbose=False), 5, 1, 15,
                             seed=0).fingerprint(50)}
    assert digest not in others and len(others) == 4


def test_draws_cover_the_split_uniformly(emnist_novel):
    sampler = EpisodeSampler(emnist_novel, 5, 1, 15, seed=0)
    counts = np.bincount(np.concatenate([sampler.draw(i)[0] for i in range(3000)]),
                         minlength=emnist_novel.n_classes)
    expected = 3000 * 5 / emnist_novel.n_classes
    assert counts.min() > 0.8 * expected and counts.max() < 1.2 * expected


def characters(split) -> set[str]:
    return {"/".join(name.split("/")[:2]) for name in split.label_names}


def test_splits_are_disjoint(data_dir):
    omniglot = {s: load_split(data_dir, "omniglot", s, verbose=False)
                for s in ("base", "val", "novel")}
    assert {s: v.n_classes for s, v in omniglot.items()} == {"base": 4112, "val": 688,
                                                            "novel": 1692}
    for a, b in (("base", "val"), ("base", "novel"), ("val", "novel")):
        assert not characters(omniglot[a]) & characters(omniglot[b]), (a, b)
    cross = {s: load_split(data_dir, "cross_char", s, verbose=False)
             for s in ("base", "val", "novel")}
    assert {s: v.n_classes for s, v in cross.items()} == {"base": 1597, "val": 31, "novel": 31}
    assert not any(name.startswith("Latin/") for name in cross["base"].label_names)
    assert not set(cross["val"].label_names) & set(cross["novel"].label_names)
    # The same EMNIST image never appears in both val and novel.
    val_images = {bytes(x.numpy()) for x in cross["val"].images.flatten(0, 1)}
    assert not any(bytes(x.numpy()) in val_images for x in cross["novel"].images.flatten(0, 1))


def test_rotated_classes_are_real_rotations(data_dir, omniglot_base):
    """Class ``X/rot090`` holds the drawings of ``X/rot000`` turned a quarter counter-clockwise,
    and matches the reference's order of work (rotate the 105x105 file, then resize and crop)."""
    names = omniglot_base.label_names
    c0 = names.index("Angelic/character01/rot000")
    for angle in (90, 180, 270):
        c = names.index(f"Angelic/character01/rot{angle:03d}")
        turned = torch.rot90(omniglot_base.images[c0], angle // 90, dims=(1, 2))
        assert torch.equal(omniglot_base.images[c], turned)
        assert not torch.equal(omniglot_base.images[c], omniglot_base.images[c0])
    # The reference rotated the original drawing with PIL first.
    first = sorted((data_dir / "omniglot").glob("images_*/Angelic/character01/*.png"))[0]
    with Image.open(first) as im:
        rotated = im.convert("L").rotate(90).resize((RESIZE_TO, RESIZE_TO), Image.BILINEAR)
    offset = (RESIZE_TO - IMAGE_SIZE) // 2
    reference = np.asarray(rotated)[offset:offset + IMAGE_SIZE, offset:offset + IMAGE_SIZE]
    ours = np.rot90(load_image(first), 1)
    assert np.abs(reference.astype(int) - ours.astype(int)).max() <= 1


def test_preprocessing_of_real_images(data_dir, emnist_novel, omniglot_base):
    # Omniglot: white paper, dark strokes; EMNIST inverted by preparation to match.
    for split in (omniglot_base, emnist_novel):
        pixels = split.images[:20].float()
        assert pixels.median() == 255 and pixels.min() < 50
    sampler = EpisodeSampler(emnist_novel, 5, 1, 15, seed=0)
    support_x = sampler.episode(0).support_x
    for c, (mean, std) in enumerate(zip(CHANNEL_MEAN, CHANNEL_STD)):
        assert support_x[:, c].max().item() == pytest.approx((1.0 - mean) / std, abs=1e-5)


def test_store_cache_is_reused_and_rebuilt_when_images_change(data_dir, tmp_path):
    folder = tmp_path / "emnist"
    shutil.copytree(data_dir / "emnist", folder)
    (folder / CACHE_NAME).unlink(missing_ok=True)
    first = ImageStore.open(folder, verbose=False)
    cache_mtime = (folder / CACHE_NAME).stat().st_mtime_ns
    again = ImageStore.open(folder, verbose=False)
    assert (folder / CACHE_NAME).stat().st_mtime_ns == cache_mtime
    assert torch.equal(first.images, again.images)
    # Replace one listed image by a black one: the cache must notice and rebuild.
    path = sorted(first.index)[0]
    Image.new("L", (28, 28), 0).save(folder / path)
    os.utime(folder / path, ns=(cache_mtime + 10**9, cache_mtime + 10**9))
    rebuilt = ImageStore.open(folder, verbose=False)
    assert rebuilt.images[rebuilt.index[path]].max() == 0
    assert not torch.equal(rebuilt.images, first.images)


def test_other_json_files_beside_the_filelists_are_not_read_as_filelists(data_dir, tmp_path):
    # A reference-layout dataset folder (val.json beside its class folders) where the user
    # keeps notes and a stray list of their own: the store holds what the filelists list.
    folder = tmp_path / "emnist"
    folder.mkdir()
    shutil.copy(data_dir / "emnist" / "val.json", folder)
    classes = {name.split("/")[0] for name in read_filelist(folder / "val.json")["image_names"]}
    for name in classes:
        shutil.copytree(data_dir / "emnist" / name, folder / name)
    (folder / "notes.json").write_text('{"author": "me", "todo": ["tune lr"]}')
    (folder / "old_split.json").write_text(json.dumps(
        {"image_names": ["gone/0.png"], "image_labels": [0], "label_names": ["gone"]}))
    store = ImageStore.open(folder, verbose=False)
    assert sorted(store.index) == sorted(read_filelist(folder / "val.json")["image_names"])


def test_corrupt_and_missing_images_are_one_clear_error(data_dir, tmp_path):
    folder = tmp_path / "emnist"
    shutil.copytree(data_dir / "emnist", folder)
    (folder / CACHE_NAME).unlink(missing_ok=True)
    victim = folder / "1" / sorted(os.listdir(folder / "1"))[0]
    victim.write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image .*prepare the data again"):
        ImageStore.open(folder, verbose=False)
    victim.unlink()
    with pytest.raises(UserError, match="missing"):
        ImageStore.open(folder, verbose=False)


def test_impossible_episodes_are_refused(emnist_novel, omniglot_base):
    with pytest.raises(UserError, match="larger than the 31 classes"):
        EpisodeSampler(emnist_novel, 32, 1, 15, seed=0)
    with pytest.raises(UserError, match="more than the 20 images"):
        EpisodeSampler(omniglot_base, 5, 5, 16, seed=0)
    with pytest.raises(UserError, match="leaves no query image"):
        fitting_query_count(omniglot_base, 20, 16)
    # 5-shot training on Omniglot: 15 queries, explicitly (the reference silently got 15).
    assert fitting_query_count(omniglot_base, 5, 16) == 15
    assert fitting_query_count(emnist_novel, 5, 16) == 16
