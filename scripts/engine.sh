#!/usr/bin/env bash
# Build the CPU inference engine of sampling.backend=llamacpp: llama.cpp's llama-server and its
# HF -> GGUF converter, from PyPI only (the llama-cpp-python sdist vendors llama.cpp; cmake and
# ninja come as wheels). About 6-10 minutes on 2 cores, once; a second run builds nothing.
# Prints the engine folder; bpo finds it there ($BPO_CACHE/engine, or engine.dir=FOLDER).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh >/dev/null
VERSION=0.3.36  # llama-cpp-python release whose vendored llama.cpp is built
DEST=${BPO_CACHE:-$HOME/.cache/bpo}/engine/llama.cpp-py$VERSION
# the converter runs in this checkout's .venv: its packages are needed even when the server is built
$PY -m pip install -q -e ".[engine]"
if [ -x "$DEST/llama-server" ] && [ -f "$DEST/convert_hf_to_gguf.py" ]; then
  echo "$DEST"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$PY -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$VERSION"
tar -xzf "$work/llama_cpp_python-$VERSION.tar.gz" -C "$work"
src=$work/llama_cpp_python-$VERSION/vendor/llama.cpp
export PATH=$PWD/.venv/bin:$PATH  # the cmake and ninja of the engine extra
# static (one file to keep), built for this CPU, no network features
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >"$work/cmake.log" 2>&1 \
  || { tail -20 "$work/cmake.log"; echo "error: configuring llama.cpp failed (log above)" >&2; exit 2; }
cmake --build "$work/build" --target llama-server -j"$(nproc)" >"$work/build.log" 2>&1 \
  || { tail -20 "$work/build.log"; echo "error: building llama-server failed (log above)" >&2; exit 2; }
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.tmp"
mkdir "$DEST.tmp"
cp "$work/build/bin/llama-server" "$DEST.tmp/"
cp -r "$src/convert_hf_to_gguf.py" "$src/conversion" "$src/gguf-py" "$src/LICENSE" "$DEST.tmp/"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "$DEST"
