#!/usr/bin/env bash
# The published experiments of the reference code (CloserLookFewShot protocol, Conv4, 5-way):
# every published HyperMAML and BayesHMAML command word for word (cross_char, CUB,
# miniImagenet: ../shared/reference/published-commands*.txt), and what this toolkit adds of its
# own: MAML and MAML-approx with the reference's defaults (it published none), the cross_char
# commands on Omniglot's Vinyals splits, and smoke runs. Usage: bash commands.sh EXPERIMENT [extra options...]
# e.g. `bash commands.sh smoke`, `bash commands.sh maml_cross_char_1shot --device cuda`,
# `bash commands.sh bayes_hmaml_cross_char_5shot` (`python -m results.experiments --list`
# names the published ones).
# Extra options go to train.py (and to test.py in the smoke runs; each accepts the other's
# options, so one command line serves both, as in the reference).
# The full schedules are long: MAML's --stop_epoch 600 (1-shot) / 400 (5-shot) times n_task 32
# are 19,200 / 12,800 epochs of 100 episodes; HyperMAML's --stop_epoch 64 is 2,048 epochs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

usage() {
  cat >&2 <<'EOF'
usage: bash commands.sh EXPERIMENT [extra options for train.py and test.py]
experiments:
  smoke, smoke_hyper_maml, smoke_bayes_hmaml   short runs that check everything works
  METHOD_DATASET_1shot, METHOD_DATASET_5shot   the published experiments, with
      METHOD  maml, maml_approx, hyper_maml or bayes_hmaml
      DATASET cross_char (Omniglot -> EMNIST), omniglot (Vinyals splits), CUB or
              miniImagenet (HyperMAML and BayesHMAML only)
      (python -m results.experiments --list names them all)
  e.g. bash commands.sh hyper_maml_cross_char_1shot --device cuda
EOF
  exit 2
}
[[ $# -ge 1 ]] || usage
experiment=$1
shift

# BayesHMAML's published additions, for its smoke run.
bayes=(--kl_scale 1e-24 --kl_stop_val 0.001 --hm_weight_set_num_train 5
       --hm_weight_set_num_test 0)

# HyperMAML's published architecture with a short warm-up and switch, for the smoke runs.
smoke_hypernet=(--hn_head_len 3 --hn_hidden_size 512 --hm_enhance_embeddings True
                --hm_use_class_batch_input --hm_maml_warmup --hm_maml_warmup_epochs 2
                --hm_maml_warmup_switch_epochs 4)
user_options=("$@")

# train.py ends with test.py's test of the best model (5 x 600 novel episodes), as the
# reference's train.py does; rerun it with `python test.py` and the same options.
train_and_test() {
  python train.py "$@"
}

# 12 short epochs of 40 tasks on cross_char, then 100 test episodes with a reliability diagram.
smoke() {
  local common=(--dataset cross_char --n_shot 1 --n_task 4 --checkpoint_suffix smoke "$@")
  python train.py "${common[@]}" --n_episode 40 --stop_epoch 3 --eval_freq 3 --final_test 0 \
    ${user_options[@]+"${user_options[@]}"}
  python test.py "${common[@]}" --n_episode 100 --repeat 1 --plot \
    ${user_options[@]+"${user_options[@]}"}
}

case "$experiment" in
  # About a minute each on a laptop CPU: data, training, checkpoints and test all work.
  smoke)
    smoke --method maml ;;
  smoke_hyper_maml)
    smoke --method hyper_maml "${smoke_hypernet[@]}" ;;
  smoke_bayes_hmaml)
    smoke --method bayes_hmaml "${smoke_hypernet[@]}" "${bayes[@]}" ;;
  # The published experiments, named METHOD_DATASET_{1,5}shot, defined once in
  # results/experiments.py (PUBLISHED): the reference's commands word for word where it
  # published them (HyperMAML and BayesHMAML on cross_char, CUB and miniImagenet), MAML with the
  # reference's defaults (n_task 32, one inner step of 0.1 on the characters), and on omniglot
  # the cross_char command on Vinyals' splits. `python -m results.experiments --list` names them.
  *_cross_char_[15]shot | *_omniglot_[15]shot | *_CUB_[15]shot | *_miniImagenet_[15]shot)
    published=$(python -m results.experiments "$experiment") || exit 2
    mapfile -t options <<< "$published"
    train_and_test "${options[@]}" "$@" ;;
  *)
    echo "unknown experiment: $experiment" >&2
    usage ;;
esac
