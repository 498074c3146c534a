"""The network capability end to end: the ``httpget`` C guest (tests/fixtures/src/httpget.c) under
the real compiler and executor. The whole SSRF table runs through it (table-driven DNS, recorded
dials, a loopback server); then plain loopback GET/HTTPS/secret runs through the CLI process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from netkit import LOOPBACK, RecordingConnector, TableResolver, http_server, make_test_ca, raw_server
from nettree import write_tree
from ssrf_cases import CASES, DNS, OK, Case

from runner.api import compile_manifests, run
from runner.egress import Seam, SystemConnector
from runner.executor import BatchOptions


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadingHTTPServer]:
    with http_server() as running:
        yield running


def _groups() -> dict[tuple[str, str], list[Case]]:
    groups: dict[tuple[str, str], list[Case]] = {}
    for case in CASES:
        key = (json.dumps(case.allow, sort_keys=True), json.dumps(case.block))
        groups.setdefault(key, []).append(case)
    return groups


def _outcomes(stdout: str) -> dict[int, str]:
    """``N status S`` -> OK (the body line follows); ``N error CODE [rule] ...`` -> rule."""
    found: dict[int, str] = {}
    for line in stdout.splitlines():
        parts = line.split(" ", 3)
        if len(parts) >= 3 and parts[0].isdigit() and parts[1] in ("status", "error"):
            found[int(parts[0])] = OK if parts[1] == "status" else parts[3].split("]")[0].lstrip("[")
    return found


@pytest.fixture(scope="module")
def table_run(tmp_path_factory: pytest.TempPathFactory, server: ThreadingHTTPServer) -> dict[str, Any]:
    """Every SSRF case, one guest job per grant, in one run; the stdout and audit of each job."""
    root = tmp_path_factory.mktemp("ssrf")
    groups = _groups()
    jobs = []
    for index, ((allow, block), cases) in enumerate(groups.items()):
        args: list[str] = []
        for case in cases:
            args += [case.method, str(case.redirects), case.url]
        jobs.append(
            {
                "name": f"g{index}",
                "args": args,
                "network": {"allow": json.loads(allow), "block": json.loads(block)},
            }
        )
    manifest, policy = write_tree(root, policy_network={"allow": ["http://*:*", "https://*:*"]}, jobs=jobs)
    seam = Seam(TableResolver(dict(DNS)), RecordingConnector(server.server_address[1]))
    outcome = run(
        lambda: compile_manifests([manifest], policy, root=root),
        root=root,
        out_dir=root / "out",
        options=BatchOptions(jobs=2, egress=seam),
    )
    records = [json.loads(line) for line in (root / "out" / "audit.jsonl").read_text().splitlines()]
    results: dict[str, str] = {}
    for index, cases in enumerate(groups.values()):
        stdout = (root / "out" / "logs" / "net" / f"g{index}.stdout").read_text()
        found = _outcomes(stdout)
        for position, case in enumerate(cases):
            results[case.id] = found.get(position, f"missing in {stdout!r}")
    return {"results": results, "records": records, "report": outcome.report}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_ssrf_case_through_the_guest(case: Case, table_run: dict[str, Any]) -> None:
    assert table_run["results"][case.id] == case.expect


def test_every_hop_is_an_audit_record(table_run: dict[str, Any]) -> None:
    hops = [r["data"] for r in table_run["records"] if r["kind"] == "net.request"]
    assert len(hops) >= len(CASES)
    assert {
        "url",
        "method",
        "addresses",
        "pinned",
        "verdict",
        "rule",
        "status",
        "bytes",
        "body_sha256",
        "secrets",
    } <= set(hops[0])
    assert any(h["verdict"] == "allowed" for h in hops) and any(h["rule"] == "net.blocked" for h in hops)


# -- the CLI, a real process, real sockets on loopback only


def _cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _job(url: str, method: str = "GET", **network: Any) -> dict[str, Any]:
    return {"name": "get", "args": [method, "0", url], "network": network}


def test_a_guest_gets_from_loopback_when_allowed_and_is_refused_when_not(
    tmp_path: Path, server: ThreadingHTTPServer
) -> None:
    url = f"http://{LOOPBACK}:{server.server_address[1]}/ok"
    manifest, policy = write_tree(
        tmp_path / "yes",
        policy_network={"allow": [f"http://{LOOPBACK}:*"]},
        jobs=[_job(url, allow=[f"http://{LOOPBACK}:*"])],
    )
    done = _cli(["run", str(manifest), "--policy", str(policy), "--out", "out"], tmp_path / "yes")
    assert done.returncode == 0, done.stderr
    assert (
        tmp_path / "yes" / "out" / "logs" / "net" / "get.stdout"
    ).read_text() == "0 status 200\nhello from loopback\n\n"

    manifest, policy = write_tree(
        tmp_path / "no",
        policy_network={"allow": [f"http://{LOOPBACK}:*"], "block": ["loopback"]},
        jobs=[_job(url, allow=[f"http://{LOOPBACK}:*"])],
    )
    done = _cli(["run", str(manifest), "--policy", str(policy), "--out", "out"], tmp_path / "no")
    assert done.returncode == 1
    stdout = (tmp_path / "no" / "out" / "logs" / "net" / "get.stdout").read_text()
    assert stdout.startswith("0 error -3 [net.blocked]")
    audit = (tmp_path / "no" / "out" / "audit.jsonl").read_text()
    assert '"kind":"net.request"' in audit and "net.blocked" in audit


def test_a_response_with_ambiguous_framing_reaches_the_guest_as_a_protocol_error(tmp_path: Path) -> None:
    # Content-Length and Transfer-Encoding together: two HTTP readers could split it differently,
    # so the host refuses it (EPROTOCOL) instead of handing the guest its own reading.
    smuggled = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    with raw_server(smuggled) as port:
        manifest, policy = write_tree(
            tmp_path,
            policy_network={"allow": [f"http://{LOOPBACK}:*"]},
            jobs=[_job(f"http://{LOOPBACK}:{port}/", allow=[f"http://{LOOPBACK}:*"])],
        )
        done = _cli(["run", str(manifest), "--policy", str(policy), "--out", "out"], tmp_path)
    assert done.returncode == 1, done.stderr
    stdout = (tmp_path / "out" / "logs" / "net" / "get.stdout").read_text()
    assert stdout.startswith("0 error -10 [net.protocol]") and "hello" not in stdout
    hops = [json.loads(line)["data"] for line in (tmp_path / "out" / "audit.jsonl").read_text().splitlines()]
    assert any(h.get("rule") == "net.protocol" and h.get("verdict") == "failed" for h in hops)


def test_https_with_a_test_ca_and_a_name_mismatch(tmp_path: Path) -> None:
    """Through the executor (the test CA is trusted through the library seam only, never a flag)."""
    ca = make_test_ca(tmp_path, ["api.example.org"])
    with http_server(ca.server_context) as tls:
        port = tls.server_address[1]
        resolver = TableResolver({"api.example.org": [LOOPBACK], "wrong.example.org": [LOOPBACK]})
        seam = Seam(resolver, SystemConnector(), extra_ca_pem=ca.ca_pem)
        jobs = [
            {
                "name": "good",
                "args": ["GET", "0", f"https://api.example.org:{port}/ok"],
                "network": {"allow": ["https://*.example.org:*"]},
            },
            {
                "name": "mismatch",
                "args": ["GET", "0", f"https://wrong.example.org:{port}/ok"],
                "network": {"allow": ["https://*.example.org:*"]},
            },
        ]
        manifest, policy = write_tree(
            tmp_path / "t", policy_network={"allow": ["https://*.example.org:*"]}, jobs=jobs
        )
        run(
            lambda: compile_manifests([manifest], policy, root=tmp_path / "t"),
            root=tmp_path / "t",
            out_dir=tmp_path / "t" / "out",
            options=BatchOptions(jobs=1, egress=seam),
        )
    logs = tmp_path / "t" / "out" / "logs" / "net"
    assert (logs / "good.stdout").read_text() == "0 status 200\nhello from loopback\n\n"
    assert (logs / "mismatch.stdout").read_text().startswith("0 error -6 [net.tls]")


def test_a_secret_reaches_the_server_and_never_the_guest_output_or_the_log(
    tmp_path: Path, server: ThreadingHTTPServer
) -> None:
    origin = f"http://{LOOPBACK}:{server.server_address[1]}"
    secret = {
        "origin": origin,
        "header": "Authorization",
        "value_from": {"env": "SANDRUN_TEST_TOKEN"},
        "format": "Bearer {}",
    }
    manifest, policy = write_tree(
        tmp_path,
        policy_network={"allow": [f"http://{LOOPBACK}:*"], "secrets": [secret]},
        jobs=[_job(origin + "/echo", allow=[f"http://{LOOPBACK}:*"], secrets=[secret])],
    )
    before = len(server.seen)  # type: ignore[attr-defined]
    token = "tok-7f3a9c-never-printed"
    done = _cli(
        ["run", str(manifest), "--policy", str(policy), "--out", "out"],
        tmp_path,
        env={"SANDRUN_TEST_TOKEN": token},
    )
    assert done.returncode == 0, done.stderr
    (seen,) = server.seen[before:]  # type: ignore[attr-defined]
    assert seen[2]["Authorization"] == f"Bearer {token}"
    stdout = (tmp_path / "out" / "logs" / "net" / "get.stdout").read_text()
    assert "Authorization: [secret SANDRUN_TEST_TOKEN]" in stdout  # the echo, redacted
    everything = "".join(p.read_text(errors="replace") for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert token not in everything + done.stdout + done.stderr
    assert token not in (tmp_path / "manifest.yaml").read_text() + (tmp_path / "policy.yaml").read_text()
    assert '"secrets":["SANDRUN_TEST_TOKEN"]' in (tmp_path / "out" / "audit.jsonl").read_text()


def test_a_trickling_server_cannot_hold_a_job_past_its_deadline(
    tmp_path: Path, server: ThreadingHTTPServer
) -> None:
    url = f"http://{LOOPBACK}:{server.server_address[1]}/trickle"
    job = {**_job(url, allow=[f"http://{LOOPBACK}:*"]), "limits": {"timeout": "1s"}}
    manifest, policy = write_tree(tmp_path, policy_network={"allow": [f"http://{LOOPBACK}:*"]}, jobs=[job])
    started = time.monotonic()
    outcome = run(
        lambda: compile_manifests([manifest], policy, root=tmp_path), root=tmp_path, out_dir=tmp_path / "out"
    )
    assert time.monotonic() - started < 30  # generous: the deadline is 1 s, the trickle lasts 200 s
    (result,) = outcome.report["jobs"]
    assert result["status"] == "failed" and result["trap"] == "timeout"
    hops = [
        json.loads(line)["data"]
        for line in (tmp_path / "out" / "audit.jsonl").read_text().splitlines()
        if '"net.request"' in line
    ]
    assert [h["rule"] for h in hops] == ["net.timeout"]
