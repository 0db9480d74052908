#!/usr/bin/env bash
# The published MAML experiments of the reference code (CloserLookFewShot protocol, Conv4,
# 5-way), plus a smoke run. Usage: bash commands.sh EXPERIMENT [extra options...]
# e.g. `bash commands.sh smoke`, `bash commands.sh maml_cross_char_1shot --device cuda`.
# Extra options go to both train.py and test.py, so give only shared ones (--data_dir,
# --device, --save_dir, --seed, --data_source).
# The full schedules are long: --stop_epoch 600 (1-shot) / 400 (5-shot) times n_task 32 are
# 19,200 / 12,800 epochs of 100 episodes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

experiment=${1:?usage: bash commands.sh smoke|maml_cross_char_1shot|maml_cross_char_5shot|maml_omniglot_1shot|maml_omniglot_5shot|maml_approx_cross_char_1shot [options]}
shift

train_and_test() {
  python train.py "$@"
  python test.py "$@"
}

case "$experiment" in
  # About a minute on a laptop CPU: checks that data, training, checkpoints and test work.
  smoke)
    smoke=(--dataset cross_char --method maml --n_shot 1 --n_task 4 --checkpoint_suffix smoke)
    python train.py "${smoke[@]}" --n_episode 40 --stop_epoch 3 --eval_freq 3 "$@"
    python test.py "${smoke[@]}" --n_episode 100 --repeat 1 "$@" ;;
  # Omniglot -> EMNIST (cross_char): reference defaults, n_task 32, 1 inner step of lr 0.1.
  maml_cross_char_1shot)
    train_and_test --dataset cross_char --model Conv4 --method maml --n_shot 1 "$@" ;;
  maml_cross_char_5shot)
    train_and_test --dataset cross_char --model Conv4 --method maml --n_shot 5 "$@" ;;
  maml_approx_cross_char_1shot)
    train_and_test --dataset cross_char --model Conv4 --method maml_approx --n_shot 1 "$@" ;;
  # Omniglot (Vinyals splits with rotations).
  maml_omniglot_1shot)
    train_and_test --dataset omniglot --model Conv4 --method maml --n_shot 1 "$@" ;;
  maml_omniglot_5shot)
    train_and_test --dataset omniglot --model Conv4 --method maml --n_shot 5 "$@" ;;
  *)
    echo "unknown experiment: $experiment" >&2
    exit 2 ;;
esac
