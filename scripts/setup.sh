#!/usr/bin/env bash
# Installs the Debian packages lora-train builds against (when missing) and
# builds it into build/. CUDA is compiled when nvcc is found.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake pkg-config libomp-dev libyaml-dev libjson-c-dev libcmocka-dev
          libpng-dev libjpeg62-turbo-dev libarchive-dev libpcre2-dev libicu-dev
          libopenblas-openmp-dev # the CPU backend's GEMMs (OpenBLAS on the project's OpenMP threads)
          libcairo2-dev # loss.png and lora-train report's plots
          python3-venv # the Python test environment (scripts/python_env.sh)
          clang libclang-rt-dev) # clang + compiler-rt: the libFuzzer harnesses (scripts/fuzz.sh)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
