"""What several test modules share: the entry points loaded by path and run in-process, the
one-line error check, tiny float64 MAML tasks and their meta-gradients, synthetic calibration
data, the reference's commands read from a file. (Fixtures live in conftest.py.)"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import torch

from backbones import Conv4S
from conftest import REPO_ROOT, TEST_DEVICE, on_test_device
from data.episodes import Episode
from methods import MAML


# --- the entry points ------------------------------------------------------------------------
def load_entry(name: str):
    """Load train.py / test.py by path (``test`` would otherwise be the standard library's)."""
    spec = importlib.util.spec_from_file_location(f"entry_{name}", REPO_ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


TRAIN, TEST, PREDICT = load_entry("train"), load_entry("test"), load_entry("predict")
# --final_test 0: the tests that train check the final test where they mean to.
TINY = ["--dataset", "cross_char", "--method", "maml", "--n_shot", "1", "--final_test", "0",
        "--n_task", "2", "--n_episode", "4", "--stop_epoch", "1"]


def run(entry, argv, capsys) -> tuple[int, str, str]:
    code = entry.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, pattern):
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]


def run_folder(save_dir: Path, method="maml", way=5, shot=1, dataset="cross_char",
               model=None) -> Path:
    model = model or ("Conv4Pool" if dataset in ("CUB", "miniImagenet", "cross") else "Conv4")
    return save_dir / "checkpoints" / dataset / f"{model}_{method}_{way}way_{shot}shot"


def train_command(data_dir, save_dir, method, *extra):
    """A 100-epoch run (it is stopped long before its end) keeping every epoch's checkpoint."""
    return [sys.executable, str(REPO_ROOT / "train.py"), *TINY[:2], "--method", method,
            *TINY[4:-1], "50", "--save_freq", "1",
            "--lr_scheduler", "multisteplr", "--milestones", "3", "6", "--eval_freq", "2",
            "--data_dir", str(data_dir), "--save_dir", str(save_dir),
            "--device", str(TEST_DEVICE), *extra]


def run_until(command, epoch: int, sig: int) -> tuple[int, str]:
    """Run ``command`` until it prints epoch ``epoch``'s line (that epoch's checkpoints are
    then on disk), send it ``sig``; return its exit status and output. The run is far longer
    than that, so the signal always finds it running."""
    # A job started in the background inherits SIGINT ignored, and Python then never turns
    # Ctrl-C into KeyboardInterrupt: give the run the default disposition, as a terminal would.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(f"epoch {epoch}:"):
            proc.send_signal(sig)
            break
    rest, err = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + rest + err


# --- tiny MAML tasks in float64 --------------------------------------------------------------
N_WAY = 3


def tiny_episode(seed: int = 0, n_shot: int = 2, n_query: int = 3) -> Episode:
    g = torch.Generator().manual_seed(seed)
    # 8x8 images through 3 blocks end at 1x1, so the feature is the block width.
    return on_test_device(Episode(
        support_x=torch.randn(N_WAY * n_shot, 1, 8, 8, generator=g, dtype=torch.float64),
        support_y=torch.arange(N_WAY).repeat_interleave(n_shot),
        query_x=torch.randn(N_WAY * n_query, 1, 8, 8, generator=g, dtype=torch.float64),
        query_y=torch.arange(N_WAY).repeat_interleave(n_query)))


def tiny_maml(cls=MAML, inner_steps: int = 2, inner_lr: float = 0.4, **kwargs) -> MAML:
    torch.manual_seed(0)
    model = cls(Conv4S(image_size=8, width=3, depth=3), N_WAY, inner_steps=inner_steps,
                inner_lr=inner_lr, **kwargs).double().to(TEST_DEVICE)
    with torch.no_grad():  # a non-zero classifier bias, so its gradient is exercised too
        model.classifier[0].bias.normal_()
    return model


def meta_gradient(model: MAML, episode: Episode) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model.accumulate_meta_gradient([episode])
    return [p.grad.clone() for p in model.parameters()]


def query_loss(model: MAML, episode: Episode) -> float:
    loss, _ = model.task_loss(episode, training=True)
    return float(loss.detach())


def assert_meta_gradient_matches_finite_differences(model: MAML, episode: Episode) -> None:
    analytic = meta_gradient(model, episode)
    eps = 1e-6
    for param, grad in zip(model.parameters(), analytic):
        flat = param.data.view(-1)
        numeric = torch.empty_like(flat)
        for i in range(flat.numel()):
            original = flat[i].item()
            flat[i] = original + eps
            plus = query_loss(model, episode)
            flat[i] = original - eps
            minus = query_loss(model, episode)
            flat[i] = original
            numeric[i] = (plus - minus) / (2 * eps)
        torch.testing.assert_close(grad.view(-1), numeric, atol=1e-7, rtol=1e-5)


def assert_batch_gradient_is_the_sum_over_tasks(model) -> None:
    """What MetaGradient and runtime/distributed.py rely on: a meta-batch's gradient is the sum of
    its tasks' gradients."""
    episodes = [tiny_episode(s) for s in range(3)]
    model.zero_grad(set_to_none=True)
    model.accumulate_meta_gradient(episodes)
    together = [p.grad.clone() for p in model.parameters()]
    separate = [meta_gradient(model, e) for e in episodes]
    for i, grad in enumerate(together):
        torch.testing.assert_close(grad, sum(s[i] for s in separate))


# --- calibration -------------------------------------------------------------------------------
def synthetic(n=200_000, overconfidence=0.0, seed=0):
    """Two-class predictions of confidence c ~ U(0.5, 1), right with probability c - shift."""
    g = torch.Generator().manual_seed(seed)
    c = 0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    right = torch.rand(n, generator=g, dtype=torch.float64) < (c - overconfidence)
    logits = torch.stack([torch.log(c), torch.log1p(-c)], 1)  # predicts class 0 with prob c
    labels = torch.where(right, 0, 1)
    return logits, labels


# --- the reference's commands -----------------------------------------------------------------
def read_commands(path) -> dict[str, list[str]]:
    """The train.py arguments of each command in a file of the reference's commands, by its
    heading (none if the file is not there)."""
    if not path.exists():
        return {}
    commands, name, lines = {}, None, []
    for line in path.read_text().splitlines() + [""]:
        if line.startswith("## "):
            name = line[3:].strip()
        elif line.strip() and not line.startswith("#"):
            lines.append(line.rstrip().rstrip("\\"))
        elif lines:
            words = shlex.split(" ".join(lines))
            assert words[:2] == ["python", "train.py"], words[:2]
            commands[name], lines = words[2:], []
    return commands
