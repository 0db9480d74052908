"""The photograph benchmarks (CUB, mini-ImageNet, mini-ImageNet -> CUB) on archives the tests
build in the exact layout of the real ones: CUB_200_2011.tgz from real CUB photographs (the
first 20 species of ../shared/data/cub100, 8 photos each, in the official NNN.Name folders
with space-separated 1-based metadata), Ravi and Larochelle's split files with ImageNet's
class folders or the distributed images/ folder. No mini-ImageNet exists on the test
machines, so its images, and those of one learning check, are 20 classes of small JPEGs,
every class its own colour and pattern (so that a short run can learn them)."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT, SHARED_DATA
from helpers import PREDICT, TEST, TRAIN, assert_one_line_error, read_commands, run, run_folder

# Appended to each published command: two epochs of one 2-task update, a 4-episode final
# test (84-pixel episodes cost about 9 times the characters' 28-pixel ones).
SHORT_IMAGES = ["--stop_epoch", "1", "--n_task", "2", "--n_episode", "2", "--final_test", "4",
                "--repeat", "1"]

PUBLISHED_IMAGES = REPO_ROOT.parent / "shared" / "reference" / "published-commands-images.txt"
CLASSES, IMAGES = 20, 8


def class_image(c: int, i: int) -> bytes:
    """JPEG ``i`` of class ``c``: a hue and a stripe period of its own, noise, a size of its
    own; the same bytes for the same (c, i)."""
    rng = np.random.default_rng([c, i])
    h, w = 30 + 3 * (i % 4), 36 + 2 * (c % 5)
    yy, xx = np.mgrid[:h, :w]
    stripes = np.sin(xx * (0.3 + 0.15 * (c % 5)) + yy * 0.2 * (c // 5))
    colour = np.array([(c * 67) % 256, (c * 131) % 256, (c * 29) % 256], dtype=float)
    pixels = colour * (0.6 + 0.4 * stripes[..., None]) + rng.normal(0, 12, (h, w, 3))
    out = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out, format="JPEG")
    return out.getvalue()


def add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


CUB100 = SHARED_DATA / "cub100" / "images"


def cub_species(classes: int = CLASSES) -> list[str]:
    """The real species the test archive holds: cub100's first, in name order."""
    if not CUB100.is_dir():
        pytest.skip(f"the real CUB photographs are not in {CUB100}")
    return sorted(p.name for p in CUB100.iterdir() if p.is_dir())[:classes]


def cub_class_names(classes: int = CLASSES) -> list[str]:
    """The archive's class folders, numbered as CUB-200-2011's: ``001.Acadian_Flycatcher``."""
    return [f"{c + 1:03d}.{name}" for c, name in enumerate(cub_species(classes))]


def build_cub(folder: Path, classes: int = CLASSES, synthetic: bool = False) -> Path:
    """CUB_200_2011.tgz as the real one is laid out: CUB_200_2011/images/NNN.Name/*.jpg of
    real photos (``synthetic``: of :func:`class_image`), images.txt, classes.txt,
    image_class_labels.txt and train_test_split.txt beside (space-separated, numbered from
    1), attributes.txt at the top."""
    folder.mkdir(parents=True, exist_ok=True)
    names = ([f"{c + 1:03d}.Bird_{c}" for c in range(classes)] if synthetic
             else cub_class_names(classes))
    index, labels, split = [], [], []
    with tarfile.open(folder / "CUB_200_2011.tgz", "w:gz") as archive:
        add(archive, "attributes.txt", b"1 has_bill_shape::curved\n")
        for c, name in enumerate(names):
            species = name[4:]
            photos = [] if synthetic else sorted((CUB100 / species).iterdir())[:IMAGES]
            for i in range(IMAGES):
                path = f"{name}/{species}_{i + 1:04d}_{100 + i}.jpg"
                data = class_image(c, i) if synthetic else photos[i].read_bytes()
                add(archive, f"CUB_200_2011/images/{path}", data)
                index.append(f"{len(index) + 1} {path}")
                labels.append(f"{len(index)} {c + 1}")
                split.append(f"{len(index)} {int(i % 2 == 0)}")
        for member, lines in (("images.txt", index), ("image_class_labels.txt", labels),
                              ("train_test_split.txt", split),
                              ("classes.txt", [f"{c + 1} {n}" for c, n in enumerate(names)])):
            add(archive, f"CUB_200_2011/{member}", ("\n".join(lines) + "\n").encode())
        add(archive, "CUB_200_2011/README", b"CUB-200-2011 (test-built)\n")
    return folder


def build_mini_imagenet(folder: Path, layout: str) -> Path:
    """The split files and the images, as ImageNet's class folders (``imagenet``, files
    numbered out of order, with more files than the split takes) or as the distributed
    images/ folder (``distributed``)."""
    folder.mkdir(parents=True, exist_ok=True)
    wnids = [f"n{1000000 + 37 * c:08d}" for c in range(15)]
    for split, chosen in (("train", wnids[:5]), ("val", wnids[5:10]), ("test", wnids[10:])):
        rows = ["filename,label"]
        for wnid in chosen:
            c = wnids.index(wnid)
            for k in range(IMAGES):
                name = f"{wnid}{k + 1:08d}.jpg"
                rows.append(f"{name},{wnid}")
                data = class_image(c, k)
                if layout == "distributed":
                    target = folder / "images" / name
                else:
                    # The k-th file by number (5, 12, 19, ...: by name 12 < 19 < ... < 5).
                    target = folder / "ILSVRC2012_img_train" / wnid / f"{wnid}_{5 + 7 * k}.JPEG"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            if layout == "imagenet":  # files the split does not name, numbered last
                for number in (5 + 7 * IMAGES, 5 + 7 * (IMAGES + 1)):
                    (folder / "ILSVRC2012_img_train" / wnid /
                     f"{wnid}_{number}.JPEG").write_bytes(class_image(14 - c, 0))
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="session")
def photo_data(tmp_path_factory) -> Path:
    """CUB and mini-ImageNet prepared from the test-built archives into one data root."""
    from data.prepare import prepare
    source = tmp_path_factory.mktemp("photo_source")
    build_cub(source / "CUB")
    build_mini_imagenet(source / "miniImagenet", "imagenet")
    root = tmp_path_factory.mktemp("photo_data")
    for name in ("CUB", "miniImagenet"):
        prepare(name, root, source / name)
    return root


def filelist(root: Path, dataset: str, split: str) -> dict:
    return json.loads((root / dataset / f"{split}.json").read_text())


def test_cub_is_split_as_the_reference_splits_it(photo_data):
    """Classes in name order; base where i % 4 is 0 or 2, val 1, novel 3; paths relative to
    the dataset folder; every image in place."""
    names = cub_class_names()
    for split, remainders in (("base", (0, 2)), ("val", (1,)), ("novel", (3,))):
        listed = filelist(photo_data, "CUB", split)
        assert listed["label_names"] == [n for i, n in enumerate(names) if i % 4 in remainders]
        assert len(listed["image_names"]) == IMAGES * len(listed["label_names"])
        for name, label in zip(listed["image_names"], listed["image_labels"]):
            assert name.startswith(f"images/{listed['label_names'][label]}/")
            assert (photo_data / "CUB" / name).is_file()


def test_a_partial_cub_copy_is_split_by_the_same_rule_with_a_note(tmp_path, capsys):
    """A CUB archive of 8 real species (not CUB-200-2011's 200) is split by the reference's
    rule, 4 / 2 / 2, and the preparation says so; 6 species, which the rule cannot split
    evenly, are refused in one line."""
    from data.prepare import main
    source = build_cub(tmp_path / "eight" / "CUB", classes=8)
    assert main(["CUB", "--source", str(source), "--data_dir", str(tmp_path / "a")]) == 0
    assert "holds 8 classes, not the 200 of CUB-200-2011: prepared as it is" in \
        capsys.readouterr().out
    assert [len(filelist(tmp_path / "a", "CUB", s)["label_names"])
            for s in ("base", "val", "novel")] == [4, 2, 2]
    source = build_cub(tmp_path / "six" / "CUB", classes=6)
    code = main(["CUB", "--source", str(source), "--data_dir", str(tmp_path / "b")])
    assert_one_line_error(code, capsys.readouterr().err, "needs a multiple of 4")


def test_mini_imagenet_takes_the_reference_images_from_either_layout(photo_data, tmp_path):
    """From ImageNet's folders the k-th image of a class is its k-th file by number; from
    the distributed images/ folder the file of the split's own name: the same pixels."""
    from data.prepare import prepare
    distributed = build_mini_imagenet(tmp_path / "source", "distributed")
    prepare("miniImagenet", tmp_path / "data", distributed)
    for split in ("base", "val", "novel", "all"):
        a = filelist(photo_data, "miniImagenet", split)
        b = filelist(tmp_path / "data", "miniImagenet", split)
        assert a == b
        for name in a["image_names"][::7]:
            assert (photo_data / "miniImagenet" / name).read_bytes() == \
                (tmp_path / "data" / "miniImagenet" / name).read_bytes()
    assert len(filelist(photo_data, "miniImagenet", "all")["label_names"]) == 15


def test_colour_episodes_are_the_centre_crops_with_imagenet_normalisation(photo_data):
    """Validation and test input as the reference's: the image resized to 96 x 96
    (int(1.15 x 84)), the centre 84 x 84 (offset 6), each RGB channel scaled to [0, 1] and
    normalised with ImageNet's mean and std."""
    from data.episodes import EpisodeSampler
    from data.store import load_split
    novel = load_split(photo_data, "CUB", "novel")
    assert tuple(novel.images.shape[-3:]) == (3, 96, 96)
    sampler = EpisodeSampler(novel, 5, 1, 2, seed=2, channels=3, crop=84)
    classes, picks, _ = sampler.draw(4)
    crops = novel.images[classes[:, None], picks][..., 6:90, 6:90].float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    expected = (crops - mean) / std  # [5, 3, 3, 84, 84]
    episode = sampler.episode(4)
    torch.testing.assert_close(episode.support_x, expected[:, :1].reshape(-1, 3, 84, 84))
    torch.testing.assert_close(episode.query_x, expected[:, 1:].reshape(-1, 3, 84, 84))


def test_preparation_is_idempotent_and_refuses_bad_archives(photo_data, tmp_path, capsys):
    from data.prepare import main
    assert main(["CUB", "--data_dir", str(photo_data)]) == 0
    assert "already prepared" in capsys.readouterr().out
    source = build_cub(tmp_path / "bad")
    fifth = cub_class_names()[4]
    damaged = f"{fifth}/{fifth[4:]}_0003_102.jpg"
    with tarfile.open(source / "CUB_200_2011.tgz", "r:gz") as archive:
        members = [(m, archive.extractfile(m).read() if m.isfile() else b"")
                   for m in archive.getmembers()]
    with tarfile.open(source / "CUB_200_2011.tgz", "w:gz") as archive:
        for member, data in members:
            if member.name.endswith(damaged):
                data = data[:200]  # a truncated JPEG
            add(archive, member.name, data)
    code = main(["CUB", "--source", str(source), "--data_dir", str(tmp_path / "out")])
    assert_one_line_error(code, capsys.readouterr().err,
                          f"{damaged} is not a readable image")
    assert not (tmp_path / "out" / "CUB" / "base.json").exists()
    # An archive that lost an image its own images.txt lists is refused by content.
    with tarfile.open(source / "CUB_200_2011.tgz", "w:gz") as archive:
        for member, data in members:
            if not member.name.endswith(damaged):
                add(archive, member.name, data)
    code = main(["CUB", "--source", str(source), "--data_dir", str(tmp_path / "out")])
    assert_one_line_error(code, capsys.readouterr().err, r"1 images of CUB_200_2011/images.txt "
                          rf"are missing from it \(the first: {damaged}\)")
    assert not (tmp_path / "out" / "CUB" / "base.json").exists()
    code = main(["miniImagenet", "--source", str(tmp_path / "bad"),
                 "--data_dir", str(tmp_path / "out")])
    assert_one_line_error(code, capsys.readouterr().err, "lacks train.csv")


def published_image_commands() -> dict[str, list[str]]:
    return read_commands(PUBLISHED_IMAGES)


def test_the_reference_file_holds_the_eight_image_commands():
    if not PUBLISHED_IMAGES.exists():
        pytest.skip(f"no {PUBLISHED_IMAGES}")
    commands = published_image_commands()
    assert len(commands) == 8
    assert {c[c.index("--dataset") + 1] for c in commands.values()} == {"CUB", "miniImagenet"}


def test_commands_sh_runs_the_published_image_commands_word_for_word(tmp_path):
    """commands.sh's CUB and miniImagenet experiments (results/experiments.py) are the
    reference's eight, and commands.sh hands each to train.py unchanged."""
    if not PUBLISHED_IMAGES.exists():
        pytest.skip(f"no {PUBLISHED_IMAGES}")
    from results.experiments import PUBLISHED
    for heading, argv in published_image_commands().items():
        method, dataset, shots = heading.split()
        name = f"{method}_{'CUB' if dataset == 'CUB' else 'miniImagenet'}_{shots.replace('-', '')}"
        assert PUBLISHED[name].split() == argv, heading
    # commands.sh passes the experiment's words through: a stand-in python prints them.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text('#!/usr/bin/env bash\nif [ "$1" = train.py ]; then shift; '
                                 'printf "%s\\n" "$@"; exit 0; fi\nexec "$REAL_PYTHON" "$@"\n')
    (fake / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "REAL_PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO_ROOT / "commands.sh"),
                           "bayes_hmaml_miniImagenet_5shot"], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:len(PUBLISHED["bayes_hmaml_miniImagenet_5shot"].split())] == \
        PUBLISHED["bayes_hmaml_miniImagenet_5shot"].split()


@pytest.mark.parametrize("name", sorted(published_image_commands()))
def test_published_image_command_trains_and_tests_literally(name, photo_data, tmp_path, capsys):
    """Each command as published (Conv4Pool, --train_aug, the last one's --resume on a
    fresh folder), a short schedule appended, on the test-built data; then test.py."""
    argv = published_image_commands()[name] + SHORT_IMAGES + [
        "--data_dir", photo_data, "--save_dir", tmp_path / "save", "--record_dir", tmp_path / "r"]
    code, out, err = run(TRAIN, argv, capsys)
    assert code == 0, err
    assert "Final test of the best model on the novel split, 1 x 4 episodes" in out
    if "--resume" in argv:
        assert "nothing to resume" in out
    code, out, err = run(TEST, argv, capsys)
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "r" / "results.jsonl").read_text()
               .splitlines()]
    assert all(r["config"]["model"] == "Conv4Pool" and r["config"]["train_aug"]
               for r in records)


def test_cross_domain_prepares_both_datasets_and_trains_on_all_mini_imagenet(tmp_path, capsys):
    """--dataset cross from the raw files alone (--data_source): train.py prepares CUB and
    mini-ImageNet itself, trains on all 15 mini-ImageNet classes of the test-built split files
    (the reference's 100) and validates and tests on CUB's val and novel classes."""
    source = tmp_path / "source"
    build_cub(source / "CUB")
    build_mini_imagenet(source / "miniImagenet", "distributed")
    common = ["--dataset", "cross", "--method", "maml_approx", "--model", "Conv4Pool",
              "--n_shot", "1", "--data_dir", tmp_path / "data", "--data_source", source,
              "--save_dir", tmp_path / "save", "--record_dir", tmp_path / "r"]
    code, out, err = run(TRAIN, common + SHORT_IMAGES + ["--train_aug"], capsys)
    assert code == 0, err
    for name in ("CUB", "miniImagenet"):
        assert f"Dataset {name} is not prepared in {tmp_path / 'data'}: preparing it" in out
    from data.store import load_split
    for split, (classes, first) in {"base": (15, "n01000000"), "val": (5, cub_class_names()[1]),
                                    "novel": (5, cub_class_names()[3])}.items():
        images = load_split(tmp_path / "data", "cross", split)
        assert (images.n_classes, images.label_names[0]) == (classes, first)
    code, out, err = run(TEST, common + ["--n_episode", "3", "--repeat", "1"], capsys)
    assert code == 0, err
    assert "cross novel, 5-way 1-shot" in out and "preparing" not in out


def test_a_short_hypermaml_run_learns_the_cub_training_classes(tmp_path, capsys):
    """HyperMAML with the published CUB architecture, 5 epochs of 10 tasks on a CUB archive
    of synthetic classes (a colour and a pattern each, learnable in seconds; real birds take
    hours: tests/test_image_folders.py and RESULTS.md): the training classes are learnt
    (accuracy far above the 20% of chance; measured: 27% in the first epoch, 92% by the
    third)."""
    from data.prepare import prepare
    photo_data = tmp_path / "data"
    prepare("CUB", photo_data, build_cub(tmp_path / "source" / "CUB", synthetic=True))
    argv = ["--dataset", "CUB", "--method", "hyper_maml", "--model", "Conv4Pool",
            "--n_shot", "1", "--n_task", "5", "--n_episode", "10", "--stop_epoch", "1",
            "--eval_freq", "5",
            "--lr", "1e-3", "--hn_head_len", "3", "--hn_hidden_size", "256",
            "--hm_enhance_embeddings", "True", "--hm_use_class_batch_input",
            "--final_test", "0", "--data_dir", photo_data, "--save_dir", tmp_path]
    code, out, err = run(TRAIN, argv, capsys)
    assert code == 0, err
    metrics = [json.loads(line) for line in
               (run_folder(tmp_path, "hyper_maml", dataset="CUB") / "metrics.jsonl")
               .read_text().splitlines()]
    assert metrics[0]["train_acc"] < 50 and np.mean([m["train_acc"] for m in metrics[-2:]]) > 70, \
        [m["train_acc"] for m in metrics]

    # predict.py takes the colour model: photographs centre-cropped as the test's episodes
    # are, one example of each of 5 novel classes, their other images as queries.
    novel = json.loads((photo_data / "CUB" / "novel.json").read_text())
    for label, name in enumerate(novel["label_names"]):
        images = [n for n, lab in zip(novel["image_names"], novel["image_labels"]) if lab == label]
        (tmp_path / "support" / name).mkdir(parents=True)
        shutil.copy(photo_data / "CUB" / images[0], tmp_path / "support" / name)
        (tmp_path / "query").mkdir(exist_ok=True)
        for image in images[1:3]:
            query = tmp_path / "query" / f"{name}_{Path(image).name}"
            shutil.copy(photo_data / "CUB" / image, query)
    model = run_folder(tmp_path, "hyper_maml", dataset="CUB") / "best_model.tar"
    code = PREDICT.main([str(model), str(tmp_path / "support"), str(tmp_path / "query"),
                         "--json", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 10 and all(len(r["probabilities"]) == 5 for r in rows)
    right = sum(Path(r["query"]).name.startswith(r["prediction"]) for r in rows)
    assert right >= 4, rows  # chance: 2 of 10
