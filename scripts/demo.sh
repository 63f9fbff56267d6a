#!/usr/bin/env bash
# The README's first command: install, build, and train the embedded
# vision-language demo (configs/demo.yaml stays the text recipe).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec build/lora-train demo
