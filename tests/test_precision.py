"""--precision: bf16 autocast computes what fp32 computes, to bf16's accuracy, with float32
weights and gradients; a run keeps its precision when resumed; TF32 is refused off CUDA."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cli import config
from conftest import TEST_DEVICE
from data.episodes import TRAIN_QUERY
from helpers import TINY, TRAIN, assert_one_line_error, run
from methods import METHODS
from runtime import setup
from runtime.distributed import World
from runtime.setup import bf16_kernels

PUBLISHED_HYPERNET = ["--hn_head_len", "3", "--hn_hidden_size", "512", "--hm_enhance_embeddings",
                      "True", "--hm_use_class_batch_input", "--hm_maml_warmup"]


@pytest.mark.parametrize("method,extra,epoch", [("maml", [], 0),
                                                ("hyper_maml", PUBLISHED_HYPERNET, 60),
                                                ("hyper_maml", PUBLISHED_HYPERNET, 700)])
def test_bf16_is_close_to_fp32_on_a_real_episode(method, extra, epoch, data_dir):
    argv = ["--dataset", "cross_char", "--method", method, "--n_shot", "1",
            "--data_dir", str(data_dir), *extra]
    opts, benchmark = setup.settle(config.parse("train", list(METHODS), argv)[0], set(), "train")
    sampler = setup.samplers(opts, benchmark, TEST_DEVICE, World(),
                             {"base": ("base", 5, TRAIN_QUERY)}, say=lambda *_: None)["base"]
    episodes = [sampler.episode(i) for i in range(2)]
    torch.manual_seed(0)
    model = setup.build_method(opts, benchmark, setup.choose_compute(opts, TEST_DEVICE))
    model.set_epoch(epoch, 2048)
    runs = {}
    for precision in ("fp32", "bf16"):
        model.zero_grad(set_to_none=True)
        with setup.Compute(TEST_DEVICE, precision=precision).arithmetic():
            losses = [r.loss for r in model.accumulate_meta_gradient(episodes)]
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        assert all(g.dtype == torch.float32 for g in grads.values())  # float32 master weights
        runs[precision] = losses, torch.cat([g.flatten() for g in grads.values()])
    (loss32, grad32), (loss16, grad16) = runs["fp32"], runs["bf16"]
    assert loss16 == pytest.approx(loss32, rel=0.03)
    assert not torch.equal(grad16, grad32)  # bf16 really ran
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.95


def test_a_resumed_run_keeps_its_precision(data_dir, tmp_path, capsys):
    # One task per epoch: bf16 is emulated, and slow, on a CPU without bf16 units.
    common = TINY + ["--n_task", "1", "--n_episode", "2", "--data_dir", data_dir,
                     "--save_dir", tmp_path]
    code, out, _ = run(TRAIN, common + ["--precision", "bf16"], capsys)
    assert code == 0 and "loop engine, bf16;" in out
    code, out, _ = run(TRAIN, common + ["--stop_epoch", "2", "--resume"], capsys)
    assert code == 0 and "loop engine, bf16;" in out and "epoch 1:" in out
    folder = tmp_path / "checkpoints" / "cross_char" / "Conv4_maml_5way_1shot"
    assert json.loads((folder / "args.json").read_text())["precision"] == "bf16"
    state = torch.load(folder / "last_model.tar", weights_only=True)
    assert state["config"]["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in state["model"].values())


def test_tf32_is_for_cuda(tmp_path, capsys):
    if TEST_DEVICE.type == "cuda":
        pytest.skip("TF32 is available here")
    code, _, err = run(TRAIN, TINY + ["--device", "cpu", "--precision", "tf32",
                                      "--save_dir", tmp_path, "--data_dir", tmp_path / "no",
                                      "--no_download"], capsys)
    assert_one_line_error(code, err, "tf32 is a CUDA GPU format")


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the kernel's CPU flags")
def test_bf16_kernels_name_the_cpus_bf16_instructions():
    """What a bf16 test record says it ran on agrees with the flags the kernel reports: AMX
    tiles first, then AVX512-BF16, else neither (and a GPU is named by its type)."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    expected = ("amx" if "amx_tile" in flags else
                "avx512_bf16" if "avx512_bf16" in flags else None)
    named = bf16_kernels(torch.device("cpu"))
    if expected is None:
        assert named.startswith("no bf16 units")
    else:
        assert named == expected
    assert bf16_kernels(torch.device("cuda")) == "cuda"
