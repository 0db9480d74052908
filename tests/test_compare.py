"""python -m results.compare on the shipped models and their recorded tests: the paired
difference against one computed by hand from the records, a difference that is not
significant, models tested anew on the very episodes of a record, and one-line refusals when
the episodes cannot be the same."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cli.errors import UserError
from conftest import REPO_ROOT
from results import compare
from results import run as runner

HYPER, MAML = "hyper_maml_cross_char_1shot_128", "maml_cross_char_1shot_128"


def recorded(name: str) -> dict:
    return json.loads((runner.record_folder(name) / "results.jsonl").read_text()
                      .splitlines()[-1])


def per_episode(record: dict, seeds=None, count=None) -> np.ndarray:
    return np.array([100 * c / r["episode_queries"] for r in record["repeats"]
                     if seeds is None or r["seed"] in seeds
                     for c in r["episode_correct"][:count]])


def run(*argv) -> dict:
    return compare.as_json(compare.compare(compare.parse_args(argv)))


def test_hypermaml_against_maml_from_their_records():
    found = run(HYPER, MAML)
    difference = per_episode(recorded(HYPER)) - per_episode(recorded(MAML))
    assert found["n_episodes"] == len(difference) == 3000
    assert found["sources"][0].startswith("recorded test")
    assert found["difference"]["mean"] == pytest.approx(difference.mean())
    # Student-t with 2,999 degrees of freedom: 1.9608 x sd / sqrt(n).
    assert found["difference"]["half"] == pytest.approx(
        1.9608 * difference.std(ddof=1) / np.sqrt(3000), rel=1e-4)
    assert found["significant"] and found["difference"]["mean"] > 10
    # The same episodes cancel their difficulty: the unpaired interval is wider.
    assert found["unpaired_half"] > 1.3 * found["difference"]["half"]


def test_a_difference_that_is_not_significant():
    """MAML in fp32 and in bf16 on the first 50 episodes of seed 0: 1.5 points apart, which
    50 episodes cannot tell from chance (on all 3,000 they can)."""
    found = run(MAML, f"{MAML}_bf16", "--repeat", "1", "--n_episode", "50")
    assert found["n_episodes"] == 50 and not found["significant"]
    assert found["p_t"] > 0.05 and found["p_wilcoxon"] > 0.05
    low = found["difference"]["mean"] - found["difference"]["half"]
    assert low < 0 < found["difference"]["mean"] + found["difference"]["half"]
    argv = [MAML, f"{MAML}_bf16", "--repeat", "1", "--n_episode", "50"]
    text = compare.report(compare.compare(compare.parse_args(argv)))
    assert "no significant difference on these episodes" in text
    assert run(MAML, f"{MAML}_bf16")["significant"]


def test_models_tested_anew_see_the_recorded_episodes(data_dir):
    """A model file and a run tested now by test.py, on the first 12 episodes of seed 0: each
    scores what its record holds for those episodes, episode by episode."""
    argv = [str(REPO_ROOT / "models" / f"{HYPER}.safetensors"), MAML, "--test", "--repeat", "1", "--n_episode",
            "12", "--data_dir", str(data_dir)]
    found = compare.compare(compare.parse_args(argv))
    assert found["sources"] == ["tested now", "tested now"]
    for name, key in ((HYPER, "acc_a"), (MAML, "acc_b")):
        assert found[key].mean == pytest.approx(per_episode(recorded(name), {0}, 12).mean())


def test_refusals_name_what_differs():
    with pytest.raises(UserError, match="--n_shot 1 against 5"):
        run(MAML, "maml_cross_char_5shot_128")
    with pytest.raises(UserError, match=r"different episodes .*seeds 0-4.* against .*seeds 1-5"):
        run(MAML, f"{MAML}_seed1")
    # Streams both records hold: seeds 1-4.
    assert run(MAML, f"{MAML}_seed1", "--seed", "1", "--repeat", "4")["n_episodes"] == 2400
    with pytest.raises(UserError, match="neither a model file"):
        run("hypermaml_cross_char", MAML)
    done = subprocess.run([sys.executable, "-m", "results.compare", MAML,
                           "maml_cross_char_5shot_128"], cwd=REPO_ROOT, capture_output=True,
                          text=True)
    assert done.returncode != 0 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "--n_shot 1 against 5" in done.stderr


def test_records_whose_episodes_differ_are_refused(tmp_path, monkeypatch):
    """Equal protocols but different episode digests (say, a benchmark folder rebuilt under
    the same name): refused, not compared."""
    monkeypatch.setattr(runner, "RUNS", tmp_path)
    for name, digest in ((HYPER, "a" * 16), (MAML, "b" * 16)):
        shutil.copytree(REPO_ROOT / "results" / "runs" / name / "record",
                        tmp_path / name / "record")
        record = recorded(name)
        for repeat in record["repeats"]:
            repeat["episodes_sha"] = digest
        (tmp_path / name / "record" / "results.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(UserError, match="drew different episodes"):
        run(HYPER, MAML)
