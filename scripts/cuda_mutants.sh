#!/usr/bin/env bash
# Mutation check of the CUDA sources on the emulated backend (tools/cuda_emu):
# every __syncthreads(), cudaStreamWaitEvent and stream / event / device
# synchronize in kernels/cuda and parallel/cuda/nccl.c is removed, one at a time
# (the call becomes `(void)0` or a cudaSuccess that does nothing), the GPU
# programs are rebuilt and run, fastest first, until one fails, under the
# forward schedule, then random:1 (CUDA_EMU_SCHEDULE). A mutant
# no test fails "survives": either a test is missing or the call is redundant.
# Works on a copy of the tracked files in a temporary folder; prints one
# line per mutant and the count. docs/CUDA_NOTES.md records the last result.
#   scripts/cuda_mutants.sh [--list]      (--list: the mutants, nothing built)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pattern='__syncthreads\(\)|cudaStreamWaitEvent\(|cudaStreamSynchronize\(|cudaEventSynchronize\(|cudaDeviceSynchronize\('
sources=(kernels/cuda/*.cu kernels/cuda/*.cuh parallel/cuda/nccl.c)

# "file:line:call" for every call in code (not in a // comment).
mutants() {
  (cd "$root" && for file in "${sources[@]}"; do
    { grep -nE "$pattern" "$file" || true; } | while IFS=: read -r line text; do
      code=${text%%//*}
      call=$(grep -oE "$pattern" <<<"$code" | head -1 || true)
      if [ -n "$call" ]; then echo "$file:$line:${call%(*}"; fi
    done
  done)
}

if [ "${1:-}" = "--list" ]; then
  mutants
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/repo"
(cd "$root" && git ls-files -z | xargs -0 tar cf -) | tar xf - -C "$work/repo"
[ -d "$root/../shared" ] && ln -s "$root/../shared" "$work/shared"
cd "$work/repo"
programs=(test_gpu_flash test_gpu_ops test_gpu_model test_gpu_dist test_gpu_vision_ops test_gpu_nf4 test_gpu_train)
build() { cmake --build build -j"$(nproc)" --target lora-train lora-launch "${programs[@]}" >/dev/null 2>&1; }
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLORA_TRAIN_CUDA=EMU >/dev/null
build
export LORA_TRAIN_BIN=$PWD/build/lora-train LORA_LAUNCH_BIN=$PWD/build/lora-launch OMP_NUM_THREADS=2

# The first program that fails, and under which schedule, or nothing.
first_failure() {
  for schedule in forward random:1; do
    for program in "${programs[@]}"; do
      if ! CUDA_EMU_SCHEDULE=$schedule timeout 600 "build/tests/gpu/$program" >"$work/$program.log" 2>&1; then
        echo "$program ($schedule)"
        return
      fi
    done
  done
}

caught=0 survived=0
while IFS=: read -r file line call; do
  cp "$file" "$work/original"
  if [ "$call" = "__syncthreads" ]; then
    sed -i "${line}s/__syncthreads()/(void)0/" "$file"
  else
    sed -i "${line}s/$call(/MUTANT_REMOVED(/" "$file"
    sed -i "1i #define MUTANT_REMOVED(...) cudaSuccess" "$file"
  fi
  if ! build; then
    result="does not build"
  else
    failed=$(first_failure)
    result=${failed:+caught by $failed}
  fi
  if [ -n "$result" ]; then
    caught=$((caught + 1))
  else
    survived=$((survived + 1))
    result="SURVIVED"
  fi
  printf '%-34s %-22s %s\n' "$file:$line" "$call" "$result"
  cp "$work/original" "$file"
done < <(mutants)
build
echo "$caught caught, $survived survived, of $((caught + survived)) mutants"
[ "$survived" -eq 0 ]
