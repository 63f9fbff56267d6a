#!/usr/bin/env bash
# Builds the libFuzzer harnesses (clang, ASan + UBSan, CUDA off) into
# build-fuzz/ and runs each one for SECONDS (default 20) on its seed corpus
# in fuzz/corpus/<target>/. New inputs go to a scratch copy, so the committed
# corpus only changes by hand. Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(safetensors tokenizer config llava image archive)

CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Release -DLORA_TRAIN_FUZZ=ON >/dev/null
cmake --build build-fuzz --target fuzzers -j"$(nproc)"

status=0
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  echo "fuzz_$target: ${seconds}s"
  mkdir -p "$scratch/$target"
  cp fuzz/corpus/"$target"/* "$scratch/$target/"
  # A crash, leak or UB report stops the run: its input is written to build-fuzz/crash-<sha1>.
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    build-fuzz/fuzz/fuzz_"$target" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    -artifact_prefix=build-fuzz/ -print_final_stats=0 "$scratch/$target" >"$scratch/$target.log" 2>&1 || { status=1; tail -n 60 "$scratch/$target.log"; }
  tail -n 1 "$scratch/$target.log"
done
exit $status
