#!/bin/sh
# Rebuild the committed WASM programs of one folder: FOLDER/src/*.c -> FOLDER/*.wasm, printing each
# sha256. The built files are committed, so tests and the demo need no compiler. After rebuilding
# manifests/tools, run `python manifests/examples/make.py` to pin and sign the new digests.
# Needs: pip install ziglang.
#
#   scripts/build-wasm.sh manifests/tools -Wl,-z,stack-size=262144   # the demo tools
#   scripts/build-wasm.sh tests/fixtures -Wl,-z,stack-size=262144    # test fixtures
#   scripts/build-wasm.sh bench/fixtures                              # benchmark tools
#
# Extra arguments go to the compiler. A 256 KiB C stack keeps the initial linear memory small
# (wasm-ld's default stack is 16 MiB); the benchmark keeps the default, as a bare user would.
set -eu
folder=$1
shift
for src in "$folder"/src/*.c; do
    name=$(basename "$src" .c)
    python -m ziglang cc --target=wasm32-wasi -O2 -s "$@" -o "$folder/$name.wasm" "$src"
    sha256sum "$folder/$name.wasm"
done
