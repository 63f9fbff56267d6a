#!/usr/bin/env bash
# The README's second command: install, build, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cd build
status=0
ctest --output-on-failure -j"$(nproc)" "$@" || status=$?
# cmocka prints each case skipped for a missing fixture or device; list them all.
skipped=$(grep -h -B1 -E '^\[  SKIPPED \] test_|^SKIPPED: ' Testing/Temporary/LastTest.log 2>/dev/null |
          grep -v -E '^-+$|^\[ RUN' || true)
if [ -n "$skipped" ]; then
  echo "Skipped cases (with their reasons):"
  echo "$skipped" | sed 's/^/  /'
fi
exit $status
