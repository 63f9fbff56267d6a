#!/usr/bin/env bash
# The README's second command: install, build, and run the whole test suite;
# then the GPU tests (tests/gpu) again on the emulated CUDA backend
# (tools/cuda_emu, build-emu/), which runs them without a GPU. The tests that
# compare with PyTorch / PEFT / transformers run in .venv (scripts/python_env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/python_env.sh

# cmocka prints each case skipped for a missing fixture or device; list them all.
list_skipped() {
  local skipped
  skipped=$(grep -h -B1 -E '^\[  SKIPPED \] test_|^SKIPPED: ' "$1/Testing/Temporary/LastTest.log" 2>/dev/null |
            grep -v -E '^-+$|^\[ RUN' || true)
  if [ -n "$skipped" ]; then
    echo "Skipped cases in $1 (with their reasons):"
    echo "$skipped" | sed 's/^/  /'
  fi
}

status=0
(cd build && ctest --output-on-failure -j"$(nproc)" "$@") || status=$?
list_skipped build

gpu_programs=$(ls tests/gpu/test_*.c | xargs -n1 basename | sed 's/\.c$//')
cmake -S . -B build-emu -DCMAKE_BUILD_TYPE=Release -DLORA_TRAIN_CUDA=EMU >/dev/null
cmake --build build-emu -j"$(nproc)" --target lora-train lora-launch $gpu_programs
echo "The GPU tests on the emulated CUDA backend (build-emu):"
(cd build-emu && ctest --output-on-failure -j"$(nproc)" -R '^test_gpu_' "$@") || status=$?
list_skipped build-emu
exit $status
