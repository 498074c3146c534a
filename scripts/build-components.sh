#!/bin/sh
# Rebuild the committed component fixtures: each WASI preview-1 command in tests/fixtures/NAME.wasm
# (built from tests/fixtures/src/NAME.c by scripts/build-wasm.sh) adapted to a WASI preview-2
# component, tests/fixtures/components/NAME.wasm, with the preview-1 command adapter that jco ships
# (wasi_snapshot_preview1.command.wasm). jco's version is pinned by the package.json and
# package-lock.json next to the outputs; the adaptation is deterministic, so a rebuild gives the
# same bytes (the sha256 of each is printed). The built files are committed: tests need no npm.
# Needs: node and npm (npm ci fetches the pinned jco into tests/fixtures/components/node_modules).
#
#   scripts/build-components.sh            # probe and timely
#   scripts/build-components.sh probe      # the names to adapt
set -eu
here=tests/fixtures/components
names=${*:-probe timely}
(cd "$here" && npm ci --no-audit --no-fund --silent)
for name in $names; do
    "$here/node_modules/.bin/jco" new "tests/fixtures/$name.wasm" --wasi-command -o "$here/$name.wasm"
    sha256sum "$here/$name.wasm"
done
