"""One job's egress: every HTTP request a guest makes, checked, pinned, bounded and recorded.

Per hop (the first request and each followed redirect), as a checklist:

1. parse the URL strictly (:mod:`runner.egress.urls`);
2. the job's grant must admit scheme, host, port, method and path (:meth:`Grant.admit`);
3. resolve the name through the seam's resolver (bounded by the deadline, even if DNS hangs) and
   refuse the name when **any** answer is blocked (fail closed: a name that also points inside
   the network is refused, whichever answer would have been used);
4. dial only the checked address (pinned: a second lookup cannot switch it), TLS with SNI and
   certificate checks for the URL's own name, no proxy from the environment;
5. send the guest's headers (credentials dropped once a redirect leaves the first origin) and the
   job's secrets for exactly their origin; read the response under the body cap while the
   watchdog ends the request at the earlier of its timeout and the job's deadline;
6. record the hop (one dict, the ``net.request`` audit record) whatever happened.

Redirects are followed only when the request asks (``redirects`` 1..5), each hop checked anew.
"""

from __future__ import annotations

import functools
import hashlib
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any
from urllib.parse import urljoin

from runner.egress.rules import METHODS, AllowEntry, Denied, Grant
from runner.egress.transport import WATCHDOG, LookupFailed, Seam, resolve_within
from runner.egress.urls import Url, UrlError, parse_url
from runner.egress.wire import WireError, read_response

__all__ = ["Bounds", "Secret", "Request", "Response", "EgressError", "Egress"]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VALUE = re.compile(r"[\t\x20-\x7e]*")
# Headers the host owns: framing, hop-by-hop, proxies, and encodings (the body reaches the guest as
# sent, so a secret echoed back can be found and redacted).
_HOST_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "accept-encoding",
    }
)
_CREDENTIALS = frozenset({"authorization", "cookie", "proxy-authorization"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_BACKSTOP_S = 1.0  # the kernel's socket timeouts fire this long after the watchdog's deadline
_Answer = tuple[str, IPv4Address | IPv6Address]  # an address and its text, as recorded and dialled
_RECORD_URL_MAX = 2048  # a refused URL is recorded before it is parsed (and length-checked)


@dataclass(frozen=True, slots=True)
class Bounds:
    """Per-job bounds of the egress layer (the policy's ``network.limits`` may lower them)."""

    timeout_s: float = 30.0
    max_body: int = 16 << 20
    max_requests: int = 64
    max_handles: int = 8
    max_redirects: int = 5
    #: How long a name's checked answers are reused within the job (0: look up on every hop).
    #: Sound because the dial goes to a checked answer either way; a rebinding server gains
    #: nothing from a cached answer, it only loses its second chance to answer differently.
    dns_cache_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Secret:
    """A header the host adds on requests to exactly ``origin``; the guest never sees ``value``."""

    name: str
    origin: tuple[str, str, int]
    header: str
    value: str | None = field(repr=False)  # None: the runner's environment did not have it
    raw: str | None = field(default=None, repr=False)

    @classmethod
    def from_plan(cls, entry: Mapping[str, Any], environ: Mapping[str, str]) -> Secret:
        """From the plan's ``{origin, header, env, format}``; the value is read now, at run time."""
        origin = parse_url(entry["origin"]).origin
        raw = environ.get(entry["env"])
        value = None if raw is None else entry.get("format", "{}").replace("{}", raw)
        return cls(name=entry["env"], origin=origin, header=entry["header"], value=value, raw=raw)

    def redactions(self) -> tuple[bytes, ...]:
        """The byte strings to scrub from responses: the header value and the bare secret."""
        return tuple({v.encode("latin-1", "replace") for v in (self.value, self.raw) if v})


@dataclass(frozen=True, slots=True)
class Request:
    """What the guest asked for; ``timeout_s`` None is the job's default."""

    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    redirects: int = 0
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class EgressError(Exception):
    """A request that did not get a response. ``kind`` is the ABI's error class (``invalid``,
    ``denied``, ``dns``, ``connect``, ``tls``, ``timeout``, ``too-large``, ``limit``,
    ``protocol``); ``rule`` the stable id recorded in the audit log."""

    def __init__(self, kind: str, rule: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.rule = rule
        self.message = message


@functools.lru_cache(maxsize=8)
def _tls_context(extra_ca_pem: bytes) -> ssl.SSLContext:
    """The system's trust store plus ``extra_ca_pem``; hostname checks on, TLS 1.2 at least."""
    context = ssl.create_default_context()
    if extra_ca_pem:
        context.load_verify_locations(cadata=extra_ca_pem.decode("ascii"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


class Egress:
    """The network of one job. Not thread-safe: a job's guest makes one host call at a time."""

    def __init__(
        self,
        grant: Grant,
        *,
        seam: Seam | None = None,
        secrets: Sequence[Secret] = (),
        bounds: Bounds | None = None,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.grant = grant
        self.seam = seam or Seam()
        self.secrets = tuple(secrets)
        self.bounds = bounds or Bounds()
        self.deadline = deadline  # the job's, on the time.monotonic clock
        self.cancel = cancel  # the job's: set, it ends a request in flight (rule net.cancelled)
        self.hops: list[dict[str, Any]] = []
        self._capped = False  # the hop that hit max_requests was recorded: record no more
        # longest first, so a formatted value is replaced before the bare secret inside it
        self._names = {value: s.name for s in self.secrets for value in s.redactions()}
        self._redact = tuple(sorted(self._names, key=len, reverse=True))
        # Per-job memos of pure answers (the grant never changes within a job). Each holds at most
        # one entry per hop, and hops are capped by max_requests, so none grows without bound.
        self._urls: dict[str, Url] = {}
        self._entries: dict[tuple[str, str, int], tuple[AllowEntry, ...]] = {}  # by origin
        self._verdicts: dict[str, tuple[str, str] | None] = {}
        self._lookups: dict[tuple[str, int], tuple[float, list[_Answer]]] = {}

    # -- the request, hop by hop

    def request(self, request: Request) -> Response:
        """Perform ``request``; raise :class:`EgressError` when no response can be returned."""
        method = request.method.upper()
        if method not in METHODS:
            raise self._refuse(request.url, method, "invalid", "net.method", f"method {method!r}")
        if not 0 <= request.redirects <= self.bounds.max_redirects:
            raise self._refuse(
                request.url,
                method,
                "invalid",
                "net.redirects",
                f"redirects must be 0..{self.bounds.max_redirects}",
            )
        headers = _check_headers(request, method, self._refuse)
        started = time.monotonic()
        timeout = (
            self.bounds.timeout_s
            if request.timeout_s is None
            else min(request.timeout_s, self.bounds.timeout_s)
        )
        deadline = started + timeout if self.deadline is None else min(started + timeout, self.deadline)
        try:
            url = self._parse(request.url)
        except UrlError as exc:
            raise self._refuse(request.url, method, "invalid", exc.code, exc.message) from None
        first_origin = url.origin
        body = request.body
        for hop in range(request.redirects + 1):
            if url.origin != first_origin:
                headers = tuple((k, v) for k, v in headers if k.lower() not in _CREDENTIALS)
            response = self._hop(url, method, headers, body, deadline)
            if response.status not in _REDIRECTS or hop == request.redirects:
                return response
            location = dict((k.lower(), v) for k, v in response.headers).get("location")
            if location is None:
                return response
            try:
                url = self._parse(urljoin(url.text, location.strip()))
            except UrlError as exc:
                raise self._refuse(location, method, "denied", exc.code, f"redirect: {exc.message}") from None
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method = "GET" if method != "HEAD" else method
                body = b""
                headers = tuple((k, v) for k, v in headers if not k.lower().startswith("content-"))
        raise AssertionError("unreachable: the last hop returns")

    def _refuse(self, url: str, method: str, kind: str, rule: str, message: str) -> EgressError:
        """Record a request refused before any hop (bad URL, method, header) and return its error."""
        self._log(_record(url, method, verdict="denied", rule=rule, error=message))
        return EgressError(kind, rule, message)

    def _log(self, record: dict[str, Any]) -> None:
        """Keep a hop's record; past ``max_requests`` (refused ones count) refuse the hop, and
        record that once only, so a guest looping on bad requests cannot flood the audit log."""
        if len(self.hops) >= self.bounds.max_requests:
            message = f"more than {self.bounds.max_requests} requests"
            if not self._capped:
                self._capped = True
                self.hops.append({**record, "verdict": "denied", "rule": "net.requests", "error": message})
            raise EgressError("limit", "net.requests", message)
        self.hops.append(record)

    def _hop(
        self, url: Url, method: str, headers: tuple[tuple[str, str], ...], body: bytes, deadline: float
    ) -> Response:
        record = _record(url.text, method)
        self._log(record)
        try:
            # (2) the grant
            self._admit(url, method)
            # (3) resolve, and judge every answer
            answers = self._resolve(url, deadline)
            record["addresses"] = [text for text, _ in answers]
            for text, address in answers:
                self._judge(text, address)
            # (4)-(5) pinned dial, exchange
            pinned = answers[0][0]
            record["pinned"] = pinned
            sent = self._with_secrets(url, headers)
            record["secrets"] = [s.name for s in sent]
            response = self._exchange(url, pinned, method, headers, sent, body, deadline)
        except Denied as exc:
            record.update(verdict="denied", rule=exc.rule, error=exc.message)
            raise EgressError("denied", exc.rule, exc.message) from None
        except EgressError as exc:
            record.update(
                verdict="denied" if exc.kind == "denied" else "failed", rule=exc.rule, error=exc.message
            )
            raise
        record.update(
            verdict="allowed",
            status=response.status,
            bytes=len(response.body),
            body_sha256=hashlib.sha256(response.body).hexdigest(),
        )
        return response

    def _parse(self, text: str) -> Url:
        url = self._urls.get(text)
        if url is None:
            url = self._urls[text] = parse_url(text)
        return url

    def _admit(self, url: Url, method: str) -> None:
        origin = url.origin
        entries = self._entries.get(origin)
        if entries is None:
            entries = self._entries[origin] = self.grant.for_origin(url)
        self.grant.admit(url, method, entries)

    def _judge(self, text: str, address: IPv4Address | IPv6Address) -> None:
        _memoised(self._verdicts, text, lambda: self.grant.address_verdict(address))

    def _resolve(self, url: Url, deadline: float) -> list[_Answer]:
        """The name's addresses (each with its text), or the literal address itself."""
        if url.address is not None:
            return [(url.host, url.address)]
        cached = self._lookups.get((url.host, url.port))
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        addresses = self._look_up(url, deadline)
        if self.bounds.dns_cache_s > 0:
            self._lookups[(url.host, url.port)] = (time.monotonic() + self.bounds.dns_cache_s, addresses)
        return addresses

    def _look_up(self, url: Url, deadline: float) -> list[_Answer]:
        try:
            answers = resolve_within(
                self.seam.resolver, url.host, url.port, deadline - time.monotonic(), self.cancel
            )
        except LookupFailed as exc:
            if exc.timed_out:
                raise self._ended() from None
            raise EgressError("dns", "net.dns", str(exc)) from None
        addresses: list[_Answer] = []
        for text in answers:
            try:
                address = ip_address(text.partition("%")[0])
            except ValueError:
                raise EgressError(
                    "dns", "net.dns", f"the resolver answered {text!r}, not an address"
                ) from None
            addresses.append((str(address), address))
        return addresses

    def _with_secrets(self, url: Url, headers: tuple[tuple[str, str], ...]) -> list[Secret]:
        sent = [s for s in self.secrets if s.origin == url.origin]
        for secret in sent:
            if secret.value is None:
                raise EgressError(
                    "denied",
                    "net.secret-missing",
                    f"secret {secret.name} is not set in the runner's environment",
                )
            if not secret.value.isascii() or not _VALUE.fullmatch(secret.value):
                # a value with CR or LF would inject headers into the request
                raise EgressError(
                    "denied",
                    "net.secret-invalid",
                    f"secret {secret.name} has characters a header cannot carry",
                )
        return sent

    # -- one exchange on a pinned socket

    def _exchange(
        self,
        url: Url,
        address: str,
        method: str,
        headers: tuple[tuple[str, str], ...],
        secrets: list[Secret],
        body: bytes,
        deadline: float,
    ) -> Response:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._ended()
        try:
            sock = self.seam.connector.connect(address, url.port, remaining)
        except OSError as exc:
            raise EgressError(
                "connect", "net.connect", f"cannot connect to {address} port {url.port}: {exc}"
            ) from None
        holder = [sock]
        token = WATCHDOG.arm(
            deadline, lambda: socket.socket.shutdown(holder[0], socket.SHUT_RDWR), self.cancel
        )
        fired = False
        try:
            _blocking_with_backstop(sock, remaining)
            if url.scheme == "https":
                holder[0] = sock = self._tls(sock, url)
            sock.sendall(_head(url, method, headers, secrets, body) + body)
            status, received, data = read_response(sock, head=method == "HEAD", cap=self.bounds.max_body)
            result = Response(status=status, headers=received, body=data)
        except ssl.SSLCertVerificationError as exc:
            raise EgressError(
                "tls", "net.tls", f"certificate of {url.host} refused: {exc.verify_message}"
            ) from None
        except WireError as exc:
            if exc.kind == "too-large":
                raise EgressError("too-large", "net.body", exc.message) from None
            fired = WATCHDOG.disarm(token)  # a shutdown reads as the server closing early
            if fired:
                raise self._ended() from None
            raise EgressError("protocol", "net.protocol", exc.message) from None
        except (OSError, ValueError) as exc:
            fired = WATCHDOG.disarm(token)
            if fired:
                raise self._ended() from None
            kind = "tls" if isinstance(exc, ssl.SSLError) else "protocol"
            raise EgressError(kind, f"net.{kind}", f"{type(exc).__name__}: {exc}") from None
        finally:
            fired = WATCHDOG.disarm(token) or fired
            sock.close()
        if fired:
            raise self._ended()
        return self._redacted(result)

    def _ended(self) -> EgressError:
        """The error of a request cut off: by the job's cancellation, or by its deadline."""
        if self.cancel is not None and self.cancel.is_set():
            return EgressError("timeout", "net.cancelled", "the job was cancelled")
        return EgressError("timeout", "net.timeout", "the request's deadline passed")

    def _tls(self, sock: socket.socket, url: Url) -> socket.socket:
        context = _tls_context(self.seam.extra_ca_pem)
        try:
            return context.wrap_socket(sock, server_hostname=url.host)
        except BaseException:
            sock.close()
            raise

    def _redacted(self, response: Response) -> Response:
        """Replace every secret value a server echoed back with ``[secret NAME]``."""
        if not self._redact:
            return response
        body = response.body
        headers = list(response.headers)
        for value in self._redact:
            mark = f"[secret {self._names.get(value, 'value')}]"
            body = body.replace(value, mark.encode())
            headers = [(k, v.replace(value.decode("latin-1"), mark)) for k, v in headers]
        return Response(status=response.status, headers=tuple(headers), body=body)


def _blocking_with_backstop(sock: socket.socket, remaining: float) -> None:
    """Put the connected socket in blocking mode: the watchdog bounds the request by shutting the
    socket down, and Python's timeout mode would add a ``poll`` to every send and receive. The
    kernel's own send and receive timeouts stay as a backstop, a little after the watchdog's turn
    (so an ending is classified as the watchdog's ``net.timeout``)."""
    sock.settimeout(None)
    seconds = remaining + _BACKSTOP_S
    timeval = struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _head(
    url: Url, method: str, headers: tuple[tuple[str, str], ...], secrets: list[Secret], body: bytes
) -> bytes:
    """The request line and headers: names and values were checked (guest) or are ours."""
    replaced = {s.header.lower() for s in secrets}
    lines = [f"{method} {url.target} HTTP/1.1", f"Host: {url.authority}", "Accept-Encoding: identity"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in replaced]
    lines += [f"{s.header}: {s.value}" for s in secrets]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close\r\n\r\n")
    return "\r\n".join(lines).encode("latin-1")


def _memoised(table: dict[Any, tuple[str, str] | None], key: Any, check: Callable[[], None]) -> None:
    """Run a grant check (pure: the grant is fixed for the job) once per key; replay its refusal."""
    if key not in table:
        try:
            check()
            table[key] = None
        except Denied as exc:
            table[key] = (exc.rule, exc.message)
    refusal = table[key]
    if refusal is not None:
        raise Denied(*refusal)


def _check_headers(request: Request, method: str, refuse: Any) -> tuple[tuple[str, str], ...]:
    for name, value in request.headers:
        if not isinstance(name, str) or not isinstance(value, str) or not _TOKEN.fullmatch(name):
            raise refuse(request.url, method, "invalid", "net.header", f"header name {name!r} is not a token")
        if not _VALUE.fullmatch(value):
            raise refuse(request.url, method, "invalid", "net.header", f"header {name}: control characters")
        lower = name.lower()
        if lower in _HOST_HEADERS or lower.startswith("proxy-"):
            raise refuse(request.url, method, "invalid", "net.header", f"header {name} is set by the host")
    return request.headers


def _record(url: str, method: str, **fields: Any) -> dict[str, Any]:
    """The audit record of one hop (``net.request``)."""
    return {
        "url": url[:_RECORD_URL_MAX],
        "method": method,
        "addresses": [],
        "pinned": None,
        "verdict": None,
        "rule": None,
        "status": None,
        "bytes": 0,
        "body_sha256": None,
        "secrets": [],
        "error": None,
        **fields,
    }
