"""One typed source of every option: dataclass fields feed argparse for train.py and test.py.
:class:`Options` holds the runs' own options and those each method declares beside its code
(``HyperOptions``, ``BayesOptions``), each declared once with :func:`methods.options.option`.

Each field carries its help text and a *scope*:
- ``run``: used by both entry points, free to differ between training and testing
  (seed, device, data location);
- ``model``: decides what the trained model is; saved in the checkpoint and, in test.py, taken
  from it (a value given on the test command line must agree with it);
- ``train`` / ``test``: only that entry point has the option;
- ``eval``: how a trained model is tested, by test.py and by the final test of train.py;
- ``inference``: how the trained method predicts at validation and test (BayesHMAML's sampled
  classifiers, fine-tuning on the support set); saved with the run and, where not given,
  taken from it, so that a run or model file tests as it was validated and recorded.

The option names and meanings follow the reference code (CloserLookFewShot / HyperMAML), so
its published commands run unchanged. A value the user gives is never overwritten: options
whose default depends on the dataset or method default to ``None`` here and are resolved once,
visibly, by :func:`resolve`.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Optional, Sequence

from cli.errors import UserError, closest
from data.benchmarks import Benchmark, find
from methods.bayes_hmaml import BayesOptions
from methods.hypermaml import HyperOptions
from methods.options import option as _opt  # the runs' options, declared as the methods' are

# Conv4: the reference's three-channel network; Conv4S: one channel; Conv4Pool: average
# pooled; Conv6: six blocks (backbones/convnet.py).
MODELS = ("Conv4", "Conv4S", "Conv4Pool", "Conv6")


def str2bool(text: str) -> bool:
    """Parse a boolean option value; the reference's ``type=bool`` turned "False" into True."""
    value = text.strip().lower()
    if value in ("true", "t", "yes", "y", "1"):
        return True
    if value in ("false", "f", "no", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def dataset_argument(text: str) -> str:
    """``--dataset``: a benchmark's name or a benchmark folder, checked as it is parsed."""
    try:
        find(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--dataset {text}: ")) from None
    return text


@dataclass
class RunOptions:
    """The options of every run, before the methods' own; the ``# --- section ---`` comments
    group them on docs/options.md (``python -m docs.write_options`` writes it)."""

    # --- what to run -------------------------------------------------------------------------
    dataset: str = _opt(None, "benchmark: omniglot (Vinyals splits), cross_char (Omniglot "
                        "without Latin -> EMNIST), CUB, miniImagenet, cross (mini-ImageNet "
                        "-> CUB), or a benchmark of a folder of images written by python -m "
                        "data.folder (its path, or its name under filelists/); required, "
                        "except beside test.py --checkpoint",
                        "model", type=dataset_argument, metavar="DATASET")
    method: str = _opt(None, "meta-learning method; required, except beside test.py "
                       "--checkpoint", "model")
    model: str = _opt("Conv4", "backbone: Conv4 reads the image as three normalised RGB "
                      "channels, as the published runs; Conv4S the first channel alone "
                      "(cheaper first layer, not the published model)", "model", choices=MODELS)
    n_shot: int = _opt(5, "support images per class", "model")
    train_n_way: int = _opt(5, "classes per training episode (the classifier's width)", "model")
    test_n_way: int = _opt(5, "classes per validation/test episode", "run")
    seed: int = _opt(0, "seed of the episode stream and the initial weights (0 is a seed too)")

    # --- computation -------------------------------------------------------------------------
    device: str = _opt("auto", "where to compute: auto picks cuda, then mps, then cpu",
                       choices=("auto", "cpu", "cuda", "mps"))
    engine: str = _opt("auto", "task engine: loop (one task at a time) or batched (all tasks "
                       "of a meta-batch through the backbone at once); auto: batched on CUDA, "
                       "the loop on a CPU (faster there)",
                       choices=("auto", "loop", "batched"))
    dist_timeout: float = _opt(600.0, "under torchrun: seconds a rank waits for the others "
                               "before it stops with an error (a rank died or hangs)")
    precision: str = _opt("fp32", "arithmetic: fp32; bf16 computes the backbone and heads in "
                          "bfloat16 under autocast (float32 weights, optimiser state and "
                          "meta-gradient sum; fast where the processor has bf16 units: recent "
                          "GPUs, CPUs with AMX/AVX512-BF16); tf32 lets CUDA matmuls and "
                          "convolutions use TensorFloat-32", choices=("fp32", "bf16", "tf32"))
    memory_format: str = _opt("auto", "layout of the backbone's weights and activations: "
                              "channels_last is faster on a CPU except for MAML's training; "
                              "auto picks it there", choices=("auto", "contiguous",
                                                              "channels_last"))

    # --- accepted from the reference, ignored -----------------------------------------------
    # Accepted so that the reference's published commands run; they change nothing here.
    num_classes: int = _opt(200, "accepted for the reference's commands and ignored: the "
                            "reference reads it only in its baseline methods (softmax width), "
                            "which this toolkit does not have", "train")
    n_val_perms: int = _opt(1, "accepted for the reference's commands and ignored: the "
                            "reference declares it and reads it nowhere")

    # --- data --------------------------------------------------------------------------------
    data_dir: Optional[str] = _opt(None, "root holding omniglot/ and emnist/ (default filelists/)")
    data_source: Optional[str] = _opt(None, "offline copy of the raw files (a folder laid out "
                                      "as ../shared/data) used if data must be prepared; also "
                                      "the environment variable FSL_DATA_SOURCE")
    no_download: bool = _opt(False, "never prepare data automatically; fail if it is missing")

    # --- checkpoints -------------------------------------------------------------------------
    save_dir: str = _opt("./save", "root of checkpoints/{dataset}/{model}_{method}_{n}way_{k}shot")
    # Scope "run", not "model": it names the folder, so a run copied under another suffix is
    # still the same model and tests as itself.
    checkpoint_suffix: str = _opt("", "appended to the checkpoint folder name, to keep runs apart")

    # --- training schedule -------------------------------------------------------------------
    stop_epoch: int = _opt(-1, "epochs in the reference's unit; the MAML family multiplies it "
                           "by n_task (-1: 600 for 1-shot, 400 otherwise, as the reference)",
                           "train")
    start_epoch: int = _opt(0, "epoch number to start counting from (a fresh run)", "train")
    n_episode: Optional[int] = _opt(None, "train.py: training episodes per epoch, and "
                                    "validation episodes (default 100); test.py: test episodes "
                                    "per repeat (default 600; train.py's final test has "
                                    "--final_test)")
    lr: float = _opt(1e-3, "outer (meta) learning rate", "train")
    optim: str = _opt("adam", "outer optimiser", "train", choices=("adam", "sgd"))
    lr_scheduler: str = _opt("none", "multisteplr: lr x 0.3 at each milestone; cosine: cosine "
                             "annealing to 0 over the run (the reference's warm restarts with "
                             "one period of the whole run)", "train",
                             choices=("none", "multisteplr", "cosine"))
    milestones: Optional[list] = _opt(None, "epochs (effective, after the n_task rule) of the lr "
                                      "drops; default every quarter of the run", "train",
                                      nargs="+", type=int)
    resume: bool = _opt(False, "continue the run saved in last_model.tar of the checkpoint folder",
                        "train")
    save_freq: int = _opt(50, "also keep {epoch}.tar every this many epochs", "train")
    eval_freq: int = _opt(1, "validate every this many epochs", "train")
    es_epoch: int = _opt(250, "early stopping: from this epoch on, stop if the best validation "
                         "accuracy is still below es_threshold", "train")
    es_threshold: float = _opt(0.0, "early stopping accuracy threshold in percent (0: never stop)",
                               "train")
    final_test: int = _opt(600, "once training ends, test best_model.tar on the novel split as "
                           "test.py does, with this many episodes per repeat (600, as the "
                           "reference); 0 skips it", "train")
    evaluate_model: bool = _opt(False, "skip training: run the final test of the run's "
                                "best_model.tar at once", "train")
    maml_save_feature_network: bool = _opt(False, "also write the backbone alone, as "
                                           "best_feature_net.tar and last_feature_net.tar, at "
                                           "each validation", "train")
    hm_load_feature_net: bool = _opt(False, "start a fresh run from the backbone in "
                                     "--hm_feature_net_path (e.g. a best_feature_net.tar)",
                                     "train")
    hm_feature_net_path: str = _opt("", "the saved feature network --hm_load_feature_net reads",
                                    "train")
    hm_save_delta_params: bool = _opt(False, "hypernetwork methods: after each epoch, write "
                                      "the classifier update the hypernetwork gives the "
                                      "epoch's first training task to delta_params.jsonl",
                                      "train")
    train_aug: bool = _opt(False, "augment the training images as the reference (random "
                           "resized crop, colour jitter, flip): CUB, miniImagenet and cross; "
                           "refused for omniglot and cross_char, as the reference refuses it")
    warmup: bool = _opt(False, "start from a baseline method's checkpoint: refused, this "
                        "toolkit has no baseline methods (the reference notes it never used it)",
                        "train")

    # --- MAML family ---------------------------------------------------------------------------
    n_task: Optional[int] = _opt(None, "tasks per meta-update (default 4; 32 on omniglot and "
                                 "cross_char, as the reference)", "model")
    task_update_num: Optional[int] = _opt(None, "inner gradient steps (default 5; 1 on omniglot "
                                          "and cross_char)", "model")
    train_lr: Optional[float] = _opt(None, "inner learning rate (default 0.01; 0.1 on omniglot "
                                     "and cross_char)", "model")
    maml_adapt_classifier: bool = _opt(False, "adapt only the classifier in the inner loop",
                                       "model")



@dataclass
class TestOptions:
    """How a trained model is tested (test.py, and train.py's final test)."""

    # --- calibration and plots (test.py) -------------------------------------------------------
    temperature_scaling: bool = _opt(False, "fit a softmax temperature on the val split and "
                                     "report calibration before and after", "eval")
    plot: bool = _opt(False, "save a reliability diagram PNG next to the results (matplotlib)",
                      "eval")

    # --- testing -------------------------------------------------------------------------------
    split: str = _opt("novel", "split to test on", "test", choices=("base", "val", "novel"))
    save_iter: int = _opt(-1, "test the checkpoint of this epoch instead of best_model.tar",
                          "test")
    checkpoint: Optional[str] = _opt(None, "test this file instead of a run folder's "
                                     "checkpoint: a model file (models/*.safetensors) or any "
                                     "run checkpoint (.tar); every model option, --dataset and "
                                     "--method included, comes from it, and --test_n_way "
                                     "too unless given", "test")
    repeat: int = _opt(5, "test repeats, with seeds seed .. seed+repeat-1", "eval")
    adaptation: bool = _opt(False, "adapt more at test time, --hn_val_epochs steps (-1: 100): "
                            "MAML's inner steps; the hypernetwork methods fine-tune on the "
                            "support set (hm_set_forward_with_adaptation)", "eval")
    record_dir: str = _opt("./record", "where results.txt and results.jsonl are appended", "eval")



# The reference's option names that say something other than what they mean stay on the
# command line, so that its published commands run unchanged; the code reads them by the
# honest names (``opts.inner_lr`` is ``--train_lr``), defined here and nowhere else.
HONEST_NAMES = {
    "train_lr": "inner_lr",  # the inner loop's step size (the training rate is --lr)
    "task_update_num": "inner_steps",  # gradient steps of the inner loop, per task
    "n_task": "tasks_per_update",  # the tasks of one meta-update (the meta-batch)
    "hn_val_epochs": "fine_tune_steps",  # optimiser steps of support-set fine-tuning
    "hm_weight_set_num_train": "train_samples",  # classifiers BayesHMAML samples in training
    "hm_weight_set_num_test": "test_samples",  # ... and at validation and test
}


@dataclass
class Options(TestOptions, BayesOptions, HyperOptions, RunOptions):
    """Every option of train.py and test.py: the runs' own and those each method declares
    with its settings (:class:`methods.hypermaml.HyperOptions`,
    :class:`methods.bayes_hmaml.BayesOptions`), in that order on the command line; the
    options :data:`HONEST_NAMES` lists are also read by their honest names."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


for _reference, _honest in HONEST_NAMES.items():
    setattr(Options, _honest, property(lambda self, name=_reference: getattr(self, name),
                                       doc=f"--{_reference}, by what it means"))


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (not the 40-line usage), with the
    closest valid choice where a value was mistyped."""

    def error(self, message: str) -> NoReturn:
        typo = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if typo:
            choices = re.findall(r"'?([^',\s]+)'?", typo.group(2))
            close = closest(typo.group(1), choices)
            if close:
                message += f"; did you mean {close}?"
        unknown = re.search(r"unrecognized arguments: (.*)", message)
        if unknown:  # a mistyped option (--n_shots): name the option it was meant to be
            meant = [(word.split("=")[0], close) for word in unknown.group(1).split()
                     if word.startswith("--")
                     and (close := closest(word.split("=")[0], self._option_string_actions))]
            if len(meant) == 1:
                message += f"; did you mean {meant[0][1]}?"
            elif meant:
                message += f"; did you mean {', '.join(f'{c} for {w}' for w, c in meant)}?"
        self.exit(2, f"error: {message} (python {self.prog} -h lists the options)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless its help already says it (or it has none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or any(action.default is v for v in (None, False,
                                                                   argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action)


def option_fields(scopes: Sequence[str]) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(Options) if f.metadata["scope"] in scopes]


def build_parser(entry: str, method_names: Sequence[str]) -> argparse.ArgumentParser:
    """The argparse parser of ``entry`` ("train" or "test"), built from :class:`Options`.

    Both entry points accept every option, so one command line serves train.py and test.py
    as in the reference's published commands; an option of the other entry point is
    accepted and ignored, and its help says so.
    """
    description = {"train": "Meta-train a few-shot method.",
                   "test": "Test a meta-trained few-shot method on 600-episode repeats."}[entry]
    parser = OneLineParser(description=description, formatter_class=HelpFormatter)
    for f in dataclasses.fields(Options):
        kwargs = dict(f.metadata["argparse"])
        if f.name == "method":
            kwargs["choices"] = tuple(method_names)
        if f.type in ("bool", bool):
            # A bare flag means True; "--flag False" means False (the reference got this wrong).
            kwargs.update(type=str2bool, nargs="?", const=True, metavar="BOOL")
        elif "type" not in kwargs:
            kwargs["type"] = _scalar_type(f)
        kwargs["default"] = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata["help"]
        scope = f.metadata["scope"]
        if scope == "eval" and entry == "train":
            help_text += " (here: for the final test)"
        elif scope not in ("run", "model", "eval", "inference", entry):
            help_text += f" ({scope}.py only; ignored here)"
        parser.add_argument(f"--{f.name}", help=help_text, **kwargs)
    return parser


def _scalar_type(f: dataclasses.Field):
    name = str(f.type).replace("Optional[", "").rstrip("]")
    return {"int": int, "float": float, "str": str}.get(name, str)


def explicit_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Names of the options the user actually wrote on the command line."""
    probe = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            probe.add_argument(*action.option_strings, dest=action.dest, nargs=action.nargs,
                               const=action.const, type=action.type)
    given, _ = probe.parse_known_args(argv)
    return set(vars(given))


def parse(entry: str, method_names: Sequence[str], argv: Optional[Sequence[str]] = None
          ) -> tuple[Options, set[str]]:
    """Parse ``argv`` for ``entry``; return the options and the names given explicitly."""
    import sys
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(entry, method_names)
    namespace = parser.parse_args(argv)
    # What to run comes from the command line, or from the file test.py --checkpoint names.
    missing = [f"--{name}" for name in WHAT_TO_RUN if getattr(namespace, name) is None]
    if missing and not (entry == "test" and namespace.checkpoint):
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    opts = Options(**vars(namespace))
    return opts, explicit_options(parser, argv)


WHAT_TO_RUN = ("dataset", "method")


def note_ignored(opts: Options, given: set[str], ignored: set[str], say=print) -> None:
    """One note naming the model options given that the method does not read."""
    names = sorted(n for n in given & ignored
                   if n in {f.name for f in option_fields(("model",))})
    if names:
        say(f"note: {opts.method} does not use {', '.join('--' + n for n in names)}: ignored")


def note_other_entry(entry: str, given: set[str], say=print) -> None:
    """One note naming the options given to ``entry`` that only the other entry point reads:
    a note, not an error, since the published commands give test.py train.py's options."""
    other = "test" if entry == "train" else "train"
    names = sorted(given & {f.name for f in option_fields((other,))})
    if names:
        say(f"note: {entry}.py does not use {', '.join('--' + n for n in names)} "
            f"({other}.py only): ignored")


def resolve(opts: Options, entry: str, benchmark: Benchmark | None = None) -> Options:
    """Fill the dataset- and method-dependent defaults and check the combination, for the
    benchmark of ``--dataset`` (looked up here unless the caller has it).

    Only options left at ``None`` / ``-1`` are filled, each with the reference's value.
    """
    benchmark = find(opts.dataset) if benchmark is None else benchmark
    # The reference's MAML-family overrides on the character benchmarks (n_task 32, one
    # inner step of 0.1); its defaults elsewhere.
    character = not benchmark.colour
    if opts.n_task is None:
        opts.n_task = 32 if character else 4
    if opts.task_update_num is None:
        opts.task_update_num = 1 if character else 5
    if opts.train_lr is None:
        opts.train_lr = 0.1 if character else 0.01
    if opts.n_episode is None:
        opts.n_episode = 100 if entry == "train" else 600
    if entry == "train" and opts.stop_epoch == -1:
        opts.stop_epoch = 600 if opts.n_shot == 1 else 400
    _check(opts, entry, benchmark)
    return opts


def adaptation_steps(opts: Options) -> int:
    """The test-time steps of ``--adaptation``: ``--hn_val_epochs``, 100 for -1 (reference)."""
    steps = 100 if opts.hn_val_epochs == -1 else opts.hn_val_epochs
    if steps <= 0:
        raise UserError(f"--adaptation takes its steps from --hn_val_epochs, which is "
                        f"{opts.hn_val_epochs}: give --hn_val_epochs N (N > 0, or -1 for 100)")
    return steps


# The largest value of each option that sizes an allocation or a loop: far above any
# published experiment, low enough that a typo or an altered file is refused in one line
# instead of hanging for hours or asking for hundreds of GB.
LIMITS = {"n_shot": 1000, "train_n_way": 1000, "test_n_way": 1000, "n_episode": 1_000_000,
          "n_task": 10_000, "task_update_num": 1000, "hm_weight_set_num_train": 1000,
          "hm_weight_set_num_test": 1000, "hn_hidden_size": 16_384, "hn_head_len": 64,
          "hn_val_epochs": 100_000, "repeat": 1000, "stop_epoch": 10_000_000,
          "seed": 2**63 - 1}


def _check_limits(values: dict, named) -> None:
    """Each value of ``values`` that :data:`LIMITS` bounds, and every float, checked;
    ``named(option)`` says where it came from, for the message."""
    for name, value in values.items():
        if name in LIMITS and isinstance(value, int) and not 0 <= value <= LIMITS[name]:
            if value < 0 and name == "seed":
                raise UserError(f"{named(name)} must be >= 0, got {value}")
            if value > LIMITS[name]:
                why = ("torch's generators take a 64-bit seed" if name == "seed" else
                       "it sizes a loop or an allocation")
                raise UserError(f"{named(name)} is {value:,}, more than the {LIMITS[name]:,} "
                                f"allowed ({why})")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{named(name)} is {value}: it must be a finite number")


def check_saved(saved: dict, source: str, methods: Sequence[str]) -> None:
    """A configuration read from a checkpoint or model file checked as the command line is
    before any of it sizes anything: its known options have their type, one of their choices
    and a value within :data:`LIMITS`; the method one of ``methods``. A file
    that fails was not written by this toolkit, or was altered: one line."""
    where = f"the configuration in {source}"
    fields = {f.name: f for f in dataclasses.fields(Options)}
    for name, value in saved.items():
        if name not in fields:
            continue  # an option of another version: not read
        kind = str(fields[name].type).replace("Optional[", "").rstrip("]")
        optional = str(fields[name].type).startswith("Optional[")
        if value is None and (optional or fields[name].default is None):
            continue
        fits = {"int": isinstance(value, int) and not isinstance(value, bool),
                "float": isinstance(value, (int, float)) and not isinstance(value, bool),
                "bool": isinstance(value, bool), "str": isinstance(value, str),
                "list": isinstance(value, list) and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value)}.get(kind, True)
        if not fits:
            raise UserError(f"{where} gives {name} {value!r:.60}, not a value of type {kind}")
        choices = fields[name].metadata["argparse"].get("choices")
        if choices and value not in choices:
            raise UserError(f"{where} gives {name} {value!r:.60}, not one of {', '.join(choices)}")
    if saved.get("method") not in methods:
        raise UserError(f"{where} names the method {saved.get('method')!r:.60}, which this "
                        f"toolkit does not have ({', '.join(methods)})")
    for name in ("n_shot", "train_n_way", "test_n_way", "n_task"):
        if isinstance(saved.get(name), int) and saved[name] < 1:
            raise UserError(f"{where} gives {name} {saved[name]}: it must be positive")
    _check_limits(saved, lambda name: f"{name} in {where}")


def _check(opts: Options, entry: str, benchmark: Benchmark) -> None:
    _check_limits(opts.to_dict(), lambda name: f"--{name}")
    positive = {"n_shot": opts.n_shot, "train_n_way": opts.train_n_way,
                "test_n_way": opts.test_n_way, "n_episode": opts.n_episode,
                "n_task": opts.n_task}
    if entry == "train":
        positive.update(stop_epoch=opts.stop_epoch, save_freq=opts.save_freq,
                        eval_freq=opts.eval_freq, lr=opts.lr)
    positive.update(repeat=opts.repeat)
    for name, value in positive.items():
        if value <= 0:
            raise UserError(f"--{name} must be positive, got {value}")
    if opts.task_update_num < 0:
        raise UserError(f"--task_update_num must be >= 0, got {opts.task_update_num}")
    if opts.train_lr < 0:
        raise UserError(f"--train_lr must be >= 0, got {opts.train_lr}")
    if entry == "train" and opts.start_epoch < 0:
        raise UserError(f"--start_epoch must be >= 0, got {opts.start_epoch}")
    if entry == "train" and opts.start_epoch >= opts.stop_epoch * opts.n_task:
        raise UserError(f"--start_epoch {opts.start_epoch} is not before the run's last epoch "
                        f"({opts.stop_epoch * opts.n_task - 1}: --stop_epoch {opts.stop_epoch} "
                        f"x n_task {opts.n_task}): it would train nothing")
    if opts.train_aug and not benchmark.augmentable:
        raise UserError(f"--train_aug: {opts.dataset} is trained without augmentation (the "
                        "reference asserts it for omniglot and cross_char)")
    if benchmark.colour and opts.model == "Conv4S":
        raise UserError(f"--model Conv4S reads one channel; {opts.dataset} is in colour: use "
                        "Conv4, Conv4Pool or Conv6")
    if entry == "train" and opts.warmup:
        raise UserError("--warmup starts from a checkpoint of the reference's baseline "
                        "method, which this toolkit does not have (the reference's authors "
                        "never used it)")
    if entry == "train" and opts.final_test < 0:
        raise UserError(f"--final_test must be >= 0 (0 skips it), got {opts.final_test}")
    if entry == "train" and opts.hm_load_feature_net and not opts.resume:
        if not opts.hm_feature_net_path:
            raise UserError("--hm_load_feature_net needs --hm_feature_net_path FILE")
        if not Path(opts.hm_feature_net_path).is_file():
            raise UserError(f"--hm_feature_net_path {opts.hm_feature_net_path}: no such file")
    if entry == "train" and opts.n_episode < opts.n_task:
        raise UserError(f"--n_episode {opts.n_episode} is smaller than n_task {opts.n_task}: "
                        "an epoch would hold no meta-update")


def adopt_saved(opts: Options, saved: dict, given: set[str], source: str,
                former_names: dict | None = None, ignored: set[str] = frozenset()) -> Options:
    """Take the ``model``-scope options from a saved run, refusing conflicting explicit ones,
    and the ``inference``-scope ones that were not given (a given one overrides the run's).

    ``source`` names the checkpoint in the error message; ``former_names`` holds the values
    an older checkpoint format gave options that it now reads under another value;
    ``ignored`` names options the run's method does not read (never compared).
    """
    former_names = former_names or {}
    for f in option_fields(("model",)):
        if f.name not in saved:
            continue
        mine, theirs = getattr(opts, f.name), saved[f.name]
        if (f.name in given and f.name not in ignored and mine != theirs
                and mine != former_names.get(f.name)):
            raise UserError(f"--{f.name} {mine} does not match {theirs} of the run in {source}")
        setattr(opts, f.name, theirs)
    for f in option_fields(("inference",)):
        if f.name in saved and f.name not in given:
            setattr(opts, f.name, saved[f.name])
    return opts
