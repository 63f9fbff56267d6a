#!/usr/bin/env bash
# Sourced by scripts/test.sh: makes (once) the virtual environment the
# interoperability tests run their Python in (.venv/, packages from PyPI as
# scripts/requirements-test.txt lists them) and puts it first on PATH, so the
# tests' `python3` is the one with torch, transformers, PEFT and safetensors.
# A test that finds a package missing skips; under CI (CI=true) a failed
# install is an error, so those tests never silently skip there.
venv_dir="$PWD/.venv"
requirements="$PWD/scripts/requirements-test.txt"
stamp="$venv_dir/.requirements"

python_env_ready() {
  [ -x "$venv_dir/bin/python3" ] && cmp -s "$requirements" "$stamp"
}

if ! python_env_ready; then
  echo "making the Python test environment in $venv_dir (torch, transformers, peft; a few minutes the first time)"
  if { [ -x "$venv_dir/bin/python3" ] || python3 -m venv "$venv_dir"; } &&
     "$venv_dir/bin/python3" -m pip install -q -r "$requirements"; then
    cp "$requirements" "$stamp"
  elif [ "${CI:-}" = "true" ]; then
    echo "error: could not install the Python test environment (scripts/requirements-test.txt) into $venv_dir" >&2
    exit 1
  else
    echo "warning: no Python test environment; the tests that compare with PyTorch / PEFT will skip" >&2
  fi
fi
[ -x "$venv_dir/bin/python3" ] && export PATH="$venv_dir/bin:$PATH"
