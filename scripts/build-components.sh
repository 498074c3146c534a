#!/bin/sh
# Rebuild the committed component fixtures in tests/fixtures/components, two ways:
# - NAME with a WIT world NAME.wit beside it: the core module src/NAME.c beside it (the
#   canonical ABI by hand, no libc, no entry point; not in tests/fixtures/src, which
#   scripts/build-wasm.sh builds as commands) built with zig cc, its world embedded
#   (`wasm-tools component embed`, through jco's API: embed.mjs), then made a component (`jco new`).
# - any other NAME: the WASI preview-1 command tests/fixtures/NAME.wasm (built from
#   tests/fixtures/src/NAME.c by scripts/build-wasm.sh) adapted to a WASI preview-2 component with
#   the preview-1 command adapter that jco ships (wasi_snapshot_preview1.command.wasm).
# jco's version is pinned by the package.json and package-lock.json next to the outputs; both ways
# are deterministic, so a rebuild gives the same bytes (the sha256 of each is printed). The built
# files are committed: tests need no npm and no compiler.
# Needs: node and npm (npm ci fetches the pinned jco into tests/fixtures/components/node_modules),
# and pip install ziglang for the WIT-world fixtures.
#
#   scripts/build-components.sh            # probe, timely and calc
#   scripts/build-components.sh calc       # the names to build
set -eu
here=tests/fixtures/components
names=${*:-probe timely calc}
(cd "$here" && npm ci --no-audit --no-fund --silent)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for name in $names; do
    if [ -f "$here/$name.wit" ]; then
        python -m ziglang cc --target=wasm32-wasi -O2 -s -nostdlib -Wl,--no-entry \
            -o "$scratch/$name.core.wasm" "$here/src/$name.c"
        (cd "$here" && node embed.mjs "$scratch/$name.core.wasm" "$name.wit" "$name" "$scratch/$name.embedded.wasm")
        "$here/node_modules/.bin/jco" new "$scratch/$name.embedded.wasm" -o "$here/$name.wasm"
    else
        "$here/node_modules/.bin/jco" new "tests/fixtures/$name.wasm" --wasi-command -o "$here/$name.wasm"
    fi
    sha256sum "$here/$name.wasm"
done
