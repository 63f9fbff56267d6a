#!/usr/bin/env bash
# The README's second command: install, build, and run the whole test suite;
# then the GPU tests (tests/gpu) again on the emulated CUDA backend
# (tools/cuda_emu, build-emu/), which runs them without a GPU. The tests that
# compare with PyTorch / PEFT / transformers run in .venv (scripts/python_env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/python_env.sh

# cmocka prints each case skipped for a missing fixture or device (once when it
# skips, once in its summary); list each once, with its test program and reason.
list_skipped() {
  local skipped
  skipped=$(awk '
    /^[0-9]+\/[0-9]+ Test: / { program = $3 }
    /^\[  SKIPPED \] test_/ && !seen[program " " $4]++ {
      reason = previous ~ /^\[|^-+$/ ? "" : " (" previous ")"
      print program ": " $4 reason
    }
    /^SKIPPED: / && !seen[program]++ { print program ": the whole program (" substr($0, 10) ")" }
    { previous = $0 }' "$1/Testing/Temporary/LastTest.log" 2>/dev/null || true)
  if [ -n "$skipped" ]; then
    echo "Skipped cases in $1 (test program: case (reason)):"
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
