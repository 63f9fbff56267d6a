#!/usr/bin/env bash
# The test suite built with AddressSanitizer + UndefinedBehaviorSanitizer
# (CUDA off) in build-sanitize/: any leak, out-of-bounds access or undefined
# behaviour fails its test (leaks in scripts/lsan.supp's third-party libraries
# excepted). Extra arguments go to ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python_env.sh  # the tests that read their output back with Python's packages
cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=Release -DLORA_TRAIN_SANITIZE=ON -DLORA_TRAIN_CUDA=OFF >/dev/null
cmake --build build-sanitize -j"$(nproc)"
suppressions="$PWD/scripts/lsan.supp" # third-party leaks (fontconfig through cairo)
cd build-sanitize
ASAN_OPTIONS=detect_leaks=1 LSAN_OPTIONS="suppressions=$suppressions:print_suppressions=0" \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ctest --output-on-failure -j"$(nproc)" "$@"
