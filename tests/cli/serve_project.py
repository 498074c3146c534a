"""A project for ``sandrun serve`` tests: the CGI test guest behind a few routes, a lenient policy,
a server started on port 0 in a thread, and a tiny HTTP client."""

from __future__ import annotations

import hashlib
import http.client
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CGI = Path(__file__).resolve().parents[1] / "fixtures" / "cgi.wasm"

POLICY = """\
apiVersion: sandrun/v1
kind: Policy
metadata: {name: serve-tests}
signatures: {required: false}
limits:
  max: {memory: 64MiB, timeout: 1m}
fs: {roots: [./data]}
"""

MANIFEST = """\
apiVersion: sandrun/v1
kind: Manifest
metadata: {{name: web}}
tools:
  cgi: {{module: ../tools/cgi.wasm, sha256: {sha256}}}
jobs:
  - {{name: app, tool: cgi, route: /app, limits: {{timeout: 5s, output: 64KiB}}}}
  - name: deep
    tool: cgi
    route: /app/deep
    env: {{WHICH: deep, HTTP_X_ROLE: fixed-by-the-manifest}}
  - {{name: spin, tool: cgi, route: /spin, limits: {{timeout: 3s}}}}
  - {{name: slow, tool: cgi, route: /slow, limits: {{timeout: 30s}}}}
  - name: files
    tool: cgi
    route: /files
    fs: [{{host: ../data, guest: /data}}]
    limits: {{timeout: 2s}}
  - {{name: batch-only, tool: cgi}}
"""


def make_serve_project(root: Path) -> tuple[Path, Path]:
    """``root/manifests/web.yaml`` (routes /app, /app/deep, /spin, /slow, /files) and its policy;
    /files mounts ``root/data`` (holding ``hello.txt``) read-only at /data."""
    for folder in ("manifests", "tools", "policies", "data"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "data" / "hello.txt").write_text("hello from the mount")
    shutil.copyfile(CGI, root / "tools" / "cgi.wasm")
    sha256 = hashlib.sha256(CGI.read_bytes()).hexdigest()
    (root / "manifests" / "web.yaml").write_text(MANIFEST.format(sha256=sha256))
    (root / "policies" / "serve.yaml").write_text(POLICY)
    return root / "manifests", root / "policies" / "serve.yaml"


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def fetch(
    port: int,
    path: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, response.getheaders(), response.read())
    finally:
        connection.close()


@dataclass
class Running:
    service: Any
    port: int
    result: dict[str, Any] = field(default_factory=dict)


@contextmanager
def serving(root: Path, **options: Any) -> Iterator[Running]:
    """``api.serve`` on 127.0.0.1:0 in a thread; stopped (drained, sealed) when the block ends."""
    from runner.api import plan_maker, serve
    from runner.serve import ServeOptions

    manifests, policy = make_serve_project(root)
    ready = threading.Event()
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            box["result"] = serve(
                plan_maker([manifests], policy, root=root),
                ServeOptions(port=0, cache_dir=root / "cache", **options),
                root=root,
                out_dir=root / "out",
                on_ready=lambda service: (box.setdefault("service", service), ready.set()),
            )
        except BaseException as exc:  # handed to the test below
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=main, name="serve-under-test")
    thread.start()
    assert ready.wait(120), "the server never became ready"
    if "error" in box:
        raise box["error"]
    running = Running(box["service"], box["service"].address[1], box)
    try:
        yield running
    finally:
        running.service.stop("test over")
        thread.join(120)
        assert not thread.is_alive(), "the server did not drain"
    if "error" in box:
        raise box["error"]
