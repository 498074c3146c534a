"""``sandrun serve`` as a real HTTP server on 127.0.0.1:0, with the CGI test guest behind its routes."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
import time
from pathlib import Path

from serve_project import Reply, fetch, serving

from runner.audit import read_records, verify_log


def _served(root: Path) -> list[dict]:
    return [r["data"] for r in read_records(root / "out" / "audit.jsonl") if r["kind"] == "request.served"]


def _wait_in_flight(port: int, count: int) -> None:
    """Until ``count`` requests are admitted (health check); bounded so a bug cannot hang the suite."""
    for _ in range(2000):
        if fetch(port, "/healthz").body.count(b'"in_flight":%d' % count):
            return
        time.sleep(0.01)
    raise AssertionError(f"never {count} requests in flight")


def test_a_real_server_on_port_0_answers_and_logs_one_record_per_request(tmp_path: Path) -> None:
    with serving(tmp_path) as server:
        assert server.port != 0
        echo = fetch(server.port, "/app/echo", method="POST", body=b"hello guest")
        env = fetch(
            server.port,
            "/app/deep/env?q=1",
            method="PUT",
            body=b"{}",
            headers={"Content-Type": "application/json", "X-Role": "admin", "X-Multi": "a"},
        )
        cookies = fetch(server.port, "/app/cookies")
        hostile_host = fetch(
            server.port, "/app/echo", method="POST", body=b"x", headers={"Host": "h/spin/loop#"}
        )
        assert fetch(server.port, "/healthz").status == 200  # not a route: no record
        assert fetch(server.port, "/nothing-here").status == 404
        assert fetch(server.port, "/app/../app/echo").status == 404  # dot segments never match
    assert (echo.status, echo.body) == (200, b"hello guest")
    assert echo.header("x-content-type-options") == ["nosniff"]
    lines = env.body.decode().split("\n")
    assert env.status == 200
    for expected in (
        "REQUEST_METHOD=PUT",
        "SCRIPT_NAME=/app/deep",  # the longest route won over /app
        "PATH_INFO=/env",
        "QUERY_STRING=q=1",
        "CONTENT_TYPE=application/json",
        "CONTENT_LENGTH=2",
        "HTTP_X_MULTI=a",
        "HTTP_X_ROLE=fixed-by-the-manifest",  # the manifest's env wins over a request header
        "WHICH=deep",
        "REMOTE_ADDR=127.0.0.1",
    ):
        assert expected in lines
    assert not any(line.startswith(("HOME=", "PATH=", "USER=")) for line in lines)  # nothing of the host's
    assert lines[-2:] == ["--", "{}"]
    assert (hostile_host.status, hostile_host.body) == (200, b"x")  # routed by the path, not the Host
    assert cookies.status == 201 and cookies.header("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
    report = verify_log(tmp_path / "out" / "audit.jsonl")
    assert report.status == "intact"
    records = _served(tmp_path)
    assert [(r["job"], r["path"], r["status"]) for r in records] == [
        ("web/app", "/app/echo", 200),
        ("web/deep", "/app/deep/env", 200),
        ("web/app", "/app/cookies", 201),
        ("web/app", "/app/echo", 200),
    ]
    assert records[0]["request_bytes"] == len(b"hello guest") and records[0]["exit_code"] == 0


def test_a_guest_answer_that_smuggles_or_breaks_is_refused_not_passed_on(tmp_path: Path) -> None:
    cases = {
        "/app/inject": 500,  # CR inside a header value
        "/app/forbidden": 500,  # Transfer-Encoding set by the guest
        "/app/nohead": 500,  # not CGI output
        "/app/trap": 500,
        "/app/exit": 500,  # exit 3, the job expects 0
        "/app/flood": 502,  # 4 MiB past the 64 KiB output cap
    }
    with serving(tmp_path) as server:
        replies = {path: fetch(server.port, path) for path in cases}
    for path, status in cases.items():
        reply: Reply = replies[path]
        assert reply.status == status, path
        assert reply.header("set-cookie") == [] and b"body" not in reply.body, path
        assert reply.header("transfer-encoding") == [], path
    statuses = {r["path"]: (r["status"], r["reason"]) for r in _served(tmp_path)}
    assert {path: status for path, (status, _) in statuses.items()} == cases
    assert "control character" in statuses["/app/inject"][1]
    assert verify_log(tmp_path / "out" / "audit.jsonl").status == "intact"


def test_a_looping_route_gets_504_while_other_routes_keep_answering(tmp_path: Path) -> None:
    looped: list[tuple[Reply, float]] = []
    with serving(tmp_path, concurrency=2) as server:
        spinner = threading.Thread(
            target=lambda: looped.append((fetch(server.port, "/spin/loop"), time.monotonic()))
        )
        spinner.start()
        _wait_in_flight(server.port, 1)
        others = [fetch(server.port, f"/app/echo?{i}", method="POST", body=b"%d" % i) for i in range(10)]
        answered = time.monotonic()
        spinner.join(60)
    assert [(r.status, r.body) for r in others] == [(200, b"%d" % i) for i in range(10)]
    reply, at = looped[0]
    assert reply.status == 504
    assert answered < at  # every other request was answered while the loop still ran
    spin = [r for r in _served(tmp_path) if r["path"] == "/spin/loop"]
    assert len(spin) == 1 and spin[0]["trap"] == "timeout" and spin[0]["status"] == 504


def test_a_full_queue_answers_503_and_the_body_limit_413(tmp_path: Path) -> None:
    slept: list[Reply] = []
    with serving(tmp_path, concurrency=1, queue=0, max_body=16) as server:
        sleeper = threading.Thread(target=lambda: slept.append(fetch(server.port, "/slow/sleep?1500")))
        sleeper.start()
        _wait_in_flight(server.port, 1)
        busy = fetch(server.port, "/app/echo")
        sleeper.join(60)
        at_limit = fetch(server.port, "/app/echo", method="POST", body=b"x" * 16)
        declared = fetch(server.port, "/app/echo", method="POST", body=b"x" * 17)
        chunked = _chunked_post(server.port, "/app/echo", [b"x" * 10, b"y" * 10])
    assert (busy.status, busy.header("retry-after")) == (503, ["1"])
    assert (slept[0].status, slept[0].body) == (200, b"slept")
    assert at_limit.status == 200
    assert declared.status == 413
    assert chunked == 413  # no Content-Length: counted as it arrives
    assert [r["status"] for r in _served(tmp_path)] == [503, 200, 200, 413, 413]


def _chunked_post(port: int, path: str, chunks: list[bytes]) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", path, body=iter(chunks), encode_chunked=True)
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_served_job_reads_its_mount_and_cannot_write_it_or_see_the_host(tmp_path: Path) -> None:
    with serving(tmp_path) as server:
        read = fetch(server.port, "/files/read?/data/hello.txt")
        write = fetch(server.port, "/files/write?/data/planted.txt")
        host = fetch(server.port, "/files/read?/etc/passwd")
    assert (read.status, read.body) == (200, b"hello from the mount")
    assert write.status == 403 and write.body.startswith(b"denied errno=")
    assert not (tmp_path / "data" / "planted.txt").exists()
    assert host.status == 404


def test_a_guest_blocked_in_a_host_call_gets_504_and_frees_its_worker(tmp_path: Path) -> None:
    """A FIFO in the mount: opening it blocks in the host (no epoch can stop that). The worker is
    killed at the deadline, so the single guest thread is free again for the next request."""
    (tmp_path / "data").mkdir()
    os.mkfifo(tmp_path / "data" / "fifo")
    with serving(tmp_path, concurrency=1, queue=1) as server:
        blocked = fetch(server.port, "/files/read?/data/fifo")
        after = fetch(server.port, "/app/echo", method="POST", body=b"still here")
    assert blocked.status == 504
    assert (after.status, after.body) == (200, b"still here")
    record = next(r for r in _served(tmp_path) if r["path"] == "/files/read")
    assert record["status"] == 504 and "timeout" in record["reason"]


def _reply_to(sock: socket.socket) -> bytes:
    """What the server sends before it closes ``sock`` (bounded: a hung server fails the test)."""
    sock.settimeout(30)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            received += chunk
    return received


def test_a_request_head_without_end_is_cut_at_its_size_bound_and_serving_goes_on(tmp_path: Path) -> None:
    # uvicorn and llhttp keep every header line until the head ends: 200 MB on one connection
    # were held in memory, and the client waited for an answer that never came
    with serving(tmp_path) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /app/echo HTTP/1.1\r\nHost: x\r\n")
        sent = 0
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            while sent < 64 << 20:
                sock.sendall(b"X-Filler: " + b"a" * 8000 + b"\r\n")
                sent += 8012
        reply = _reply_to(sock)
        sock.close()
        after = fetch(server.port, "/app/echo")
    assert sent < 64 << 20, "the server read 64 MiB of headers without refusing them"
    assert reply.startswith(b"HTTP/1.1 431 ") and b"request head over" in reply
    assert after.status == 200


def test_silent_or_slow_connections_are_cut_at_the_head_deadline_and_free_their_slots(
    tmp_path: Path,
) -> None:
    # a connection that sends nothing, or its head a byte at a time, held a slot forever: enough
    # of them (concurrency + queue + 32) and every client got 503 until the server stopped
    with serving(tmp_path, concurrency=1, queue=1, head_timeout_s=1.0) as server:
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(40)]
        for sock in held[::2]:
            sock.sendall(b"GET /app/echo HTTP/1.1\r\nHo")  # half a head; the others say nothing
        assert fetch(server.port, "/app/echo").status == 503  # every slot is held
        replies = [_reply_to(sock) for sock in held]  # each ends at the deadline, not the test's
        for sock in held:
            sock.close()
        after = fetch(server.port, "/app/echo")
    assert all(reply.startswith(b"HTTP/1.1 408 ") for reply in replies), replies[:2]
    assert after.status == 200
