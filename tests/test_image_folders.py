"""Folders of images as benchmarks (python -m data.folder), on the real photographs of
../shared/data: CUB-100 (a CUB-style copy: images/ beside metadata files) and Caltech-101
(mixed sizes, greyscale JPEGs among colour ones), a cross-domain pair of them, and a folder of
real EMNIST drawings; nothing is ever written into an image folder."""
from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import SHARED_DATA, bomb_png
from helpers import TEST, TRAIN, assert_one_line_error, run

CUB100, CALTECH = SHARED_DATA / "cub100", SHARED_DATA / "caltech101"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def photo_benchmarks(tmp_path_factory):
    """CUB-100 (split 50 / 25 / 25, as the reference's CUB rule splits 200) and Caltech-101
    made into benchmarks straight from ../shared/data, the image folders checked untouched."""
    if not (CUB100.is_dir() and CALTECH.is_dir()):
        pytest.skip(f"the real photographs are not in {SHARED_DATA}")
    from data.folder import main as make_benchmark
    root = tmp_path_factory.mktemp("benchmarks")
    before = {folder: snapshot(folder) for folder in (CUB100, CALTECH)}
    assert make_benchmark([str(CUB100), "--data_dir", str(root), "--fractions", "0.5", "0.25",
                           "0.25", "--n_shot", "1"]) == 0
    assert make_benchmark([str(CALTECH), "--data_dir", str(root), "--n_shot", "1"]) == 0
    for folder, files in before.items():
        assert snapshot(folder) == files, f"{folder} was written into"
    return root


def listed(benchmark: Path, split: str) -> dict:
    return json.loads((benchmark / f"{split}.json").read_text())


def test_photo_folders_become_benchmarks_beside_them(photo_benchmarks, capsys):
    """Whole classes, disjoint, every class of the folder in one split; the paths relative to
    the class folders (CUB-100's images/, Caltech's 101_ObjectCategories/); classes.txt says
    which went where; the same seed gives the same split."""
    from data.folder import split_classes
    for name, root, counts in (("cub100", CUB100 / "images", (50, 25, 25)),
                               ("caltech101", CALTECH / "101_ObjectCategories", (60, 20, 20))):
        benchmark = photo_benchmarks / name
        description = json.loads((benchmark / "benchmark.json").read_text())
        assert description["images"] == str(root.resolve())
        names = [listed(benchmark, s)["label_names"] for s in ("base", "val", "novel")]
        assert tuple(map(len, names)) == counts
        assert sorted(sum(names, [])) == sorted(p.name for p in root.iterdir() if p.is_dir())
        for split in ("base", "val", "novel"):
            for image in listed(benchmark, split)["image_names"][::97]:
                assert (root / image).is_file()
        table = [line.split("\t") for line in (benchmark / "classes.txt").read_text()
                 .splitlines()]
        assert table == [[s, n] for s, group in zip(("base", "val", "novel"), names)
                         for n in group]
        again = split_classes(sorted(sum(names, [])), description["fractions"], 0)
        assert [again[s] for s in ("base", "val", "novel")] == names


def test_mixed_sizes_and_greyscale_photos_reach_the_store_as_colour_squares(photo_benchmarks):
    """Caltech's photos of every size are stored as 96 x 96 RGB (the reference's Resize
    square of 84); a greyscale JPEG as three equal channels."""
    from data.store import load_split
    split = load_split(photo_benchmarks, str(photo_benchmarks / "caltech101"), "base")
    assert tuple(split.images.shape[-3:]) == (3, 96, 96)
    names = listed(photo_benchmarks / "caltech101", "base")
    root = CALTECH / "101_ObjectCategories"
    for position, image in enumerate(names["image_names"]):
        with Image.open(root / image) as im:
            if im.mode == "L":
                break
    else:
        pytest.fail("no greyscale JPEG among Caltech's base images")
    label = names["image_labels"][position]
    index = position - names["image_labels"].index(label)
    stored = split.images[label, index]
    assert torch.equal(stored[0], stored[1]) and torch.equal(stored[1], stored[2])
    assert stored.float().std() > 10  # a photograph, not a blank


def test_unusable_files_are_named_in_one_line_and_left_out(tmp_path, capsys):
    """A copy of five real species with a text file, a truncated JPEG and a decompression
    bomb (a PNG of 900 megapixels, by its header) among the photos: all named on one line,
    left out, the rest made into a benchmark."""
    from data.folder import main as make_benchmark
    mine = tmp_path / "my birds"
    species_names = sorted(p.name for p in (CUB100 / "images").iterdir())[:5]
    for species in species_names:
        (mine / species).mkdir(parents=True)
        for image in sorted((CUB100 / "images" / species).iterdir())[:4]:
            shutil.copy(image, mine / species / image.name)
    first, second = species_names[:2]
    (mine / first / "notes.txt").write_text("seen at dawn\n")
    whole = sorted((mine / second).iterdir())[0].read_bytes()
    (mine / second / "cut.jpg").write_bytes(whole[:300])
    bomb_png(mine / second / "bomb.png")
    code = make_benchmark([str(mine), "--data_dir", str(tmp_path / "data"), "--fractions",
                           "1", "1", "1", "--train_n_way", "1", "--test_n_way", "1",
                           "--n_shot", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    notes = [line for line in out.splitlines() if "not readable images" in line]
    assert len(notes) == 1 and f"{first}/notes.txt" in notes[0] \
        and f"{second}/cut.jpg" in notes[0] and f"{second}/bomb.png" in notes[0], out
    images = sum((listed(tmp_path / "data" / "my birds", s)["image_names"]
                  for s in ("base", "val", "novel")), [])
    assert len(images) == 20 and not any(i.endswith(("notes.txt", "cut.jpg", "bomb.png"))
                                         for i in images)


def test_a_benchmark_folder_of_something_else_is_never_overwritten(tmp_path, capsys):
    """A user's own filelists are never replaced: not in a folder of theirs under the data
    root, not in the image folder, not in the folder that holds it (CUB-100's, with its
    metadata files, when its images/ is given)."""
    from data.folder import main as make_benchmark
    own = tmp_path / "data" / "my symbols"
    own.mkdir(parents=True)
    (own / "base.json").write_text("mine\n")
    code = make_benchmark([str(CUB100), "--name", "my symbols", "--data_dir",
                           str(tmp_path / "data")])
    assert_one_line_error(code, capsys.readouterr().err, "is not a benchmark made by")
    assert (own / "base.json").read_text() == "mine\n"
    code = make_benchmark([str(CUB100), "--data_dir", str(CUB100)])
    assert_one_line_error(code, capsys.readouterr().err, "never written")
    code = make_benchmark([str(CUB100 / "images"), "--data_dir", str(CUB100.parent),
                           "--name", CUB100.name])
    assert_one_line_error(code, capsys.readouterr().err, "holds the image folder")


def test_cross_domain_trains_on_every_caltech_class_and_tests_on_cub(photo_benchmarks, capsys):
    """Caltech-101 -> CUB-100 as the reference's cross (mini-ImageNet -> CUB): base all 100
    Caltech classes, val and novel CUB-100's; a pair of two image forms is refused."""
    from data.folder import main as make_benchmark
    from data.store import load_split
    caltech, cub = (str(photo_benchmarks / n) for n in ("caltech101", "cub100"))
    assert make_benchmark(["--cross", caltech, cub, "--name", "caltech_to_cub",
                           "--data_dir", str(photo_benchmarks)]) == 0
    cross = str(photo_benchmarks / "caltech_to_cub")
    base = load_split(photo_benchmarks, cross, "base", verbose=False)
    assert base.n_classes == 100
    assert set(base.label_names) == set(listed(photo_benchmarks / "caltech101", "all")
                                        ["label_names"])
    for split in ("val", "novel"):
        assert (load_split(photo_benchmarks, cross, split, verbose=False).label_names
                == listed(photo_benchmarks / "cub100", split)["label_names"])
    code = make_benchmark(["--cross", caltech, "cross_char", "--name", "mixed",
                           "--data_dir", str(photo_benchmarks)])
    assert_one_line_error(code, capsys.readouterr().err, "needs one image form")


def test_the_colour_recipe_learns_real_birds(photo_benchmarks, tmp_path, capsys):
    """The first run data.folder prints for a colour folder (HyperMAML, Conv4Pool,
    --train_aug, warm-up and switch), with fewer tasks per epoch, then test.py with the same
    options: clearly above the 20% of chance on CUB-100's novel species."""
    from data.folder import recipe
    argv = recipe(str(photo_benchmarks / "cub100"), True, 1) + [
        "--data_dir", photo_benchmarks, "--save_dir", tmp_path / "save"]
    code, out, err = run(TRAIN, argv + ["--n_episode", "12", "--final_test", "0"], capsys)
    assert code == 0, err
    code, out, err = run(TEST, argv + ["--n_episode", "100", "--repeat", "1",
                                       "--record_dir", tmp_path / "r", "--plot"], capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "r" / "results.jsonl").read_text())
    assert record["acc_mean"] > 26, record["acc_mean"]
    assert "classes, so every" not in out  # 25 novel species: no note
    assert Path(record["episode_sheet"]).is_file()


# --- a folder of drawings, --grayscale ----------------------------------------------------------
def own_folder(data_dir: Path, root: Path, classes: int = 25, images: int = 12) -> Path:
    """A folder of class folders laid out from the prepared EMNIST images (copied), as a user
    would bring their own: class names of their choosing, file names of their own."""
    for split in ("novel", "val"):
        found = json.loads((data_dir / "emnist" / f"{split}.json").read_text())
        for label, name in enumerate(found["label_names"]):
            if len(list(root.glob("*"))) >= classes:
                return root
            files = [n for n, lab in zip(found["image_names"], found["image_labels"])
                     if lab == label][:images]
            target = root / f"symbol {name}"
            target.mkdir(parents=True)
            for i, image in enumerate(files):
                shutil.copy(data_dir / "emnist" / image, target / f"drawing-{i}.png")
    return root


def test_a_drawing_folder_becomes_a_benchmark_whose_recipe_learns(data_dir, tmp_path, capsys):
    """--grayscale: the split written under --data_dir (the folder untouched), the same
    command again a no-op, another split refused; the printed first run (no --train_aug,
    which drawings refuse) trains and tests above chance."""
    from data.folder import main as make_benchmark
    from data.folder import recipe
    folder = own_folder(data_dir, tmp_path / "my symbols")
    before = snapshot(folder)
    common = ["--grayscale", "--data_dir", str(tmp_path / "data"), "--n_shot", "1"]
    assert make_benchmark([str(folder), *common, "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "classes base 15, val 5, novel 5" in out and "--train_aug" not in out
    assert snapshot(folder) == before
    benchmark = tmp_path / "data" / "my symbols"
    first = (benchmark / "base.json").read_text()
    assert make_benchmark([str(folder), *common, "--seed", "3"]) == 0
    assert (benchmark / "base.json").read_text() == first
    code = make_benchmark([str(folder), *common, "--seed", "4"])
    assert_one_line_error(code, capsys.readouterr().err, "describes another benchmark")

    argv = recipe(str(benchmark), False, 1) + ["--save_dir", tmp_path / "save"]
    assert f"python train.py {shlex.join(argv[:-2])}" in out
    code, out, err = run(TRAIN, argv + ["--n_episode", "32", "--final_test", "0"], capsys)
    assert code == 0, err
    assert (tmp_path / "save" / "checkpoints" / "my symbols").is_dir()
    code, out, err = run(TEST, argv + ["--n_episode", "100", "--repeat", "1",
                                       "--record_dir", tmp_path / "r"], capsys)
    assert code == 0, err
    accuracy = json.loads((tmp_path / "r" / "results.jsonl").read_text())["acc_mean"]
    assert accuracy > 35, accuracy  # chance: 20%
    # Its 5 novel classes are in every episode: the test says what its interval covers.
    assert out.count("note: the novel split has only 5 classes, so every 5-way episode draws "
                     "from the same 5") == 2  # at the start and beside the summary


@pytest.mark.parametrize("argv,message", [
    (["--fractions", "0.9", "0.05", "0.05"], "the val split gets 2 of the 25 classes"),
    (["--n_shot", "5", "--n_query", "8"], r"has 12 images, fewer than the 5 shots \+ 8 queries"),
    (["--train_n_way", "20"], "the base split gets 15 .* fewer than the 20"),
    (["--image_size", "0"], "--image_size must be between 8 and 1024"),
    (["--train_n_way", "0"], "must be at least 1"),
])
def test_own_folder_refusals_are_one_line(argv, message, data_dir, tmp_path, capsys):
    from data.folder import main as make_benchmark
    folder = own_folder(data_dir, tmp_path / "mine")
    code = make_benchmark([str(folder), "--data_dir", str(tmp_path / "data"), *argv])
    assert_one_line_error(code, capsys.readouterr().err, message)
    assert not (tmp_path / "data" / "mine").exists()


@pytest.mark.parametrize("text,message", [
    ("{not json", "benchmark.json cannot be read \\(JSONDecodeError\\): make the benchmark again"),
    ('{"image_size": "84", "colour": "no"}', "benchmark.json is not a benchmark description"),
    ('{"image_size": 100000, "colour": true}', "is not a benchmark description"),
    ("[1, 2]", "is not a benchmark description")])
def test_a_damaged_benchmark_description_is_one_line_naming_it(text, message, tmp_path, capsys):
    """A benchmark folder whose benchmark.json was damaged or altered: one line that names
    the file (not "neither a built-in benchmark nor a folder"), before anything is sized."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "benchmark.json").write_text(text)
    with pytest.raises(SystemExit) as stopped:  # argparse checks --dataset: status 2
        TRAIN.main(["--dataset", str(folder), "--method", "maml", "--save_dir",
                    str(tmp_path / "save")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(message, err[0]), err[0]
