"""Each command imports what it needs and nothing heavy besides (issue 10: start-up time).

``sandrun check`` validates and compiles: no wasmtime, no cryptography, no jsonschema (the
schema's fast check is generated ahead of time), no HTTP client, no worker machinery.
``sandrun exec`` of an unsigned, already compiled core module: no cryptography, no jsonschema or
fastjsonschema, no forkserver (a module compiled for the first time is compiled in a bounded child
from one), no ``importlib.metadata``, nothing of components, nothing of the HTTP layer, no audit
verifier. Neither creates a dataclass without a docstring (see ``_RUN_AND_LIST``). The timings are
bench/bench_startup.py's; this only pins the imports.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import wasmtime

HELLO = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 8) "hello\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 8))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 20)))))"""

# Runs the CLI as `python -m runner` would, then writes the names of every imported module, and
# of every dataclass of Sandrun's without a docstring ("!" before it): dataclasses computes
# ``inspect.signature`` of such a class for its ``__doc__``, up to 2 ms a class at each start.
_RUN_AND_LIST = """
import atexit, dataclasses, runpy, sys
out = sys.argv[1]
def undocumented():
    for module in [m for name, m in sys.modules.items() if name.startswith("runner")]:
        for value in vars(module).values():
            if not (isinstance(value, type) and dataclasses.is_dataclass(value)):
                continue
            if value.__module__ == module.__name__ and (value.__doc__ or "").startswith(value.__name__ + "("):
                yield "!" + value.__module__ + "." + value.__qualname__
atexit.register(lambda: open(out, "w").write("\\n".join([*sorted(sys.modules), *undocumented()])))
sys.argv = ["sandrun", *sys.argv[2:]]
runpy.run_module("runner", run_name="__main__")
"""

POLICY = "apiVersion: sandrun/v1\nkind: Policy\nmetadata: {name: p}\nfs: {roots: [.]}\n"
MANIFEST = """\
apiVersion: sandrun/v1
kind: Manifest
metadata: {{name: m}}
tools:
  hello: {{module: hello.wasm, sha256: {sha256}}}
jobs:
  - {{name: greet, tool: hello, args: [a], env: {{LANG: C}}, limits: {{memory: 8MiB}}}}
"""

# fastjsonschema: the committed fast checks raise their own exceptions (runner.schema._fast_errors)
NEVER = {"cryptography", "jsonschema", "fastjsonschema", "importlib.metadata", "multiprocessing.forkserver"}


def _imported(folder: Path, *args: str) -> set[str]:
    listing = folder / "modules.txt"
    ran = subprocess.run(
        [sys.executable, "-c", _RUN_AND_LIST, str(listing), *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "XDG_STATE_HOME": str(folder / "state"), "XDG_CACHE_HOME": str(folder / "cache")},
    )
    assert ran.returncode == 0, ran.stderr
    return set(listing.read_text().split())


def _project(folder: Path) -> None:
    module = wasmtime.wat2wasm(HELLO)
    (folder / "hello.wasm").write_bytes(module)
    (folder / "policy.yaml").write_text(POLICY)
    (folder / "m.yaml").write_text(MANIFEST.format(sha256=hashlib.sha256(module).hexdigest()))


def test_check_imports_no_engine_crypto_http_or_workers(tmp_path: Path) -> None:
    _project(tmp_path)
    modules = _imported(tmp_path, "check", "m.yaml", "--policy", "policy.yaml")
    assert "runner.schema._fast_manifest" in modules and "runner.policy.compiler" in modules
    assert not {name for name in modules if name.startswith("!")}, "give these dataclasses a docstring"
    heavy = NEVER | {
        "wasmtime",
        "http.client",
        "httptools",
        "ssl",
        "multiprocessing",
        "runner.executor",
        "runner.egress.client",
        # a policy without network loads no network parser; check writes no log and no report
        "runner.hosts",
        "runner.egress.rules",
        "runner.egress.urls",
        "runner.audit",
        "runner.report",
    }
    assert not heavy & modules


def test_exec_imports_no_crypto_jsonschema_or_forkserver(tmp_path: Path) -> None:
    _project(tmp_path)
    _imported(tmp_path, "exec", "hello.wasm")  # compiles the module (in a bounded child), caches it
    modules = _imported(tmp_path, "exec", "hello.wasm")
    assert "wasmtime" in modules and "runner.worker" in modules
    assert not {name for name in modules if name.startswith("!")}, "give these dataclasses a docstring"
    assert not (NEVER | {"runner.shard"}) & modules
    # a core module: nothing of components (~10 ms); no request made: nothing of the HTTP layer
    assert not {"wasmtime.component", "runner.component", "runner.egress.wit_host"} & modules
    assert (
        not {"runner.egress.job", "runner.egress.transport", "runner.egress.client", "runner.egress.wire"}
        & modules
    )
    assert not {"httptools", "ssl"} & modules
    # the log is written, not verified (runner.audit loads names on use); the default policy only
    # blocks, so the allow-list and URL parsers stay unloaded
    assert "runner.audit.chain" in modules and "runner.audit.verify" not in modules
    assert "runner.hosts" in modules and not {"runner.egress.rules", "runner.egress.urls"} & modules


_FROZEN_AT_EXIT = """
import atexit, gc, sys
atexit.register(lambda: print("frozen", gc.get_freeze_count() > 0))  # registered first: runs last
from runner.cli import main
try:
    main(["schema", "manifest"])
except SystemExit:
    pass
"""


def test_the_heap_is_frozen_at_exit_so_the_final_collection_skips_it() -> None:
    ran = subprocess.run(
        [sys.executable, "-c", _FROZEN_AT_EXIT], capture_output=True, text=True, timeout=120, check=False
    )
    assert ran.stdout.splitlines()[-1] == "frozen True", ran.stdout[-500:] + ran.stderr
