"""The experiments that RESULTS.md reports, each a ``train.py`` command line (``test.py`` runs
with the same options) and the number of epochs the published schedule has.

``python -m results.run NAME`` runs one (resumably), ``python -m results.report`` rebuilds
RESULTS.md from the records the runs leave in ``results/runs/NAME/``.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

# The reference's published cross_char commands (its commands.sh), word for word
# (../shared/reference/published-commands.txt).
PUBLISHED_HYPER_MAML = (
    "--method hyper_maml --model Conv4 --dataset cross_char --num_classes 4112 --n_shot 1 "
    "--test_n_way 5 --train_n_way 5 --stop_epoch 64 --lr_scheduler multisteplr --lr 1e-2 "
    "--hm_maml_warmup --hm_maml_warmup_epochs 50 --hm_maml_warmup_switch_epochs 500 "
    "--milestones 51 550 --hn_head_len 3 --hn_hidden_size 512 --hm_enhance_embeddings True "
    "--hm_use_class_batch_input")
PUBLISHED_HYPER_MAML_5SHOT = (
    "--method hyper_maml --model Conv4 --dataset cross_char --num_classes 4112 --n_shot 5 "
    "--test_n_way 5 --train_n_way 5 --stop_epoch 64 --lr_scheduler multisteplr --lr 1e-2 "
    "--hm_maml_warmup --hm_maml_warmup_epochs 50 --hm_maml_warmup_switch_epochs 500 "
    "--milestones 51 550 --hn_head_len 3 --hn_hidden_size 512 --hm_enhance_embeddings True "
    "--hm_use_class_batch_input --hn_sup_aggregation mean")
PUBLISHED_BAYES_HMAML = (
    "--hm_weight_set_num_test 0 --es_threshold 10 --dataset cross_char --num_classes 4112 "
    "--train_n_way 5 --seed 1 --method bayes_hmaml --stop_epoch 64 --model Conv4 "
    "--hm_enhance_embeddings True --hm_use_class_batch_input --lr_scheduler multisteplr "
    "--n_shot 1 --hm_maml_warmup --lr 0.01 --hm_maml_warmup_epochs 50 "
    "--hm_maml_warmup_switch_epochs 500 --hn_head_len 3 --hn_hidden_size 512 --milestones 51 550 "
    "--kl_stop_val 0.001 --kl_scale 1e-24 --hm_weight_set_num_train 5")
PUBLISHED_BAYES_HMAML_5SHOT = (
    "--model Conv4 --dataset cross_char --num_classes 4112 --n_shot 5 --train_n_way 5 "
    "--method bayes_hmaml --stop_epoch 64 --lr_scheduler multisteplr --hm_maml_warmup "
    "--hm_maml_warmup_epochs 50 --hm_maml_warmup_switch_epochs 500 --milestones 51 550 "
    "--hn_head_len 3 --hn_hidden_size 512 --hm_enhance_embeddings True "
    "--hm_use_class_batch_input --hn_sup_aggregation mean --hm_weight_set_num_test 0 "
    "--es_threshold 0.0 --kl_scale=1e-24 --hm_weight_set_num_train 5 --kl_stop_val 0.001 "
    "--lr 0.01")

# A sixteenth of HyperMAML's schedule (128 epochs): the published architecture with the
# warm-up, switch and lr drop scaled down to fit (the README's short runs).
SHORT_HYPERNET = (
    "--stop_epoch 4 --lr 1e-2 --lr_scheduler multisteplr --milestones 100 --hm_maml_warmup "
    "--hm_maml_warmup_epochs 10 --hm_maml_warmup_switch_epochs 40 --hn_head_len 3 "
    "--hn_hidden_size 512 --hm_enhance_embeddings True --hm_use_class_batch_input")
SHORT_BAYES = ("--kl_scale 1e-24 --kl_stop_val 0.001 --hm_weight_set_num_train 5 "
               "--hm_weight_set_num_test 0")


# The reference's published CUB commands (published-commands-images.txt), word for word but
# for the dataset (CUB-100, below) and the schedule: HyperMAML's 1,000 x n_task 4 = 4,000
# epochs take about 7.2 days on one CPU thread at 84 pixels (docs/performance.md), so the
# HyperMAML and BayesHMAML photograph rows run 24 epochs (0.6%), with the warm-up, the switch
# and the lr drop at about the fractions of the run where the cross_char short schedule (the
# 128-epoch rows) has them: warm-up epochs 0-1, switch over epochs 2-9, lr x 0.3 at epoch 18
# (published: warm-up 0-99, switch 100-1099, lr drops at 101 and 1100 of 4,000). MAML costs
# twice as much per training task and three times as much per test task (its inner steps),
# so its rows run 8 epochs, to fit about two hours with their 3,600 test episodes.
PUBLISHED_CUB = {
    ("hyper_maml", 1): "--method hyper_maml --model Conv4Pool --dataset CUB --num_classes 200 "
    "--n_shot 1 --test_n_way 5 --train_n_way 5 --train_aug --stop_epoch 1000 --es_threshold 20 "
    "--lr 1e-3 --lr_scheduler multisteplr --hm_maml_warmup --hm_maml_warmup_epochs 100 "
    "--hm_maml_warmup_switch_epochs 1000 --milestones 101 1100 --hn_head_len 3 "
    "--hn_hidden_size 256 --hm_enhance_embeddings True --hm_use_class_batch_input",
    ("hyper_maml", 5): "--method hyper_maml --model Conv4Pool --dataset CUB --num_classes 200 "
    "--n_shot 5 --test_n_way 5 --train_n_way 5 --train_aug --stop_epoch 1000 --es_threshold 20 "
    "--lr 1e-3 --lr_scheduler multisteplr --hm_maml_warmup --hm_maml_warmup_epochs 100 "
    "--hm_maml_warmup_switch_epochs 1000 --milestones 101 1100 --hn_head_len 3 "
    "--hn_hidden_size 256 --hm_enhance_embeddings True --hm_use_class_batch_input "
    "--hn_sup_aggregation mean",
    ("bayes_hmaml", 1): "--hm_weight_set_num_test 0 --method bayes_hmaml --model Conv4Pool "
    "--dataset CUB --num_classes 200 --n_shot 1 --test_n_way 5 --train_n_way 5 --train_aug "
    "--stop_epoch 1000 --es_threshold 20 --lr 0.01 --lr_scheduler multisteplr --hm_maml_warmup "
    "--hm_maml_warmup_epochs 100 --hm_maml_warmup_switch_epochs 1000 --milestones 101 1100 "
    "--hn_head_len 3 --hn_hidden_size 256 --hm_enhance_embeddings True "
    "--hm_use_class_batch_input --kl_scale 1e-24 --kl_stop_val 0.0001 "
    "--hm_weight_set_num_train 5",
    ("bayes_hmaml", 5): "--method bayes_hmaml --model Conv4Pool --dataset CUB --num_classes 200 "
    "--n_shot 5 --test_n_way 5 --train_n_way 5 --train_aug --stop_epoch 1000 --es_threshold 20 "
    "--lr 1e-3 --lr_scheduler multisteplr --hm_maml_warmup --hm_maml_warmup_epochs 100 "
    "--hm_maml_warmup_switch_epochs 1000 --milestones 101 1100 --hn_head_len 3 "
    "--hn_hidden_size 256 --hm_enhance_embeddings True --hm_use_class_batch_input "
    "--hn_sup_aggregation mean --hm_weight_set_num_test 0 --hm_weight_set_num_train 5 "
    "--kl_stop_val 1e-5",
    # No MAML command is published for CUB: the reference's defaults (n_task 4, 5 inner
    # steps of 0.01, lr 1e-3) with the published image commands' backbone and augmentation.
    **{("maml", shots): f"--method maml --model Conv4Pool --dataset CUB --n_shot {shots} "
       "--test_n_way 5 --train_n_way 5 --train_aug" for shots in (1, 5)},
}
# ...and for mini-ImageNet (no mini-ImageNet is in ../shared/data: commands.sh runs them where
# a user has prepared it; BayesHMAML 5-shot's --resume is the reference's own).
PUBLISHED_MINI = {
    ("hyper_maml", 1): PUBLISHED_CUB[("hyper_maml", 1)].replace("--dataset CUB",
                                                               "--dataset miniImagenet"),
    ("hyper_maml", 5): PUBLISHED_CUB[("hyper_maml", 5)].replace("--dataset CUB",
                                                               "--dataset miniImagenet"),
    ("bayes_hmaml", 1): "--method bayes_hmaml --hm_weight_set_num_test 0 --model Conv4Pool "
    "--dataset miniImagenet --num_classes 200 --n_shot 1 --test_n_way 5 --train_n_way 5 "
    "--train_aug --stop_epoch 1000 --es_threshold 20 --lr 0.001 --lr_scheduler multisteplr "
    "--hm_maml_warmup --hm_maml_warmup_epochs 100 --hm_maml_warmup_switch_epochs 1000 "
    "--milestones 101 1100 --hn_head_len 3 --hn_hidden_size 256 --hm_enhance_embeddings True "
    "--hm_use_class_batch_input --kl_scale 1e-24 --kl_stop_val 0.0001 "
    "--hm_weight_set_num_train 5",
    ("bayes_hmaml", 5): "--method bayes_hmaml --model Conv4Pool --dataset miniImagenet "
    "--num_classes 200 --n_shot 5 --test_n_way 5 --train_n_way 5 --train_aug --stop_epoch 1000 "
    "--es_threshold 20 --lr 1e-3 --lr_scheduler multisteplr --hm_maml_warmup "
    "--hm_maml_warmup_epochs 100 --hm_maml_warmup_switch_epochs 1000 --milestones 101 1100 "
    "--hn_head_len 3 --hn_hidden_size 256 --hm_enhance_embeddings True "
    "--hm_use_class_batch_input --hn_sup_aggregation mean --resume --hm_weight_set_num_test 0 "
    "--hm_weight_set_num_train 5 --kl_stop_val 1e-5",
}
PHOTO_SCHEDULE = {"--stop_epoch 1000": "--stop_epoch 6", "--hm_maml_warmup_epochs 100":
                  "--hm_maml_warmup_epochs 2", "--hm_maml_warmup_switch_epochs 1000":
                  "--hm_maml_warmup_switch_epochs 8", "--milestones 101 1100": "--milestones 18"}
PHOTO_EPOCHS = 24
# MAML's second-order inner loop at 84 pixels costs about 4 s a training episode on one thread
# (5-shot: 25 support images through 5 steps); 8 epochs fit two hours at 1-shot, 4 at 5-shot.
MAML_PHOTO_EPOCHS = {1: 8, 5: 4}
PHOTO_GROUP = ("real photographs: CUB-100 (100 CUB-200-2011 species, split 50 / 25 / 25) and "
               "Caltech-101 -> CUB-100, 84 pixels, 24 epochs (MAML 1-shot 8; MAML 5-shot 4)")

# Where the photograph folders come from (../shared/data, or $FSL_DATA_SOURCE), and the
# benchmarks python -m data.folder makes of them under filelists/ (results.run makes them).
PHOTO_SOURCE = Path(os.environ.get("FSL_DATA_SOURCE")
                    or Path(__file__).resolve().parents[2] / "shared" / "data")
PHOTO_BENCHMARKS = {
    "filelists/cub100": (str(PHOTO_SOURCE / "cub100"), "--fractions", "0.5", "0.25", "0.25"),
    "filelists/caltech101": (str(PHOTO_SOURCE / "caltech101"),),
    "filelists/caltech_to_cub100": ("--cross", "filelists/caltech101", "filelists/cub100"),
}


def _photos(method: str, shots: int, dataset: str = "filelists/cub100") -> "Experiment":
    options = PUBLISHED_CUB[(method, shots)].replace("--dataset CUB", f"--dataset {dataset}")
    for published, scaled in PHOTO_SCHEDULE.items():
        options = options.replace(published, scaled)
    if method == "maml":
        options += f" --stop_epoch {MAML_PHOTO_EPOCHS[shots] // 4}"
    published = 4000 if method != "maml" else (2400 if shots == 1 else 1600)
    needs = [d for d in PHOTO_BENCHMARKS if d in (dataset, "filelists/cub100")]
    if dataset == "filelists/caltech_to_cub100":
        needs = list(PHOTO_BENCHMARKS)
    return Experiment(options, published, PHOTO_GROUP,
                      prepare=tuple((d, PHOTO_BENCHMARKS[d]) for d in needs))


PRECISION_GROUP = ("precision: bf16 against fp32, and a second fp32 seed (cross_char 1-shot, "
                   "128 epochs)")


@dataclass(frozen=True)
class Experiment:
    """One row of RESULTS.md: ``train`` is train.py's command line (test.py gets the same);
    ``published_epochs`` the epochs of the method's published schedule; ``group`` the table;
    ``compare`` rows of other tables repeated in this one, to be read side by side;
    ``prepare`` the benchmarks of image folders it needs."""
    train: str
    published_epochs: int
    group: str
    compare: tuple[str, ...] = ()
    # (benchmark folder, python -m data.folder arguments) made before training if missing
    prepare: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())

    def argv(self) -> list[str]:
        return self.train.split()


BASELINE_GROUP = ("baselines, cross_char, 128 epochs (12,800 training episodes): ProtoNet, "
                  "ANIL, Meta-SGD beside MAML and HyperMAML")


def _short(method: str, shots: int, dataset: str = "cross_char", ways: int = 5,
           group: str | None = None) -> Experiment:
    options = f"--dataset {dataset} --model Conv4 --method {method} --n_shot {shots}"
    if ways != 5:
        options += f" --train_n_way {ways} --test_n_way {ways}"
    published = 2048 if method in ("hyper_maml", "bayes_hmaml") else (19200 if shots == 1
                                                                      else 12800)
    if method == "protonet":
        # CloserLookFewShot's ProtoNet: one episode per Adam step (no meta-batch), 600 epochs
        # at 1-shot, 400 otherwise; the same 12,800 training episodes as the 128-epoch rows.
        options += " --n_task 1 --stop_epoch 128"
        published = 600 if shots == 1 else 400
    elif method in ("hyper_maml", "bayes_hmaml"):
        options += " " + SHORT_HYPERNET
        if method == "bayes_hmaml":
            options += " " + SHORT_BAYES
        if shots > 1:
            options += " --hn_sup_aggregation mean"
    else:
        options += " --stop_epoch 4"
    if group is None:
        group = "equal budget, cross_char" if dataset == "cross_char" else "Omniglot"
    return Experiment(options, published, group)


EXPERIMENTS: dict[str, Experiment] = {
    "hyper_maml_cross_char_1shot_published": Experiment(PUBLISHED_HYPER_MAML, 2048, "published"),
    **{f"{method}_cross_char_{shots}shot_128": _short(method, shots)
       for method in ("maml", "maml_approx", "hyper_maml", "bayes_hmaml") for shots in (1, 5)},
    # The standard baselines (#40) on the same budget: MAML's protocol for ANIL and Meta-SGD
    # (whose papers used MAML's schedule), CloserLookFewShot's for ProtoNet.
    **{f"{method}_cross_char_{shots}shot_128":
       replace(_short(method, shots, group=BASELINE_GROUP),
               compare=(f"maml_cross_char_{shots}shot_128",
                        f"hyper_maml_cross_char_{shots}shot_128"))
       for method in ("protonet", "anil", "meta_sgd") for shots in (1, 5)},
    **{f"{method}_omniglot_{ways}way_1shot_128": _short(method, 1, "omniglot", ways)
       for method in ("maml", "hyper_maml") for ways in (5, 20)},
    "bayes_hmaml_cross_char_1shot_published": Experiment(PUBLISHED_BAYES_HMAML, 2048,
                                                         "published"),
    "hyper_maml_cross_char_5shot_published": Experiment(PUBLISHED_HYPER_MAML_5SHOT, 2048,
                                                        "published"),
    "bayes_hmaml_cross_char_5shot_published": Experiment(PUBLISHED_BAYES_HMAML_5SHOT, 2048,
                                                         "published"),
    **{f"hyper_maml_cross_char_1shot_published_seed{seed}":
       Experiment(f"{PUBLISHED_HYPER_MAML} --seed {seed}", 2048, "published")
       for seed in (1, 2)},
    # bf16 against fp32 (speed issue): the short 1-shot runs again in bf16 with the same seed,
    # and with a second seed in fp32 to show how far apart two fp32 runs land.
    **{f"{method}_cross_char_1shot_128_{variant}":
       Experiment(f"{_short(method, 1).train} {option}", _short(method, 1).published_epochs,
                  PRECISION_GROUP, (f"{method}_cross_char_1shot_128",))
       for method in ("maml", "hyper_maml")
       for variant, option in (("bf16", "--precision bf16"), ("seed1", "--seed 1"))},
    **{f"{method}_cub100_{shots}shot_{MAML_PHOTO_EPOCHS[shots] if method == 'maml' else PHOTO_EPOCHS}":
       _photos(method, shots)
       for method in ("hyper_maml", "bayes_hmaml", "maml") for shots in (1, 5)},
    f"hyper_maml_caltech_to_cub100_1shot_{PHOTO_EPOCHS}":
        _photos("hyper_maml", 1, "filelists/caltech_to_cub100"),
}

# A training seed of an experiment is a run of its own, named NAME_seedS (``python -m
# results.run NAME --seeds 0 1 2``): NAME's command line with ``--seed S``, in a folder and
# with a model file of its own; NAME itself is its command's seed (0 unless it names one).
SEED_SUFFIX = re.compile(r"^(?P<base>.+)_seed(?P<seed>\d+)$")


def own_seed(name: str) -> int:
    argv = EXPERIMENTS[name].argv()
    return int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0


def seed_run(name: str, seed: int) -> str:
    """The run name of experiment ``name`` trained with ``seed``."""
    return name if seed == own_seed(name) else f"{name}_seed{seed}"


def seed_of(run: str) -> tuple[str, int]:
    """The experiment a run repeats and its training seed: (``run``, its own seed) for an
    experiment, (NAME, S) for NAME_seedS."""
    match = SEED_SUFFIX.match(run)
    if match and match["base"] in EXPERIMENTS:
        base, seed = match["base"], int(match["seed"])
        # An entry of EXPERIMENTS may follow the rule too (NAME_seed1 written out by hand)
        if run not in EXPERIMENTS or \
                EXPERIMENTS[run].argv() == with_seed(EXPERIMENTS[base], seed).argv():
            return base, seed
    if run not in EXPERIMENTS:
        raise KeyError(run)
    return run, own_seed(run)


def with_seed(experiment: Experiment, seed: int) -> Experiment:
    argv = experiment.argv()
    if "--seed" in argv:
        argv[argv.index("--seed") + 1] = str(seed)
    else:
        argv += ["--seed", str(seed)]
    return replace(experiment, train=" ".join(argv))


def experiment(run: str) -> Experiment:
    """The experiment of a run name: an entry of EXPERIMENTS or a seed of one (NAME_seedS);
    KeyError for any other name."""
    if run in EXPERIMENTS:
        return EXPERIMENTS[run]
    base, seed = seed_of(run)
    return with_seed(EXPERIMENTS[base], seed)


# What the literature reports for the same setting, shown beside ours in the README's summary
# (sources: the reference's own results log; Patacchiola et al. 2020, DKT, for MAML 5-shot;
# Finn et al. 2017, MAML, for Omniglot, with its own split and strided convolutions).
REFERENCE_NUMBERS: dict[str, str] = {
    "hyper_maml_cross_char_1shot_published": "77.61% (reference log; best logged runs "
                                             "79.6-80.5%)",
    "maml_cross_char_1shot_128": "75.11% after 19,200 epochs (reference log)",
    "maml_cross_char_5shot_128": "83.54 +- 1.79% after 12,800 epochs (DKT paper)",
    "maml_omniglot_5way_1shot_128": "98.7 +- 0.4% (MAML paper, its own protocol)",
    "maml_omniglot_20way_1shot_128": "95.8 +- 0.3% (MAML paper, its own protocol)",
}

# The published experiments commands.sh runs, by name (METHOD_DATASET_Kshot): the reference's
# commands word for word where it published them (HyperMAML and BayesHMAML on cross_char and
# CUB), MAML with the reference's defaults (none is published), and on Omniglot the
# cross_char command on Omniglot's Vinyals splits.
PUBLISHED_CROSS_CHAR = {("hyper_maml", 1): PUBLISHED_HYPER_MAML,
                        ("hyper_maml", 5): PUBLISHED_HYPER_MAML_5SHOT,
                        ("bayes_hmaml", 1): PUBLISHED_BAYES_HMAML,
                        ("bayes_hmaml", 5): PUBLISHED_BAYES_HMAML_5SHOT}


def _published(method: str, dataset: str, shots: int) -> str:
    if dataset == "CUB":
        return PUBLISHED_CUB[(method, shots)]
    if method in ("maml", "maml_approx"):
        return f"--dataset {dataset} --model Conv4 --method {method} --n_shot {shots}"
    return PUBLISHED_CROSS_CHAR[(method, shots)].replace("--dataset cross_char",
                                                         f"--dataset {dataset}")


PUBLISHED: dict[str, str] = {
    **{f"{method}_{dataset}_{shots}shot": _published(method, dataset, shots)
       for method in ("maml", "maml_approx", "hyper_maml", "bayes_hmaml")
       for dataset in ("cross_char", "omniglot") for shots in (1, 5)},
    **{f"{method}_CUB_{shots}shot": _published(method, "CUB", shots)
       for method in ("maml", "hyper_maml", "bayes_hmaml") for shots in (1, 5)},
    **{f"{method}_miniImagenet_{shots}shot": PUBLISHED_MINI[(method, shots)]
       for method in ("hyper_maml", "bayes_hmaml") for shots in (1, 5)},
}


def main(argv: list[str] | None = None) -> int:
    """``python -m results.experiments NAME``: train.py's arguments of the published
    experiment NAME, one per line (commands.sh runs them); ``--list``: the names."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--list"]:
        print("\n".join(PUBLISHED))
        return 0
    if len(args) != 1 or args[0] not in PUBLISHED:
        print(f"unknown experiment: {' '.join(args)} (python -m results.experiments --list "
              "names them)", file=sys.stderr)
        return 2
    print("\n".join(PUBLISHED[args[0]].split()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
