"""Loopback-only network helpers for the egress tests: table-driven DNS, recorded dials, a local
HTTP(S) server, and a test CA made with ``cryptography``. Nothing here talks beyond 127.0.0.1.

The resolver and connector are plain picklable classes, so a seam built from them can reach jobs
that run in worker processes.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LOOPBACK = "127.0.0.1"


@dataclass
class TableResolver:
    """DNS from a table: ``{name: [answers...]}``. A list of lists answers in turn (rebinding)."""

    table: dict[str, list[str] | list[list[str]]]
    hang: frozenset[str] = frozenset()  # names whose lookup never returns (in time)
    asked: list[str] = field(default_factory=list)

    def resolve(self, host: str, port: int) -> Sequence[str]:
        self.asked.append(host)
        if host in self.hang:
            time.sleep(30)
        answers = self.table.get(host)
        if answers is None:
            raise OSError(f"NXDOMAIN {host}")
        if answers and isinstance(answers[0], list):
            turn = self.asked.count(host) - 1
            return list(answers[min(turn, len(answers) - 1)])
        return [str(a) for a in answers]


@dataclass
class RecordingConnector:
    """Records each dial and connects it to the loopback server instead (no real network)."""

    port: int
    dials: list[tuple[str, int]] = field(default_factory=list)

    def connect(self, address: str, port: int, timeout: float) -> socket.socket:
        self.dials.append((address, port))
        return socket.create_connection((LOOPBACK, self.port), timeout=timeout)


class _Handler(BaseHTTPRequestHandler):
    """``/ok`` hello; ``/echo`` the request's headers and body; ``/redirect?to=URL&code=302``;
    ``/trickle`` one byte every 0.2 s, forever; ``/big?n=BYTES``; anything else 404."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return None

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append((self.command, self.path, dict(self.headers.items()), body))  # type: ignore[attr-defined]
        if url.path.endswith("/ok") or url.path == "/":
            self._send(200, b"hello from loopback\n", {"Content-Type": "text/plain"})
        elif url.path == "/echo":
            lines = [f"{self.command} {self.path}"] + [f"{k}: {v}" for k, v in self.headers.items()]
            self._send(200, ("\n".join(lines) + "\n").encode() + body)
        elif url.path == "/redirect":
            self._send(int(query.get("code", "302")), b"", {"Location": query["to"]})
        elif url.path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        elif url.path == "/big":
            self._send(200, b"b" * int(query.get("n", "100000")))
        else:
            self._send(404, b"not found\n")

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        return None  # a client cut off mid-trickle is the point of some tests


@contextmanager
def http_server(tls: ssl.SSLContext | None = None) -> Iterator[ThreadingHTTPServer]:
    """A loopback HTTP (or HTTPS) server on a free port; ``server.seen`` lists the requests."""
    server = _QuietServer((LOOPBACK, 0), _Handler)
    server.daemon_threads = True
    server.seen = []  # type: ignore[attr-defined]
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def raw_server(reply: bytes) -> Iterator[int]:
    """A loopback server that answers every connection with ``reply``, byte for byte, once the
    request's head has arrived, then closes it: for responses no HTTP server library would send.
    Yields its port."""
    listener = socket.create_server((LOOPBACK, 0))

    def answer() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # the listener was closed
            with conn:
                head = b""
                while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
                    head += chunk
                conn.sendall(reply)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


@dataclass(frozen=True)
class TestCA:
    """A throwaway CA and one server certificate for ``names`` (DNS names and IP addresses)."""

    ca_pem: bytes
    server_context: ssl.SSLContext


def make_test_ca(tmp: Path, names: Sequence[str]) -> TestCA:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sandrun test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "server.pem", tmp / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return TestCA(ca_pem=ca.public_bytes(serialization.Encoding.PEM), server_context=context)
