#!/bin/sh
# Rebuild the demo tools from src/*.c (the built .wasm files are committed next to this script).
# Needs: pip install ziglang. After a rebuild, update the sha256 of each tool in the manifests.
set -eu
cd "$(dirname "$0")"
for src in src/*.c; do
    name=$(basename "$src" .c)
    python -m ziglang cc --target=wasm32-wasi -O2 -s -Wl,-z,stack-size=262144 -o "$name.wasm" "$src"
    echo "$(sha256sum "$name.wasm")"
done
