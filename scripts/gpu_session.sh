#!/usr/bin/env bash
# Runs on a lent GPU machine, from the repository root, with the kit built by
# scripts/gpu_kit.sh carried (.gpu; .whl too for bench-qlora's peer):
#   scripts/gpu_session.sh tests|bench-lm|bench-qlora|bench-offload|all
# Logs, results.jsonl and results.md go to $OUT (./gpu-out without it): at most
# 8 files over all stages, as many as a device call brings back.
# Each stage ends within about 8 minutes (every program has a timeout and a
# benchmark stage a budget of 470 s, after which its remaining programs are
# skipped), so one stage fits one device call of 10 minutes; `all` is for a
# machine without that limit. docs/CUDA_NOTES.md lists the calls in order.
#   tests          nvidia-smi; the tests/gpu programs; lora-train demo on cuda   (~3 min)
#   bench-lm       bench_train vs transformers + PEFT, bf16, checkpointing off/on,
#                  micro-batch BATCHES (default "1"; run again with BATCHES=4)  (~6 min each)
#   bench-qlora    NF4 vs PEFT + bitsandbytes (installed from .whl), B=1        (~4 min)
#   bench-offload  bench_train with and without --offload cpu, micro-batch
#                  BATCHES (default "1")                                        (~2 min)
set -uo pipefail
cd "$(dirname "$0")/.."

stage=${1:-}
OUT=${OUT:-$PWD/gpu-out}
KIT=$PWD/.gpu
mkdir -p "$OUT"
case "$stage" in tests | bench-lm | bench-qlora | bench-offload | all) ;;
*) echo "usage: scripts/gpu_session.sh tests|bench-lm|bench-qlora|bench-offload|all" >&2; exit 2 ;;
esac
[ -x "$KIT/bin/lora-train" ] || { echo "gpu_session: no $KIT/bin: run scripts/gpu_kit.sh and carry .gpu" >&2; exit 2; }

# The folders holding the CUDA libraries the kit was linked against: the
# toolkit's, or PyTorch's nvidia-* wheels (NCCL is only there).
cuda_library_path() {
    python3 - <<'EOF'
import glob, os, site, sys
roots = ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/local/cuda/lib"]
roots += glob.glob("/usr/local/cuda-*/lib64")
for packages in site.getsitepackages() + glob.glob("/opt/*/.venv/lib/python3*/site-packages"):
    roots += glob.glob(os.path.join(packages, "nvidia", "**", "lib"), recursive=True)
found = []
for name in ["libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13", "libnccl.so.2"]:
    where = next((r for r in roots if os.path.exists(os.path.join(r, name))), None)
    if where is None:
        sys.exit(f"gpu_session: {name} not found under {roots}")
    if where not in found:
        found.append(where)
print(":".join(found))
EOF
}
cuda_dirs=$(cuda_library_path) || exit 1
# Only our programs get the kit's libraries: python keeps the machine's own.
export LORA_TRAIN_LIBRARY_PATH="$KIT/lib:$cuda_dirs"
ours() { LD_LIBRARY_PATH="$LORA_TRAIN_LIBRARY_PATH" "$@"; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-16} PYTHONUNBUFFERED=1
summary="$OUT/summary.txt"

run_tests() {
    nvidia-smi 2>&1 | tee -a "$summary"
    echo "CUDA libraries from: $cuda_dirs" | tee -a "$summary"
    export LORA_TRAIN_BIN="$KIT/bin/lora-train" LORA_LAUNCH_BIN="$KIT/bin/lora-launch"  # test_gpu_train runs them
    for t in test_gpu_flash test_gpu_ops test_gpu_vision_ops test_gpu_nf4 test_gpu_model test_gpu_dist test_gpu_train; do
        start=$SECONDS
        echo "==== $t" >>"$OUT/tests.log"
        ours timeout 240 "$KIT/bin/$t" >"$OUT/$t.out" 2>&1
        rc=$?
        verdict=$([ $rc = 0 ] && echo passed || ([ $rc = 77 ] && echo SKIPPED || echo "FAILED (exit $rc)"))
        echo "$t: $verdict in $((SECONDS - start)) s" | tee -a "$summary"
        grep -E "FAILED|relative error|error [0-9]" "$OUT/$t.out" | head -n 20
        cat "$OUT/$t.out" >>"$OUT/tests.log" && rm "$OUT/$t.out"
    done
    # the whole trainer on the GPU: the embedded vision-language demo, 600 steps
    # (its data under runs/vlm-demo, ignored by git; --set applies to it)
    ours timeout 240 "$KIT/bin/lora-train" demo --set train.backend=cuda --set checkpoint.dir="$(mktemp -d)" \
        >"$OUT/demo.log" 2>&1
    echo "lora-train demo on cuda: exit $? | $(grep -iE '^done:|accuracy' "$OUT/demo.log" | tr '\n' ' ')" |
        tee -a "$summary"
}

# BENCH_ARGS: more gpu_compare.py options, e.g. "--backend cpu --preset tiny --seq 64" for a dry run here.
compare() {
    # shellcheck disable=SC2086
    python3 bench/gpu_compare.py --bin "$KIT/bin" --out "$OUT" --timeout 200 --budget 470 "$@" ${BENCH_ARGS:-}
}

install_wheels() {
    [ -d .whl ] || { echo "gpu_session: no .whl carried: the peer runs without bitsandbytes" | tee -a "$summary"; return; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
}

case "$stage" in
tests) run_tests ;;
bench-lm) compare --stage lm --batches "${BATCHES:-1}" ;;
bench-qlora) install_wheels && compare --stage qlora --batches "${BATCHES:-1}" ;;
bench-offload) compare --stage offload --batches "${BATCHES:-1}" ;;
all)
    run_tests
    compare --stage lm --batches 1,4 --budget 0
    install_wheels && compare --stage qlora --batches 1 --budget 0
    compare --stage offload --batches 1,4 --budget 0
    ;;
esac
echo "gpu_session $stage: done; results in $OUT" | tee -a "$summary"
