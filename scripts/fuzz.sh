#!/usr/bin/env bash
# Builds the libFuzzer harnesses (clang, ASan + UBSan, CUDA off) into
# build-fuzz/ and runs each one on its seed corpus in fuzz/corpus/<target>/,
# for SECONDS (default 20), or with --runs N for exactly N inputs from a fixed
# seed: a reproducible pass (CI uses it, so what passes here passes there).
# New inputs go to a scratch copy, so the committed corpus only changes by hand.
# Usage: scripts/fuzz.sh [SECONDS | --runs N] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--runs" ]; then
  budget=(-runs="$2" -seed=1)
  shift 2
else
  budget=(-max_total_time="${1:-20}")
  shift || true
fi
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(safetensors tokenizer config llava image archive tfrecord)

CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Release -DLORA_TRAIN_FUZZ=ON >/dev/null
cmake --build build-fuzz --target fuzzers -j"$(nproc)"

status=0
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  echo "fuzz_$target: ${budget[*]}"
  mkdir -p "$scratch/$target"
  cp fuzz/corpus/"$target"/* "$scratch/$target/"
  # A crash, leak or UB report stops the run: its input is written to build-fuzz/crash-<sha1>.
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    build-fuzz/fuzz/fuzz_"$target" "${budget[@]}" -rss_limit_mb=2048 -timeout=10 \
    -artifact_prefix=build-fuzz/ -print_final_stats=0 "$scratch/$target" >"$scratch/$target.log" 2>&1 || { status=1; tail -n 60 "$scratch/$target.log"; }
  tail -n 1 "$scratch/$target.log"
done
exit $status
