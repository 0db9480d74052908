"""Tests of data.prepare on the real Omniglot and EMNIST files of ../shared/data.

The full preparation of both datasets runs once per module (a few seconds); the other tests
either reuse it or work on small, deliberately broken copies of the raw files.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data.prepare as data_prepare
from cli.errors import UserError
from data.prepare import DATASET_FOLDERS, is_prepared, prepare

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

pytestmark = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"the real Omniglot/EMNIST files are not in {SHARED_DATA}"
)

SPLIT_SIZES = [
    ("omniglot", "base", 4_112, 82_240),
    ("omniglot", "val", 688, 13_760),
    ("omniglot", "novel", 1_692, 33_840),
    ("omniglot", "noLatin", 1_597, 31_940),
    ("emnist", "val", 31, 6_200),
    ("emnist", "novel", 31, 6_200),
]


def load_filelist(root: Path, name: str, split: str) -> dict:
    return json.loads((root / name / f"{split}.json").read_text())


def character_of(label_name: str) -> str:
    """`Alphabet/characterNN` of an Omniglot label name, with or without its `/rotDDD`."""
    return "/".join(label_name.split("/")[:2])


# The datasets whose real files are in ../shared/data (the photographs are tested on
# test-built archives in tests/test_photos.py).
CHARACTER_DATASETS = ("omniglot", "emnist")


@pytest.fixture(scope="module")
def prepared_root(tmp_path_factory) -> Path:
    """Both datasets prepared once from the real files; tests must not modify this folder."""
    root = tmp_path_factory.mktemp("prepared")
    for name in CHARACTER_DATASETS:
        prepare(name, root, SHARED_DATA / name)
    return root


def copy_emnist_zip(destination: Path, replace: dict[str, bytes | None]) -> Path:
    """A copy of the real EMNIST zip with the entries in `replace` swapped (None drops them)."""
    with (
        zipfile.ZipFile(SHARED_DATA / "emnist" / "emnist.zip") as original,
        zipfile.ZipFile(destination / "emnist.zip", "w") as copy,
    ):
        for info in original.infolist():
            if info.filename not in replace:
                copy.writestr(info, original.read(info), compress_type=zipfile.ZIP_STORED)
            elif replace[info.filename] is not None:
                copy.writestr(info.filename, replace[info.filename])
    return destination


def assert_nothing_prepared(dataset_dir: Path) -> None:
    assert not (dataset_dir / data_prepare.MARKER_NAME).exists()
    assert not (dataset_dir / data_prepare.WORK_FOLDER_NAME).exists()
    assert not list(dataset_dir.glob("*.json"))


@pytest.mark.parametrize("name, split, classes, images", SPLIT_SIZES)
def test_filelist_sizes(prepared_root, name, split, classes, images):
    filelist = load_filelist(prepared_root, name, split)
    assert len(filelist["label_names"]) == len(set(filelist["label_names"])) == classes
    assert len(filelist["image_names"]) == len(filelist["image_labels"]) == images


@pytest.mark.parametrize("name, split", [(name, split) for name, split, _, _ in SPLIT_SIZES])
def test_every_image_exists_and_sits_in_its_labelled_class(prepared_root, name, split):
    filelist = load_filelist(prepared_root, name, split)
    per_class = 20 if name == "omniglot" else 200
    assert np.bincount(filelist["image_labels"]).tolist() == [per_class] * len(
        filelist["label_names"]
    )
    for image_name, label in zip(filelist["image_names"], filelist["image_labels"]):
        assert not Path(image_name).is_absolute()
        assert (prepared_root / name / image_name).is_file()
        label_name = filelist["label_names"][label]
        if name == "omniglot":
            # images_background/Alphabet/characterNN/x.png is in Alphabet/characterNN[/rotDDD].
            assert image_name.split("/")[1:3] == character_of(label_name).split("/")
        else:
            assert image_name.split("/")[0] == label_name


def test_omniglot_classes_are_the_vinyals_lines(prepared_root):
    for split, file in [("base", "train.txt"), ("val", "val.txt"), ("novel", "test.txt")]:
        lines = (SHARED_DATA / "omniglot" / "vinyals" / file).read_text().split()
        assert load_filelist(prepared_root, "omniglot", split)["label_names"] == sorted(lines)


def test_omniglot_splits_share_no_character(prepared_root):
    characters = {
        split: {
            character_of(label)
            for label in load_filelist(prepared_root, "omniglot", split)["label_names"]
        }
        for split in ("base", "val", "novel")
    }
    assert [len(found) for found in characters.values()] == [1_028, 172, 423]
    assert not characters["base"] & characters["val"]
    assert not characters["base"] & characters["novel"]
    assert not characters["val"] & characters["novel"]


def test_no_latin_holds_every_other_character_unrotated(prepared_root):
    label_names = load_filelist(prepared_root, "omniglot", "noLatin")["label_names"]
    assert not [label for label in label_names if label.startswith("Latin/")]
    assert all(len(label.split("/")) == 2 for label in label_names)
    all_characters = {
        character_of(label)
        for split in ("base", "val", "novel")
        for label in load_filelist(prepared_root, "omniglot", split)["label_names"]
    }
    latin = {character for character in all_characters if character.startswith("Latin/")}
    assert len(latin) == 26
    assert set(label_names) == all_characters - latin


def test_omniglot_images_are_the_original_files(prepared_root):
    entry = "images_evaluation/Angelic/character01/0965_01.png"
    with zipfile.ZipFile(SHARED_DATA / "omniglot" / "images_evaluation.zip") as archive:
        assert (prepared_root / "omniglot" / entry).read_bytes() == archive.read(entry)


def test_emnist_images_are_inverted(prepared_root):
    with zipfile.ZipFile(SHARED_DATA / "emnist" / "emnist.zip") as archive:
        original = np.asarray(Image.open(io.BytesIO(archive.read("emnist/37/123.png"))))
    written = Image.open(prepared_root / "emnist" / "37" / "123.png")
    assert written.mode == "L"
    assert original.min() < original.max()
    np.testing.assert_array_equal(np.asarray(written), 255 - original)


def test_emnist_val_classes_are_even_and_novel_classes_odd(prepared_root):
    assert load_filelist(prepared_root, "emnist", "val")["label_names"] == [
        str(i) for i in range(0, 62, 2)
    ]
    assert load_filelist(prepared_root, "emnist", "novel")["label_names"] == [
        str(i) for i in range(1, 62, 2)
    ]


def test_second_prepare_does_no_work(prepared_root, capsys):
    outputs = [prepared_root / name / data_prepare.MARKER_NAME for name in CHARACTER_DATASETS]
    outputs += list(prepared_root.glob("*/*.json"))
    before = [path.stat().st_mtime_ns for path in outputs]
    for name in CHARACTER_DATASETS:
        started = time.perf_counter()
        assert prepare(name, prepared_root, SHARED_DATA / name) == prepared_root / name
        assert time.perf_counter() - started < 0.5
        assert is_prepared(prepared_root, name)
    assert [path.stat().st_mtime_ns for path in outputs] == before
    assert capsys.readouterr().out.count("already prepared") == len(CHARACTER_DATASETS)


def test_interrupted_run_is_cleaned_up_and_redone(tmp_path):
    dataset_dir = tmp_path / "emnist"
    (dataset_dir / data_prepare.WORK_FOLDER_NAME / "3").mkdir(parents=True)
    (dataset_dir / data_prepare.WORK_FOLDER_NAME / "3" / "0.png").write_bytes(b"half written")
    (dataset_dir / "3").mkdir()
    (dataset_dir / "3" / "stray.png").write_bytes(b"left from an older run")
    (dataset_dir / "val.json").write_text('{"label_names": [')
    # Not ours: a preparation must leave these alone.
    (dataset_dir / "notes.txt").write_text("keep me")
    (dataset_dir / "62").mkdir()
    assert not is_prepared(tmp_path, "emnist")

    prepare("emnist", tmp_path, SHARED_DATA / "emnist")

    assert is_prepared(tmp_path, "emnist")
    assert not (dataset_dir / data_prepare.WORK_FOLDER_NAME).exists()
    assert not (dataset_dir / "3" / "stray.png").exists()
    assert len(list((dataset_dir / "3").iterdir())) == 200
    assert len(load_filelist(tmp_path, "emnist", "val")["image_names"]) == 6_200
    assert (dataset_dir / "notes.txt").read_text() == "keep me"
    assert (dataset_dir / "62").is_dir()


def test_is_prepared_needs_a_current_marker_and_every_output(prepared_root, tmp_path):
    marker = json.loads((prepared_root / "emnist" / data_prepare.MARKER_NAME).read_text())
    fake = tmp_path / "emnist"
    fake.mkdir()
    for output in data_prepare._output_names("emnist"):
        (fake / output).touch()
    (fake / data_prepare.MARKER_NAME).write_text(json.dumps(marker))
    assert is_prepared(tmp_path, "emnist")
    (fake / data_prepare.MARKER_NAME).write_text(json.dumps({**marker, "format_version": 0}))
    assert not is_prepared(tmp_path, "emnist")
    (fake / data_prepare.MARKER_NAME).write_text(json.dumps(marker))
    (fake / "novel.json").unlink()
    assert not is_prepared(tmp_path, "emnist")


def test_source_missing_a_zip_is_named(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "vinyals").symlink_to(SHARED_DATA / "omniglot" / "vinyals")
    (source / "images_background.zip").symlink_to(
        SHARED_DATA / "omniglot" / "images_background.zip"
    )
    with pytest.raises(UserError, match="lacks images_evaluation.zip"):
        prepare("omniglot", tmp_path / "out", source)
    assert_nothing_prepared(tmp_path / "out" / "omniglot")


@pytest.mark.parametrize(
    "damage",
    [lambda png: b"this is not a png at all", lambda png: png[: len(png) // 2]],
    ids=["garbage", "truncated"],
)
def test_undecodable_png_is_refused(tmp_path, damage):
    with zipfile.ZipFile(SHARED_DATA / "emnist" / "emnist.zip") as archive:
        png = archive.read("emnist/0/0.png")
    source = copy_emnist_zip(tmp_path, {"emnist/0/0.png": damage(png)})
    with pytest.raises(UserError, match="emnist/0/0.png is not a readable PNG"):
        prepare("emnist", tmp_path / "out", source)
    assert_nothing_prepared(tmp_path / "out" / "emnist")


def test_missing_class_is_refused_with_the_counts(tmp_path):
    with zipfile.ZipFile(SHARED_DATA / "emnist" / "emnist.zip") as archive:
        class_17 = [name for name in archive.namelist() if name.startswith("emnist/17/")]
    source = copy_emnist_zip(tmp_path, dict.fromkeys(class_17))
    with pytest.raises(UserError, match=r"holds 61 classes, expected 62 .*missing: 17;"):
        prepare("emnist", tmp_path / "out", source)
    assert_nothing_prepared(tmp_path / "out" / "emnist")


def test_failed_download_suggests_source(tmp_path, monkeypatch):
    monkeypatch.setitem(
        data_prepare.RAW_FILES, "emnist", {"emnist.zip": (tmp_path / "nowhere.zip").as_uri()}
    )
    with pytest.raises(UserError, match="downloading .* failed .*--data_source DIR .*"
                                        "download_NAME.sh --source DIR/NAME"):
        prepare("emnist", tmp_path / "out", None)
    assert_nothing_prepared(tmp_path / "out" / "emnist")


def test_download_feeds_the_same_validation(tmp_path, monkeypatch):
    with zipfile.ZipFile(SHARED_DATA / "emnist" / "emnist.zip") as archive:
        png = archive.read("emnist/0/0.png")
    with zipfile.ZipFile(tmp_path / "served.zip", "w") as served:
        served.writestr("emnist/0/0.png", png)
    monkeypatch.setitem(
        data_prepare.RAW_FILES, "emnist", {"emnist.zip": (tmp_path / "served.zip").as_uri()}
    )
    downloaded = f"{data_prepare.WORK_FOLDER_NAME}/download/emnist.zip holds 1 classes"
    with pytest.raises(UserError, match=re.escape(downloaded)):
        prepare("emnist", tmp_path / "out", None)
    assert_nothing_prepared(tmp_path / "out" / "emnist")


def test_cli_reports_one_error_line_and_exits_1(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "data.prepare",
            "emnist",
            "--source",
            str(tmp_path),
            "--data_dir",
            str(tmp_path / "out"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "lacks emnist.zip" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "emnist" / data_prepare.MARKER_NAME).exists()


def test_shell_wrapper_prepares_with_a_relative_data_dir(tmp_path):
    result = subprocess.run(
        [
            "bash",
            str(REPO_ROOT / "filelists" / "emnist" / "download_emnist.sh"),
            "--source",
            str(SHARED_DATA / "emnist"),
            "--data_dir",
            "out",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stderr
    assert is_prepared(tmp_path / "out", "emnist")


def test_each_benchmark_reads_its_prepared_datasets():
    from data.benchmarks import BENCHMARKS
    assert BENCHMARKS["omniglot"].datasets == ["omniglot"]
    assert BENCHMARKS["cross_char"].datasets == ["omniglot", "emnist"]
    assert BENCHMARKS["cross"].datasets == ["miniImagenet", "CUB"]
    assert set(DATASET_FOLDERS) == {d for b in BENCHMARKS.values() for d in b.datasets}
