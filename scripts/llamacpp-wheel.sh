#!/usr/bin/env bash
# Build the llama-cpp-python wheel once per machine into $MODELPLUG_CACHE/wheels and install it.
# llama-cpp-python ships only as an sdist; its default native build crashes on these machines
# (AMX kernels), so it is built portably. About 15 minutes on 2 cores, then cached.
set -euo pipefail
VERSION=0.3.36
WHEELS="${MODELPLUG_CACHE:-$HOME/.cache/modelplug}/wheels"
PIP=${PIP:-python -m pip}
mkdir -p "$WHEELS"
if ! ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "Building llama-cpp-python $VERSION (once per machine, ~15 min)..."
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    $PIP wheel --no-deps "llama-cpp-python==$VERSION" -w "$WHEELS"
fi
$PIP install --find-links "$WHEELS" "llama-cpp-python==$VERSION"
