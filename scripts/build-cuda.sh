#!/usr/bin/env bash
# Build the CUDA worker on any x86-64 Linux machine, with or without a GPU or a CUDA install.
#
#   scripts/build-cuda.sh              # both targets: sm_80 (Ampere) and sm_90 (Hopper)
#   scripts/build-cuda.sh 90           # one target; also copied to target/release/rbee-worker-cuda
#   scripts/build-cuda.sh --check 80   # cargo check only (what CI could afford), no binary
#   scripts/build-cuda.sh --prepare    # only fetch the toolchain and make the stub (e.g. to cache it)
#
# What it does:
#   1. Fetches the CUDA 13.0 toolchain and runtime from PyPI's NVIDIA wheels (nvcc, nvvm, crt,
#      cccl, cudart, cublas, curand, nvrtc; about 1.5 GB) into $RBEE_CUDA_DIR
#      (default ~/.cache/rbee-cuda13), once.
#   2. Links against a stub libcuda.so (only the driver's symbol names, taken from cudarc's
#      sources): the real libcuda.so.1 comes with the NVIDIA driver on the GPU node.
#   3. Runs `cargo build --release -p rbee-worker --features cuda` once per compute capability
#      (candle's quantized kernels are compiled to machine code for one architecture per build),
#      each in its own target dir (target/cuda-smNN) so the CPU build is untouched, and copies
#      the result to target/release/rbee-worker-cuda-smNN. The binary finds the CUDA runtime
#      libraries in ./cuda-lib beside itself (RUNPATH $ORIGIN/cuda-lib) or the system's.
#   4. Copies the runtime libraries the binary needs from the wheels to target/release/cuda-lib
#      (`rbee-tui nodes add` uploads them to a node that lacks them).
#
# Needs: python3 with pip, unzip, gcc, cargo; network access to PyPI for the first run.
# Time: about 10 minutes per compute capability on 2 cores.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
check=0
prepare=0
caps=()
for a in "$@"; do
  case $a in
    --check) check=1 ;;
    --prepare) prepare=1 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    [0-9][0-9]|[0-9][0-9][0-9]) caps+=("$a") ;;
    *) echo "build-cuda.sh: unknown argument '$a' (want --check or a compute capability such as 80 or 90)" >&2; exit 2 ;;
  esac
done
[ ${#caps[@]} -gt 0 ] || caps=(80 90)

dir=${RBEE_CUDA_DIR:-$HOME/.cache/rbee-cuda13}
cu=$dir/root/nvidia/cu13

fetch_toolkit() {
  if [ -x "$cu/nvvm/bin/cicc" ] && [ -e "$cu/lib/libcublas.so" ]; then return; fi
  echo "build-cuda.sh: fetching the CUDA 13.0 wheels from PyPI into $dir" >&2
  mkdir -p "$dir/wheels"
  python3 -m pip download --quiet --no-deps --dest "$dir/wheels" \
    "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" \
    "nvidia-cuda-cccl==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cublas==13.0.*" \
    "nvidia-cuda-nvrtc==13.0.*" "nvidia-curand==10.4.*"
  for w in "$dir"/wheels/*.whl; do unzip -qo "$w" -d "$dir/root"; done
  # The wheels ship only versioned names; the linker wants the plain ones.
  for l in cublas cublasLt cudart curand nvrtc; do
    v=$(cd "$cu/lib" && ls "lib$l.so."* | head -1)
    ln -sf "$v" "$cu/lib/lib$l.so"
  done
}

make_stub() {
  [ -e "$dir/stub/libcuda.so" ] && return
  mkdir -p "$dir/stub"
  (cd "$root" && cargo fetch --quiet)
  # One empty function per cu* driver entry point cudarc declares; the linker needs only names.
  python3 - "$dir/stub/stub.c" <<'PY'
import glob, os, re, sys
names = set()
for src in glob.glob(os.path.expanduser("~/.cargo/registry/src/*/cudarc-*/src/driver/sys/*.rs")):
    with open(src, errors="ignore") as f:
        names |= set(re.findall(r"\bfn (cu[A-Z][A-Za-z0-9_]*)\s*\(", f.read()))
if not names:
    sys.exit("no cudarc sources under ~/.cargo/registry: run cargo fetch")
with open(sys.argv[1], "w") as out:
    out.writelines(f"void {n}(void) {{}}\n" for n in sorted(names))
print(f"build-cuda.sh: stub libcuda with {len(names)} driver names", file=sys.stderr)
PY
  gcc -shared -o "$dir/stub/libcuda.so" -Wl,-soname,libcuda.so.1 "$dir/stub/stub.c"
}

fetch_toolkit
make_stub
[ $prepare = 1 ] && { echo "build-cuda.sh: toolchain ready in $dir" >&2; exit 0; }
export CUDA_ROOT=$cu CUDA_PATH=$cu PATH=$cu/bin:$PATH
mkdir -p "$root/target/release"
for cap in "${caps[@]}"; do
  export CUDA_COMPUTE_CAP=$cap
  export CARGO_TARGET_DIR=$root/target/cuda-sm$cap
  # shellcheck disable=SC2016  # $ORIGIN is for the dynamic loader, not the shell
  # RUSTFLAGS replaces .cargo/config.toml's rustflags, so its target-cpu is repeated here.
  export RUSTFLAGS="${RUSTFLAGS:-} -C target-cpu=x86-64-v3 -L $cu/lib -L $dir/stub -C link-arg=-Wl,-rpath,\$ORIGIN/cuda-lib"
  if [ $check = 1 ]; then
    echo "build-cuda.sh: cargo check -p rbee-worker --features cuda (sm_$cap)" >&2
    (cd "$root" && cargo check --release -p rbee-worker --features cuda)
    continue
  fi
  echo "build-cuda.sh: cargo build --release -p rbee-worker --features cuda (sm_$cap)" >&2
  (cd "$root" && cargo build --release -p rbee-worker --features cuda)
  out=$root/target/release/rbee-worker-cuda-sm$cap
  cp "$CARGO_TARGET_DIR/release/rbee-worker" "$out"
  strip "$out" 2>/dev/null || true
  echo "build-cuda.sh: $out" >&2
done
[ $check = 1 ] && exit 0
if [ ${#caps[@]} = 1 ]; then
  cp "$root/target/release/rbee-worker-cuda-sm${caps[0]}" "$root/target/release/rbee-worker-cuda"
fi
# The runtime libraries the binary asks for, and theirs (libcublas needs libcublasLt); libcuda.so.1
# is the driver's and stays out.
libdir=$root/target/release/cuda-lib
rm -rf "$libdir"
mkdir -p "$libdir"
copy_deps() {
  local need
  for need in $(readelf -d "$1" | sed -n 's/.*NEEDED.*\[\(lib.*\)\]/\1/p'); do
    if [ -e "$cu/lib/$need" ] && [ ! -e "$libdir/$need" ]; then
      cp -L "$cu/lib/$need" "$libdir/$need"
      copy_deps "$libdir/$need"
    fi
  done
}
copy_deps "$root/target/release/rbee-worker-cuda-sm${caps[0]}"
echo "build-cuda.sh: runtime libraries in target/release/cuda-lib: $(ls "$libdir" | tr '\n' ' ')" >&2
