#!/usr/bin/env bash
# Build llama.cpp's llama-server from the sources vendored in the llama-cpp-python
# sdist, so that the engine benchmark compares against the same llama.cpp build
# that the engine links. Everything lands under benchmarks/.work/ (git-ignored).
#
# Usage: benchmarks/build_llama_server.sh [JOBS]
# Prints the path of the llama-server binary on its last line.
set -euo pipefail

version="0.3.36"
jobs="${1:-2}"
here="$(cd "$(dirname "$0")" && pwd)"
work="$here/.work"
python="${PYTHON:-$here/../.venv/bin/python}"
source_dir="$work/llama_cpp_python-$version"
build_dir="$work/llama-server-build"
binary="$build_dir/bin/llama-server"

mkdir -p "$work"

if [[ -x "$binary" ]]; then
    echo "$binary"
    exit 0
fi

if [[ ! -d "$source_dir" ]]; then
    "$python" -m pip download --no-deps --no-binary :all: \
        "llama-cpp-python==$version" -d "$work"
    tar -xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
fi

cmake -S "$source_dir/vendor/llama.cpp" -B "$build_dir" \
    -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON
cmake --build "$build_dir" --config Release --target llama-server -j "$jobs"

echo "$binary"
