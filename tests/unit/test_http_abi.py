"""``sandrun:http`` host functions: codes never traps, masked and bounds-checked pointers, strict
request JSON; then the same functions linked into a real WAT guest through the sandbox."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import replace
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from conftest import make_job
from netkit import LOOPBACK, RecordingConnector, TableResolver, http_server

from runner.egress import Egress, Grant, Seam, abi
from runner.plan import Network
from runner.sandbox import Runtime

ERR = abi.ERRORS


class FakeMemory:
    """A guest memory as a bytearray (``abi.GuestMemory``)."""

    def __init__(self, size: int = 65536) -> None:
        self.data = bytearray(size)

    def size(self) -> int:
        return len(self.data)

    def read(self, start: int, stop: int) -> bytes:
        return bytes(self.data[start:stop])

    def write(self, data: bytes, start: int) -> None:
        self.data[start : start + len(data)] = data

    def put(self, offset: int, data: bytes) -> tuple[int, int]:
        self.write(data, offset)
        return offset, len(data)


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadingHTTPServer]:
    with http_server() as running:
        yield running


def _session(allow: tuple[str, ...] = (f"http://{LOOPBACK}:*",)) -> abi.Session:
    return abi.Session(lambda: Egress(Grant.from_plan(allow, ())))


def _request(session: abi.Session, memory: FakeMemory, payload: bytes) -> int:
    json_ptr, json_len = memory.put(100, payload)
    with abi.bound(session):
        return abi.request(memory, json_ptr, json_len, 0, 0, 8)


def _json(server: ThreadingHTTPServer, path: str = "/ok", **extra: object) -> bytes:
    return json.dumps({"url": f"http://{LOOPBACK}:{server.server_address[1]}{path}", **extra}).encode()


def test_a_simple_request_takes_three_calls(server: ThreadingHTTPServer) -> None:
    memory, session = FakeMemory(), _session()
    handle = _request(session, memory, _json(server))
    assert handle > 0
    status, headers_len, body_len = struct.unpack_from("<III", memory.data, 8)
    assert (status, body_len) == (200, len(b"hello from loopback\n")) and headers_len > 0
    with abi.bound(session):
        assert abi.read_body(memory, handle, 4096, 4096) == body_len
        assert abi.read_body(memory, handle, 4096, 4096) == 0
        assert abi.read_headers(memory, handle, 8192, 4096) == headers_len
        assert abi.close(memory, handle) == 0
        assert abi.close(memory, handle) == ERR["handle"]
    assert bytes(memory.data[4096 : 4096 + body_len]) == b"hello from loopback\n"
    assert b"Content-Length: 20\r\n" in bytes(memory.data[8192 : 8192 + headers_len])


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"not json", ERR["invalid"]),
        (b'{"url": "http://127.0.0.1/", "url": "http://10.0.0.1/"}', ERR["invalid"]),  # duplicate key
        (b'{"url": "http://127.0.0.1/", "proxy": "x"}', ERR["invalid"]),
        (b'{"url": 5}', ERR["invalid"]),
        (b'{"url": "http://127.0.0.1/", "redirects": true}', ERR["invalid"]),
        (b'{"url": "http://127.0.0.1/", "redirects": 9}', ERR["invalid"]),
        (b'{"url": "http://127.0.0.1/", "timeout_ms": 0}', ERR["invalid"]),
        (b'{"url": "http://127.0.0.1/", "headers": {"X": 1}}', ERR["invalid"]),
        (b"[" * 100000, ERR["invalid"]),  # longer than the JSON cap
        (b'{"url": "http://0177.0.0.1/"}', ERR["invalid"]),
        (b'{"url": "http://10.0.0.1/"}', ERR["denied"]),
    ],
)
def test_bad_requests_are_codes_with_a_reason(payload: bytes, code: int) -> None:
    memory, session = FakeMemory(1 << 18), _session()
    assert _request(session, memory, payload) == code
    with abi.bound(session):
        length = abi.last_error(memory, 60000, 200)
    assert length > 0 and bytes(memory.data[60000 : 60000 + min(length, 200)]).startswith(b"[")


@pytest.mark.parametrize(
    "args",
    [
        (-1, 10, 0, 0, 8),  # i32 -1 is 0xFFFFFFFF
        (65530, 10, 0, 0, 8),  # runs past the end
        (0, 10, 0, -5, 8),  # a huge body length
        (0, 10, 0, 0, 65534),  # out does not fit
        (0, -2147483648, 0, 0, 8),
    ],
)
def test_pointers_outside_memory_are_faults(args: tuple[int, ...]) -> None:
    memory, session = FakeMemory(), _session()
    with abi.bound(session):
        assert abi.request(memory, *args) in (ERR["fault"], ERR["invalid"], ERR["too-large"])
        assert abi.read_body(memory, 1, -1, 10) == ERR["handle"]
        assert abi.last_error(memory, 65535, 2) == ERR["fault"]


def test_read_into_a_buffer_past_the_end_is_a_fault(server: ThreadingHTTPServer) -> None:
    memory, session = FakeMemory(), _session()
    handle = _request(session, memory, _json(server))
    with abi.bound(session):
        assert abi.read_body(memory, handle, 65530, 100) == ERR["fault"]
        assert abi.read_body(memory, handle, 1000, 5) == 5  # a small buffer reads in pieces
        assert abi.read_body(memory, handle, 1005, 100) == 15
    assert bytes(memory.data[1000:1020]) == b"hello from loopback\n"


def test_without_a_grant_every_request_is_refused_and_recorded(server: ThreadingHTTPServer) -> None:
    memory = FakeMemory()
    session = abi.Session(lambda: Egress(Grant.none()))
    assert _request(session, memory, _json(server)) == ERR["denied"]
    (hop,) = session.hops
    assert hop["rule"] == "net.no-grant" and hop["verdict"] == "denied"


def test_no_bound_session_is_denied() -> None:
    assert abi.request(FakeMemory(), 0, 2, 0, 0, 8) == ERR["denied"]


def test_handles_are_capped(server: ThreadingHTTPServer) -> None:
    memory, session = FakeMemory(), _session()
    handles = [_request(session, memory, _json(server)) for _ in range(session.egress.bounds.max_handles)]
    assert all(h > 0 for h in handles)
    assert _request(session, memory, _json(server)) == ERR["limit"]


# -- through a real guest


def _guest_wat(payload: bytes) -> bytes:
    """request -> read_body -> close, print the body; exit with the error code's magnitude."""
    data = payload.decode().replace("\\", "\\\\").replace('"', '\\"')
    return wasmtime.wat2wasm(f"""
    (module
      (import "sandrun:http" "request" (func $request (param i32 i32 i32 i32 i32) (result i32)))
      (import "sandrun:http" "read_body" (func $read_body (param i32 i32 i32) (result i32)))
      (import "sandrun:http" "close" (func $close (param i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (data (i32.const 1024) "{data}")
      (func (export "_start") (local $h i32) (local $n i32)
        (local.set $h (call $request
          (i32.const 1024) (i32.const {len(payload)}) (i32.const 0) (i32.const 0) (i32.const 16)))
        (if (i32.lt_s (local.get $h) (i32.const 0))
          (then (call $exit (i32.sub (i32.const 0) (local.get $h)))))
        (local.set $n (call $read_body (local.get $h) (i32.const 4096) (i32.const 4096)))
        (drop (call $close (local.get $h)))
        (i32.store (i32.const 32) (i32.const 4096))
        (i32.store (i32.const 36) (local.get $n))
        (drop (call $fd_write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 40)))))
    """)


def test_a_wat_guest_gets_the_body_and_the_hop_is_in_the_outcome(
    tmp_path: Path, server: ThreadingHTTPServer, runtime: Any
) -> None:
    job = make_job(tmp_path, _guest_wat(_json(server)))
    granted = replace(job, network=Network(allow=(f"http://{LOOPBACK}:*",), block=()))
    outcome = runtime.run(granted, tmp_path)
    assert (outcome.exit_code, outcome.stdout) == (0, b"hello from loopback\n")
    (hop,) = outcome.net_hops
    assert hop["verdict"] == "allowed" and hop["status"] == 200


def test_a_wat_guest_without_a_grant_gets_a_code_not_a_trap(
    tmp_path: Path, server: ThreadingHTTPServer, runtime: Any
) -> None:
    outcome = runtime.run(make_job(tmp_path, _guest_wat(_json(server))), tmp_path)
    assert outcome.exit_code == -ERR["denied"] and outcome.trap is None
    assert [hop["rule"] for hop in outcome.net_hops] == ["net.no-grant"]


def test_a_wat_guest_with_a_wild_pointer_gets_a_code(tmp_path: Path, runtime: Any) -> None:
    wasm = wasmtime.wat2wasm("""
    (module
      (import "sandrun:http" "request" (func $request (param i32 i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (call $exit (i32.sub (i32.const 0)
          (call $request (i32.const -16) (i32.const 64) (i32.const 0) (i32.const 0) (i32.const 0))))))
    """)
    outcome = runtime.run(make_job(tmp_path, wasm), tmp_path)
    assert outcome.exit_code == -ERR["fault"]


def test_seam_reaches_the_sandbox(tmp_path: Path, server: ThreadingHTTPServer) -> None:
    payload = json.dumps({"url": "http://api.example.org/ok"}).encode()
    job = make_job(tmp_path, _guest_wat(payload))
    job = replace(job, network=Network(allow=("http://*.example.org",), block=("private",)))
    connector = RecordingConnector(server.server_address[1])
    seam = Seam(TableResolver({"api.example.org": ["93.184.216.35"]}), connector)
    with Runtime(cache_dir=tmp_path / "cache", egress_seam=seam) as runtime:
        outcome = runtime.run(job, tmp_path)
    assert outcome.stdout == b"hello from loopback\n"
    assert connector.dials == [("93.184.216.35", 80)]
