#!/usr/bin/env bash
# The CPU backend beside transformers + PEFT on PyTorch's CPU build (fp32 base, the CPU backend's
# precision), the same step at the two shapes of issue #18, the same thread count, runs
# alternating: bench_train then peer_peft.py, ROUNDS times per shape. Prints each run's tokens/s
# and the medians' ratio. Needs build/ and the test environment (.venv, scripts/python_env.sh).
#   bench/cpu_vs_peer.sh [ROUNDS (3)] [THREADS (nproc)]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
export OMP_NUM_THREADS=${2:-$(nproc)}
python=.venv/bin/python3
out=$(mktemp -d)
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
for shape in "small 4 256" "medium 1 512"; do
  read -r preset batch seq <<<"$shape"
  for round in $(seq "$rounds"); do
    build/bench/bench_train --backend cpu --preset "$preset" --batch "$batch" --seq "$seq" --steps 3 --warmup 1 \
      --json "$out/ours-$preset.json" >/dev/null
    "$python" bench/peer_peft.py --shape-json "$out/ours-$preset.json" --batch "$batch" --seq "$seq" --device cpu \
      --dtype float32 --steps 3 --warmup 1 --json "$out/peer-$preset.json" >/dev/null 2>&1
  done
  ours=$(grep -o '"tokens_per_s": [0-9.]*' "$out/ours-$preset.json" | awk '{print $2}')
  peer=$(grep -o '"tokens_per_s": [0-9.]*' "$out/peer-$preset.json" | awk '{print $2}')
  ours_median=$(echo "$ours" | median) peer_median=$(echo "$peer" | median)
  echo "$preset B=$batch T=$seq, $OMP_NUM_THREADS threads: lora-train $(echo $ours | tr '\n' ' ')tok/s (median $ours_median)," \
       "transformers+PEFT $(echo $peer | tr '\n' ' ')tok/s (median $peer_median), ratio $(awk -v a="$ours_median" -v b="$peer_median" 'BEGIN {printf "%.2f", a / b}')"
done
rm -rf "$out"
