"""One HTTP/1.1 response read off a connected socket, parsed by llhttp (Node's parser, via httptools).

Why not ``http.client``: its head parser goes through the ``email`` package (about 35 µs a
response, most of a loopback request's own cost) and it is lenient where two readers could
disagree (bare LF, folded lines, duplicate ``Content-Length``). llhttp in its default strict mode
refuses those, and ``Content-Length`` together with ``Transfer-Encoding``. The limits
``http.client`` kept are kept here: a head of at most 64 KiB and 100 header lines.

Every connection carries one request (``Connection: close``), so reading stops at the first final
response: interim ``1xx`` responses are skipped, trailers and bytes after the response are dropped,
never read as another response. A body without ``Content-Length`` or chunked framing ends when the
server closes; a framed body cut short by the close is refused.
"""

from __future__ import annotations

import socket

import httptools

__all__ = ["HEAD_MAX", "HEADERS_MAX", "WireError", "read_response"]

#: The most bytes a response head may take, and the most header lines it may have.
HEAD_MAX = 64 << 10
HEADERS_MAX = 100
_RECV = 64 << 10


class WireError(Exception):
    """A response that cannot be returned: ``kind`` is ``protocol`` or ``too-large``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class _Reader:
    """llhttp's callbacks for one response; ``done`` once the first final response has ended."""

    __slots__ = (
        "parser",
        "cap",
        "skip_body",
        "status",
        "headers",
        "declared",
        "body",
        "size",
        "head_done",
        "done",
        "framed",
        "head_bytes",
        "lines",
    )

    def __init__(self, cap: int, skip_body: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.cap = cap
        self.skip_body = skip_body  # a response to HEAD has no body, whatever it declares
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.declared = 0  # Content-Length (llhttp refuses a second one, signs and non-digits)
        # one buffer, not a list of chunks: a body sent as 1-byte chunks made a list of millions
        # of bytes objects (~85 times the cap in memory)
        self.body = bytearray()
        self.size = 0
        self.head_done = False
        self.done = False
        self.framed = False  # Content-Length or chunked: a close before the end is a truncation
        self.head_bytes = 0  # of every head so far, interim ones included
        self.lines = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done or self.done:
            return  # trailers of a chunked body, or a later response: dropped
        self.headers.append((name, value))
        self.head_bytes += len(name) + len(value) + 4
        self.lines += 1
        lower = name.lower()
        if lower == b"content-length":
            self.declared, self.framed = int(value), True
        elif lower == b"transfer-encoding" and value.rpartition(b",")[2].strip().lower() == b"chunked":
            self.framed = True

    def on_headers_complete(self) -> None:
        if self.done:
            return
        status = self.parser.get_status_code()
        if status < 200:
            self.headers, self.declared, self.framed = [], 0, False  # interim: the final one follows
            return
        self.status, self.head_done = status, True
        if self.skip_body:
            self.done = True

    def on_body(self, chunk: bytes) -> None:
        if self.done:
            return
        self.size += len(chunk)
        if self.size <= self.cap:
            self.body += chunk

    def on_message_complete(self) -> None:
        if self.head_done:
            self.done = True


def read_response(
    sock: socket.socket, *, head: bool, cap: int
) -> tuple[int, tuple[tuple[str, str], ...], bytes]:
    """Status, headers (latin-1 text, as sent) and body of the response on ``sock``.

    ``head``: the request was ``HEAD`` (no body is read). ``cap``: the most body bytes accepted.
    Raises :class:`WireError`, or ``OSError`` from the socket (a watchdog's shutdown included).
    """
    reader = _Reader(cap, head)
    received = 0
    while not reader.done:
        data = sock.recv(_RECV)
        if not data:
            _end_of_stream(reader)
            break
        received += len(data)
        try:
            reader.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise WireError("protocol", "the server switched protocols") from None
        except httptools.HttpParserError as exc:
            if not reader.done:  # after the response ends, whatever follows is not read
                raise WireError("protocol", f"the response is not valid HTTP/1.1: {exc}") from None
        unended = not reader.head_done and received > HEAD_MAX  # a line that never ends, too
        if unended or reader.head_bytes > HEAD_MAX or reader.lines > HEADERS_MAX:
            raise WireError(
                "protocol", f"the response head exceeds {HEAD_MAX} bytes or {HEADERS_MAX} header lines"
            )
        if reader.declared > cap and not head:
            raise WireError("too-large", f"the response declares {reader.declared} bytes; the cap is {cap}")
        if reader.size > cap:
            raise WireError("too-large", f"the response body exceeds the cap of {cap} bytes")
    headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in reader.headers)
    return reader.status, headers, bytes(reader.body)


def _end_of_stream(reader: _Reader) -> None:
    """The server closed: the end of an unframed body, else a response cut short."""
    if not reader.head_done:
        raise WireError("protocol", "the server closed the connection before the response head ended")
    if reader.framed:
        raise WireError("protocol", "the server closed the connection before the response body ended")
    reader.done = True
