#!/usr/bin/env bash
# The README's first command: install, build, and train the embedded demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec build/lora-train --config configs/demo.yaml "$@"
