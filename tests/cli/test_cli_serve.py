"""``sandrun serve`` from the command line: a real process, SIGTERM mid-request, the sealed log."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cli_process import REPO, sandrun
from cli_project import make_project
from click.testing import CliRunner
from serve_project import Reply, fetch, make_serve_project

import runner
from runner.audit import read_records, verify_log
from runner.cli import cli

_READY = re.compile(r"serving on http://([^:]+):(\d+)")


def _start(root: Path, *extra: str) -> tuple[subprocess.Popen[str], int, list[str]]:
    """``sandrun serve`` in a subprocess on port 0; its port, once it says it is serving."""
    manifests, policy = make_serve_project(root)
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "serve", str(manifests), "--policy", str(policy), "--port", "0"]
        + ["--out", str(root / "out"), "--cache-dir", str(root / "cache"), "--root", str(root), *extra],
        cwd=REPO,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "CI": "true"},
    )
    assert process.stderr is not None
    lines: list[str] = []
    for line in process.stderr:
        lines.append(line)
        ready = _READY.search(line)
        if ready:
            return process, int(ready.group(2)), lines
    process.wait(10)
    raise AssertionError("sandrun serve never became ready:\n" + "".join(lines))


def _finish(process: subprocess.Popen[str], lines: list[str]) -> str:
    assert process.stderr is not None
    rest = process.stderr.read()
    process.wait(60)
    return "".join(lines) + rest


def test_sigterm_mid_request_drains_then_seals_one_record_per_request(tmp_path: Path) -> None:
    process, port, lines = _start(tmp_path)
    try:
        before = [fetch(port, "/app/echo", method="POST", body=b"one"), fetch(port, "/app/cookies")]
        slow: list[Reply] = []
        request = threading.Thread(target=lambda: slow.append(fetch(port, "/slow/sleep?1500")))
        request.start()
        for _ in range(2000):  # until the slow request is admitted (bounded)
            if b'"in_flight":1' in fetch(port, "/healthz").body:
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the slow request never started")
        process.send_signal(signal.SIGTERM)
        request.join(60)
    finally:
        if process.poll() is None and not slow:
            process.kill()
    stderr = _finish(process, lines)
    assert process.returncode == 0, stderr
    assert [r.status for r in before] == [200, 201]
    assert (slow[0].status, slow[0].body) == (200, b"slept")  # drained, not cut off
    assert "served 3 requests" in stderr
    verified = sandrun("audit", "verify", str(tmp_path / "out" / "audit.jsonl"), "--format", "json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["status"] == "intact"  # sealed: drained, then the seal
    shown = sandrun("audit", "show", str(tmp_path / "out"), "--kind", "request.served", "--format", "json")
    records = [json.loads(line) for line in shown.stdout.splitlines() if line.strip()]
    assert [(r["data"]["path"], r["data"]["status"]) for r in records] == [
        ("/app/echo", 200),
        ("/app/cookies", 201),
        ("/slow/sleep", 200),
    ]
    with pytest.raises(OSError):  # and nothing listens any more
        fetch(port, "/healthz")


def test_another_address_than_loopback_is_served_with_a_warning(tmp_path: Path) -> None:
    process, port, lines = _start(tmp_path, "--host", "0.0.0.0")
    try:
        assert fetch(port, "/app/echo", method="POST", body=b"hi").body == b"hi"
    finally:
        process.send_signal(signal.SIGTERM)
    stderr = _finish(process, lines)
    assert process.returncode == 0, stderr
    assert "warning: listening on 0.0.0.0, not loopback" in stderr


def test_manifests_without_routes_are_refused(tmp_path: Path) -> None:
    make_project(tmp_path)
    args = ["serve", str(tmp_path / "manifests"), "--policy", str(tmp_path / "policies" / "lenient.yaml")]
    result = CliRunner().invoke(cli, [*args, "--root", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "[serve.no-routes]" in result.stderr


def test_a_manifest_with_a_duplicate_route_never_serves(tmp_path: Path) -> None:
    manifests, policy = make_serve_project(tmp_path)
    web = manifests / "web.yaml"
    web.write_text(web.read_text().replace("route: /spin", "route: /slow"))
    result = CliRunner().invoke(
        cli, ["serve", str(manifests), "--policy", str(policy), "--root", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "[route.duplicate]" in result.stderr


def test_without_the_serve_extra_serve_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifests, policy = make_serve_project(tmp_path)
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now fails, as when not installed
    monkeypatch.delitem(sys.modules, "runner.serve", raising=False)
    monkeypatch.delattr(runner, "serve", raising=False)
    result = CliRunner().invoke(
        cli, ["serve", str(manifests), "--policy", str(policy), "--root", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "[serve.not-installed]" in result.stderr and "sandrun-wasm[serve]" in result.stderr


def test_a_route_is_unique_across_every_manifest_of_the_plan(tmp_path: Path) -> None:
    from runner.api import compile_manifests
    from runner.errors import InputError

    manifests, policy = make_serve_project(tmp_path)
    other = (manifests / "web.yaml").read_text().replace("name: web", "name: other")
    (manifests / "other.yaml").write_text(other)
    with pytest.raises(InputError) as caught:
        compile_manifests([manifests], policy, root=tmp_path)
    found = {(v.rule_id, Path(v.location.file).name, v.location.pointer) for v in caught.value.violations}
    assert found == {("route.duplicate", "web.yaml", f"/jobs/{i}/route") for i in (0, 1, 2, 3, 4)}


def test_a_port_in_use_or_a_bad_body_cap_is_one_line_and_exit_2(tmp_path: Path) -> None:
    import socket

    manifests, policy = make_serve_project(tmp_path)
    base = [
        "serve",
        str(manifests),
        "--policy",
        str(policy),
        "--root",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
    ]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = CliRunner().invoke(cli, [*base, "--port", str(port), "--cache-dir", str(tmp_path / "c")])
    assert busy.exit_code == 2 and "[serve.bind]" in busy.stderr
    assert len(busy.stderr.strip().splitlines()) == 1
    refused = verify_log(tmp_path / "o" / "audit.jsonl")  # the refused start is logged and sealed
    assert refused.status == "intact"
    assert [r["kind"] for r in read_records(tmp_path / "o" / "audit.jsonl")][-2:] == [
        "run.denied",
        "run.sealed",
    ]
    cap = CliRunner().invoke(cli, [*base, "--max-body", "lots"])
    assert cap.exit_code == 2 and "[input.flag]" in cap.stderr and "--max-body" in cap.stderr
