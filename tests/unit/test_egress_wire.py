"""Reading responses with llhttp (runner/egress/wire.py): what a hostile server can send, byte for
byte, over a real socket pair, and through a whole request on loopback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from netkit import LOOPBACK, raw_server

from runner.egress import Egress, EgressError, Grant, Request
from runner.egress.wire import HEAD_MAX, HEADERS_MAX, WireError, read_response

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = b"Transfer-Encoding: chunked\r\n\r\n"  # the last header line of a chunked response


@contextmanager
def _peer(raw: bytes, *, close: bool = True, piece: int = 0) -> Iterator[socket.socket]:
    """The client's end of a socket pair whose other end sends ``raw`` (``piece`` bytes at a
    time when set) and then closes, unless ``close`` is False."""
    client, server = socket.socketpair()
    client.settimeout(10)  # a reader that waits for bytes that never come fails instead of hanging

    def send() -> None:
        step = piece or len(raw) or 1
        for at in range(0, len(raw), step):
            server.sendall(raw[at : at + step])
        if close:
            server.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        yield client
    finally:
        sender.join(timeout=10)
        client.close()
        server.close()


def _read(
    raw: bytes, *, head: bool = False, cap: int = 1 << 20, **peer: int
) -> tuple[int, dict[str, str], bytes]:
    with _peer(raw, **peer) as client:
        status, headers, body = read_response(client, head=head, cap=cap)
    return status, dict(headers), body


def test_a_plain_response() -> None:
    assert _read(OK) == (200, {"Content-Length": "5"}, b"hello")


def test_a_response_sent_one_byte_at_a_time_reads_the_same() -> None:
    raw = b"HTTP/1.1 200 OK\r\nX-Long-Name: a long value\r\n" + CHUNKED + b"5\r\nhello\r\n0\r\n\r\n"
    headers = {"X-Long-Name": "a long value", "Transfer-Encoding": "chunked"}
    assert _read(raw, piece=1) == (200, headers, b"hello")


def test_chunked_trailers_are_dropped_not_read_as_headers() -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nLocation: http://10.0.0.1/\r\n\r\n"
    status, headers, body = _read(raw)
    assert (status, body) == (200, b"hello") and "Location" not in headers


def test_interim_responses_are_skipped() -> None:
    raw = b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n" + OK
    assert _read(raw) == (200, {"Content-Length": "5"}, b"hello")


@pytest.mark.parametrize("status", [204, 304])
def test_statuses_without_a_body(status: int) -> None:
    raw = b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\n" % status
    assert _read(raw, close=False)[::2] == (status, b"")


def test_a_head_response_ends_with_its_head_whatever_it_declares() -> None:
    # the server keeps the connection open: the reader must not wait for the declared 5 bytes
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    assert _read(raw, head=True, close=False) == (200, {"Content-Length": "5"}, b"")
    # and a declared size over the cap is no refusal when no body is read
    assert _read(raw, head=True, cap=1)[0] == 200


def test_an_unframed_body_ends_when_the_server_closes() -> None:
    assert _read(b"HTTP/1.1 200 OK\r\n\r\nhello world")[2] == b"hello world"
    assert _read(b"HTTP/1.0 200 OK\r\n\r\nold")[2] == b"old"


def test_only_the_first_response_is_read() -> None:
    # a second response after the first (or junk after Connection: close) is never parsed
    second = b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n"
    assert _read(OK + second) == (200, {"Content-Length": "5"}, b"hello")
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhelloJUNK"
    assert _read(raw)[2] == b"hello"


def test_header_bytes_reach_the_guest_as_sent() -> None:
    raw = b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 0\r\n\r\n"
    assert _read(raw)[1]["X-Name"] == "caf\xe9"


HOSTILE = {
    # framing that two parsers could read differently (request smuggling's response side)
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n" + CHUNKED + b"5\r\nhello\r\n0\r\n\r\n",
    "two-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "two-equal-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "negative-cl": b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello",
    "signed-cl": b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    "empty-cl": b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\nhello",
    "chunk-size-overflow": b"HTTP/1.1 200 OK\r\n" + CHUNKED + b"fffffffffffffffffff\r\nx\r\n0\r\n\r\n",
    # line endings and header syntax
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
    "folded-header": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 5\r\n\r\nhello",
    "cr-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\rSet-Cookie: x\r\nContent-Length: 5\r\n\r\nhello",
    "nul-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 5\r\n\r\nhello",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
    # not HTTP/1.x
    "http-0.9": b"hello",
    "bad-status": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    "four-digit-status": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "switching-protocols": b"HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    # cut short
    "empty": b"",
    "head-cut": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
    "body-cut": b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhello",
    "chunked-cut": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    # too big a head
    "huge-head": b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * HEAD_MAX + b"\r\n\r\n",
    "many-headers": b"HTTP/1.1 200 OK\r\n" + b"X-A: a\r\n" * (HEADERS_MAX + 1) + b"\r\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_malformed_response_is_refused(name: str) -> None:
    with pytest.raises(WireError) as caught:
        _read(HOSTILE[name])
    assert caught.value.kind == "protocol"


def test_a_huge_head_is_refused_before_it_ends() -> None:
    # a head that never ends: refused once it passes the cap, not read forever
    raw = b"HTTP/1.1 200 OK\r\n" + b"X-A: a\r\n" * (HEAD_MAX // 4)
    with pytest.raises(WireError) as caught:
        _read(raw, close=False)
    assert caught.value.kind == "protocol"


def test_endless_interim_responses_are_refused() -> None:
    # each interim head is small, but together they are one head that never ends
    raw = b"HTTP/1.1 100 Continue\r\n\r\n" * (HEAD_MAX // 16)
    with pytest.raises(WireError) as caught:
        _read(raw, close=False)
    assert caught.value.kind == "protocol"


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world",  # declared
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nhello world",  # unframed
    ],
)
def test_a_body_over_the_cap_is_refused(raw: bytes) -> None:
    with pytest.raises(WireError) as caught:
        _read(raw, cap=10)
    assert caught.value.kind == "too-large"
    assert _read(raw, cap=11)[2] == b"hello world"


def test_a_hostile_answer_fails_the_request_as_a_protocol_error() -> None:
    """Through a whole request: the hop is recorded as failed with rule net.protocol."""
    egress = Egress(Grant.from_plan([f"http://{LOOPBACK}:*"], ()))
    with raw_server(HOSTILE["cl-and-te"]) as port, pytest.raises(EgressError) as caught:
        egress.request(Request(url=f"http://{LOOPBACK}:{port}/"))
    assert (caught.value.kind, caught.value.rule) == ("protocol", "net.protocol")
    assert "Content-Length" in caught.value.message
    assert egress.hops[-1]["verdict"] == "failed" and egress.hops[-1]["rule"] == "net.protocol"


def test_a_body_of_one_byte_chunks_is_held_once_not_as_a_list_of_chunks() -> None:
    # a hostile server split its body into 1-byte chunks: the reader kept a list of millions of
    # bytes objects, about 85 times the body (a 16 MiB cap let a server make the host hold ~1.4 GB)
    import tracemalloc

    count = 200_000
    raw = b"HTTP/1.1 200 OK\r\n" + CHUNKED + b"1\r\nx\r\n" * count + b"0\r\n\r\n"
    with _peer(raw) as client:
        tracemalloc.start()
        try:
            status, _, body = read_response(client, head=False, cap=1 << 20)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert (status, body) == (200, b"x" * count)
    assert peak < 8 * count, f"{peak} bytes traced for a {count}-byte body"
