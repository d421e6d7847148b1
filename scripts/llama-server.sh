#!/usr/bin/env bash
# Build llama-server once per machine and print its path.
# The llama-cpp-python sdist vendors llama.cpp (vendor/llama.cpp, with tools/server); building
# only the llama-server target from it pins the server to the same llama.cpp as the in-process
# backend. Portable CPU flags: the default native build crashes on these machines (AMX kernels).
# About 12 minutes on 2 cores, then cached at $MODELPLUG_CACHE/bin/llama-server (outside the
# work tree, so every checkout on the machine shares it). All build output goes to stderr and to
# $MODELPLUG_CACHE/llama-server-build.log; stdout is only the binary's path.
set -euo pipefail
VERSION=0.3.36
CACHE="${MODELPLUG_CACHE:-$HOME/.cache/modelplug}"
BIN="$CACHE/bin/llama-server"
PYTHON=${PYTHON:-python3}

if [ -x "$BIN" ]; then
  echo "$BIN"
  exit 0
fi

mkdir -p "$CACHE/bin" "$CACHE/downloads"
LOG="$CACHE/llama-server-build.log"
# A private work dir so two builds started at once never share a half-written tree.
WORK="$(mktemp -d "$CACHE/llama-server-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

{
  echo "Building llama-server from llama-cpp-python $VERSION (once per machine, ~12 min)..."
  SDIST="$CACHE/downloads/llama_cpp_python-$VERSION.tar.gz"
  if [ ! -f "$SDIST" ]; then
    $PYTHON -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" \
      -d "$WORK/dl"
    mv "$WORK"/dl/llama_cpp_python-"$VERSION".tar.gz "$SDIST"
  fi
  tar -xzf "$SDIST" -C "$WORK"
  SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
  cmake -S "$SRC" -B "$WORK/build" \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DGGML_BMI2=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DBUILD_SHARED_LIBS=OFF -DCMAKE_BUILD_TYPE=Release
  cmake --build "$WORK/build" --target llama-server -j"${JOBS:-$(nproc)}"
  # Atomic install: a half-copied binary is never seen as "already built".
  cp "$WORK/build/bin/llama-server" "$BIN.part"
  chmod +x "$BIN.part"
  mv "$BIN.part" "$BIN"
  echo "Built $BIN"
} 2>&1 | tee "$LOG" >&2

echo "$BIN"
