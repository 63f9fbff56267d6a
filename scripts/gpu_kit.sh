#!/usr/bin/env bash
# Builds, on this (GPU-less) machine, everything a lent GPU machine needs to
# verify and benchmark lora-train in a few device calls; that machine has the
# CUDA driver, cuBLAS, NCCL and PyTorch but none of our Debian libraries and
# no network. Writes two ignored folders, to be named in the device call's carry:
#   .gpu/bin  lora-train, lora-launch, the tests/gpu programs, bench_train and
#             bench_step: Release, CUDA for sm_90 only, stripped
#   .gpu/lib  the shared libraries they need that are not glibc, the C++ runtime
#             or CUDA's (which the GPU machine has: scripts/gpu_session.sh finds
#             them); libicudata cut down to the data lora-train reads
#   .whl/     bitsandbytes for bench/peer_peft.py --qlora, cut down to its CPU
#             and CUDA 13 libraries (torch there is cu130)
# and checks that the kit stays well under the 64 MiB a device call carries.
#   scripts/gpu_kit.sh [--no-wheel]
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=build-gpu
KIT=.gpu
BNB_VERSION=0.50.2
LIMIT_MIB=48  # of the 64 MiB a call carries: the working tree needs the rest
with_wheel=1
[ "${1:-}" = "--no-wheel" ] && with_wheel=0

# ---- build -----------------------------------------------------------------
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLORA_TRAIN_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
gpu_tests=$(ls tests/gpu/test_*.c | xargs -n1 basename | sed 's/\.c$//')
programs="lora-train lora-launch bench_train bench_step $gpu_tests"
# shellcheck disable=SC2086
cmake --build "$BUILD" -j2 --target $programs

rm -rf "$KIT"
mkdir -p "$KIT/bin" "$KIT/lib"
for program in $programs; do
    path=$(find "$BUILD" -type f -name "$program" -perm -u+x | head -n1)
    [ -n "$path" ] || { echo "gpu_kit: $program was not built" >&2; exit 1; }
    strip --strip-unneeded -o "$KIT/bin/$program" "$path"
done

# ---- shared libraries (by soname, dereferenced) ------------------------------
# Left to the GPU machine: glibc, the C++ runtime, and CUDA's own libraries.
provided='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libresolv|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libcublasLt|libnccl)\.'
for program in "$KIT"/bin/*; do ldd "$program"; done | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u |
    while read -r soname path; do
        if ! [[ $soname =~ $provided ]]; then cp -L "$path" "$KIT/lib/$soname"; fi
    done

# libicudata holds every locale, converter and break table (31 MB); lora-train
# uses ICU for Unicode normalization only. NFC/NFD and the character properties
# are compiled into libicuuc; NFKC/NFKD read nfkc*.nrm from the data library.
slim_icu_data() {
    local library work symbol version
    library=$(ls "$KIT"/lib/libicudata.so.* 2>/dev/null | head -n1) || true
    [ -n "$library" ] || return 0
    version=${library##*.so.}
    symbol=icudt${version}_dat
    work=$(mktemp -d)
    # the data blob: the symbol's bytes, located through its section
    read -r value size < <(readelf -Ws "$library" | awk -v s="$symbol" '$8 == s {print $2, $3; exit}')
    read -r address offset < <(readelf -WS "$library" | awk '$2 == ".rodata" {print $4, $5; exit}')
    dd if="$library" of="$work/icudt${version}l.dat" bs=4096 iflag=skip_bytes,count_bytes status=none \
        skip=$((0x$value - 0x$address + 0x$offset)) count=$((size))
    printf '%s\n' nfkc.nrm nfkc_cf.nrm uts46.nrm cnvalias.icu ulayout.icu uemoji.icu > "$work/items.txt"
    mkdir "$work/items" "$work/slim"
    icupkg -x "$work/items.txt" -d "$work/items" "$work/icudt${version}l.dat"
    # the package's name is its items' prefix ("icudt72l/nfkc.nrm"): keep it
    icupkg -a "$work/items.txt" -s "$work/items" new "$work/slim/icudt${version}l.dat"
    genccode -e "icudt${version}" -a gcc -d "$work" "$work/slim/icudt${version}l.dat"
    cc -shared -Wl,-soname,"libicudata.so.${version}" -o "$library" "$work/icudt${version}l_dat.S"
    rm -rf "$work"
}
slim_icu_data

# ---- bitsandbytes wheel ----------------------------------------------------
# pip download as the device README says; the CUDA libraries torch there
# cannot load (other CUDA versions, ROCm, XPU) are dropped from the wheel and
# from its RECORD.
if [ "$with_wheel" = 1 ]; then
    rm -rf .whl
    mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d .whl "bitsandbytes==$BNB_VERSION"
    python3 - .whl/bitsandbytes-*.whl <<'EOF'
import re, shutil, sys, zipfile
path = sys.argv[1]
keep = re.compile(r"libbitsandbytes_(cpu|cuda130|cuda132)\.so$")
dropped = lambda name: "libbitsandbytes_" in name and not keep.search(name)
with zipfile.ZipFile(path) as src, zipfile.ZipFile(path + ".slim", "w", zipfile.ZIP_DEFLATED) as dst:
    for item in src.infolist():
        if dropped(item.filename):
            continue
        data = src.read(item.filename)
        if item.filename.endswith(".dist-info/RECORD"):
            data = b"".join(l for l in data.splitlines(True) if not dropped(l.split(b",")[0].decode()))
        dst.writestr(item, data)
shutil.move(path + ".slim", path)
EOF
fi

# ---- size ------------------------------------------------------------------
kit_bytes=$(du -sb "$KIT" | cut -f1)
wheel_bytes=$( [ -d .whl ] && du -sb .whl | cut -f1 || echo 0)
tree_bytes=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -n1 | cut -f1)
total=$((kit_bytes + wheel_bytes))
printf 'gpu_kit: .gpu %.1f MiB (bin %.1f, lib %.1f), .whl %.1f MiB, tracked tree %.1f MiB\n' \
    "$(echo "$kit_bytes / 1048576" | bc -l)" "$(du -sb $KIT/bin | cut -f1 | awk '{print $1 / 1048576}')" \
    "$(du -sb $KIT/lib | cut -f1 | awk '{print $1 / 1048576}')" "$(echo "$wheel_bytes / 1048576" | bc -l)" \
    "$(echo "$tree_bytes / 1048576" | bc -l)"
ls -l "$KIT/lib" | awk 'NR > 1 {printf "  %-28s %8.1f KiB\n", $9, $5 / 1024}'
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "gpu_kit: .gpu + .whl is over ${LIMIT_MIB} MiB" >&2
    exit 1
fi
