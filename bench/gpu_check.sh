#!/usr/bin/env bash
# One prepared check of the GPU path, for a CUDA machine (meant to finish in under 9 minutes
# on one H100/H200):
#   bash bench/gpu_check.sh [OUT_DIR] [--quick]
# 1. the device-sensitive tests on CUDA (FSL_TEST_DEVICE=cuda): engine equality, meta-gradients
#    against finite differences, exact resume, the device-side episode store, precision;
# 2. bench/throughput.py --device cuda --engine loop,batched --precision fp32,tf32,bf16,
#    1 and 5 shots, every method and phase;
# 3. a 64-epoch slice of the published HyperMAML cross_char 1-shot command (validation every
#    epoch) with the batched engine, its warm-up and switch shortened to 8 + 16 epochs so that
#    the slice has epochs of all three phases; the full 2,048 epochs (50 warm-up, 500 switch,
#    1,498 hypernetwork) are extrapolated from each phase's median epoch time;
# and writes each step's JSON and log, and summary.txt, into OUT_DIR (default $OUT, else
# ./gpu_check). Without a CUDA GPU, or with --quick, each step runs in a tiny version on the
# CPU (the smoke test CI runs). Data: filelists/ if prepared, else the raw files from
# $FSL_DATA_SOURCE (default ../shared/data), which the tests read too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out="" quick=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -*) echo "usage: bash bench/gpu_check.sh [OUT_DIR] [--quick]" >&2; exit 2 ;;
    *) out=$arg ;;
  esac
done
out=${out:-${OUT:-gpu_check}}
mkdir -p "$out"
export FSL_DATA_SOURCE=${FSL_DATA_SOURCE:-$(cd .. && pwd)/shared/data}
export PYTHONUNBUFFERED=1

device=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
[[ "$device" == cpu ]] && quick=1
python - "$out/environment.json" "$quick" <<'EOF'
import json, platform, sys, torch
info = {"torch": torch.__version__, "python": platform.python_version(),
        "cuda": torch.version.cuda, "quick": sys.argv[2] == "1",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu": platform.processor() or platform.machine()}
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(f"gpu_check: {info}")
EOF

started=$(date +%s)
step() { echo "gpu_check: $1 ($(( $(date +%s) - started )) s so far)"; }

step "1/3 device-sensitive tests on $device"
tests=(tests/test_maml.py tests/test_hypermaml.py tests/test_episodes.py tests/test_precision.py
       tests/test_entrypoints.py)
filter="batched or finite or gradient or resume or episode or bf16 or precision or equal"
# Quick: a few fast ones of each kind, none that needs the prepared datasets (preparing them
# took half of this step's time on a CPU).
[[ $quick == 1 ]] && filter="batched_engine_equals_the_loop and 1 and 0 or finite_differences or tf32"
set +e
FSL_TEST_DEVICE=$device python -m pytest -q -p no:cacheprovider "${tests[@]}" -k "$filter" \
  --junitxml "$out/tests.xml" > "$out/tests.log" 2>&1
tests_status=$?
set -e
tail -1 "$out/tests.log"

step "2/3 throughput, engines and precisions side by side"
if [[ $quick == 1 ]]; then
  bench=(--method maml --n_shot 1 --updates 1 --eval_episodes 1 --engine loop,batched
         --precision fp32,bf16 --n_task 1 --epoch_episodes 2)
else
  bench=(--engine loop,batched --precision fp32,tf32,bf16)
fi
python -m bench.throughput --device "$device" "${bench[@]}" --json "$out/throughput.json" \
  > "$out/throughput.log" 2>&1
cat "$out/throughput.log"

step "3/3 a slice of the published HyperMAML schedule, batched engine"
# 2 x n_task 32 = 64 epochs of 100 episodes, each validated: 8 warm-up, 16 switch, 40 hypernet
slice=(--stop_epoch 2 --hm_maml_warmup_epochs 8 --hm_maml_warmup_switch_epochs 16)
[[ $quick == 1 ]] && slice=(--stop_epoch 1 --n_task 3 --n_episode 4 --hm_maml_warmup_epochs 1
                            --hm_maml_warmup_switch_epochs 1)
save=$(mktemp -d)
slice_start=$(python -c "import time; print(time.time())")
python train.py --method hyper_maml --model Conv4 --dataset cross_char --num_classes 4112 \
  --n_shot 1 --test_n_way 5 --train_n_way 5 --stop_epoch 64 --lr_scheduler multisteplr \
  --lr 1e-2 --hm_maml_warmup --hm_maml_warmup_epochs 50 --hm_maml_warmup_switch_epochs 500 \
  --milestones 51 550 --hn_head_len 3 --hn_hidden_size 512 --hm_enhance_embeddings True \
  --hm_use_class_batch_input "${slice[@]}" --engine batched --device "$device" \
  --final_test 0 --save_dir "$save" > "$out/slice.log" 2>&1
python - "$out" "$save" "$slice_start" "$tests_status" <<'EOF'
import json, sys, time
from pathlib import Path
out, save, start, tests_status = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
wall = time.time() - start
metrics = [json.loads(line) for line in
           next(save.glob("checkpoints/*/*/metrics.jsonl")).read_text().splitlines()]
# The published schedule's epochs per phase: 50 warm-up, 500 switch, the rest hypernetwork.
published = {"maml-warmup": 50, "switch": 500, "hypernet": 2048 - 550}
median_s = {}
for phase in published:
    seconds = sorted(m["seconds"] for m in metrics if m["phase"] == phase)
    median_s[phase] = seconds[len(seconds) // 2]
full_s = sum(published[phase] * median_s[phase] for phase in published)
slice_info = {"epochs": len(metrics), "wall_s": round(wall, 1), "median_epoch_s": median_s,
              "extrapolated_2048_epochs_min": round(full_s / 60, 1),
              "note": "median epoch seconds of each phase in the slice, weighted by the "
                      "published schedule's epochs of that phase (50 / 500 / 1498)"}
(out / "slice.json").write_text(json.dumps(slice_info, indent=2) + "\n")
env = json.loads((out / "environment.json").read_text())
lines = [f"device: {env['gpu'] or 'CPU ' + env['cpu']} (torch {env['torch']}, quick {env['quick']})",
         f"tests: {(out / 'tests.log').read_text().strip().splitlines()[-1]} (exit {tests_status})"]
for row in json.loads((out / "throughput.json").read_text()):
    variants = "; ".join(f"{k} {row['train_tasks_per_s_by_variant'][k]:.1f}/"
                         f"{row['test_tasks_per_s_by_variant'][k]:.1f}"
                         for k in row["train_tasks_per_s_by_variant"])
    lines.append(f"throughput {row['method']} {row['phase']} {row['n_shot']}-shot, train/test "
                 f"tasks/s: {variants}")
per_phase = ", ".join(f"{phase} {seconds:.2f}" for phase, seconds in median_s.items())
lines.append(f"published HyperMAML slice: {slice_info['epochs']} epochs, median s/epoch "
             f"{per_phase} -> 2,048 epochs in about "
             f"{slice_info['extrapolated_2048_epochs_min']} min")
(out / "summary.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
rm -rf "$save"
step "done, results in $out"
exit "$tests_status"
