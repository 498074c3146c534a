"""The egress layer's bounds, TLS, secrets, credentials on redirects and hop records, all on
loopback (a real server, a real test CA)."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest
from netkit import LOOPBACK, RecordingConnector, TableResolver, http_server, make_test_ca

from runner.egress import Bounds, Egress, EgressError, Grant, Request, Seam, Secret, parse_url
from runner.egress.client import _BACKSTOP_S, _blocking_with_backstop
from runner.egress.transport import SystemConnector

LOCAL = (f"http://{LOOPBACK}:*",)
# Tests dial the loopback server itself, so loopback is allowed and not blocked here.
OPEN_BLOCKS = ("10.0.0.0/8",)
# A generous bound for "ends at its deadline": the deadlines below are 0.5 s.
ENDS_WITHIN_S = 10


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadingHTTPServer]:
    with http_server() as running:
        yield running


def _url(server: ThreadingHTTPServer, path: str) -> str:
    return f"http://{LOOPBACK}:{server.server_address[1]}{path}"


def _egress(**kwargs: object) -> Egress:
    grant = Grant.from_plan(kwargs.pop("allow", LOCAL), kwargs.pop("block", OPEN_BLOCKS))  # type: ignore[arg-type]
    return Egress(grant, **kwargs)  # type: ignore[arg-type]


def test_get_and_post_reach_the_server_and_are_recorded(server: ThreadingHTTPServer) -> None:
    egress = _egress()
    response = egress.request(Request(url=_url(server, "/ok")))
    assert (response.status, response.body) == (200, b"hello from loopback\n")
    posted = egress.request(Request(url=_url(server, "/echo"), method="post", body=b"payload"))
    assert posted.body.startswith(b"POST /echo") and posted.body.endswith(b"payload")
    first = egress.hops[0]
    assert first["verdict"] == "allowed" and first["pinned"] == LOOPBACK
    assert first["bytes"] == len(response.body)
    assert first["body_sha256"] == hashlib.sha256(response.body).hexdigest()


def test_a_trickling_server_is_cut_off_at_the_request_timeout(server: ThreadingHTTPServer) -> None:
    egress = _egress()
    started = time.monotonic()
    with pytest.raises(EgressError) as caught:
        egress.request(Request(url=_url(server, "/trickle"), timeout_s=0.5))
    assert caught.value.rule == "net.timeout"
    assert time.monotonic() - started < ENDS_WITHIN_S


def test_the_job_deadline_wins_over_a_longer_request_timeout(server: ThreadingHTTPServer) -> None:
    egress = _egress(deadline=time.monotonic() + 0.5)
    started = time.monotonic()
    with pytest.raises(EgressError) as caught:
        egress.request(Request(url=_url(server, "/trickle"), timeout_s=60))
    assert caught.value.rule == "net.timeout"
    assert time.monotonic() - started < ENDS_WITHIN_S


def test_a_hanging_lookup_ends_at_the_deadline(server: ThreadingHTTPServer) -> None:
    resolver = TableResolver({"slow.example.org": ["93.184.216.34"]}, hang=frozenset({"slow.example.org"}))
    seam = Seam(resolver, RecordingConnector(server.server_address[1]))
    egress = _egress(allow=("http://*.example.org",), seam=seam)
    started = time.monotonic()
    with pytest.raises(EgressError) as caught:
        egress.request(Request(url="http://slow.example.org/ok", timeout_s=0.5))
    assert caught.value.rule == "net.timeout"
    assert time.monotonic() - started < ENDS_WITHIN_S


def test_body_cap(server: ThreadingHTTPServer) -> None:
    egress = _egress(bounds=Bounds(max_body=1000))
    assert len(egress.request(Request(url=_url(server, "/big?n=1000"))).body) == 1000
    with pytest.raises(EgressError) as caught:
        egress.request(Request(url=_url(server, "/big?n=1001")))
    assert caught.value.rule == "net.body"


def test_requests_per_job_cap(server: ThreadingHTTPServer) -> None:
    egress = _egress(bounds=Bounds(max_requests=2))
    for _ in range(2):
        egress.request(Request(url=_url(server, "/ok")))
    with pytest.raises(EgressError) as caught:
        egress.request(Request(url=_url(server, "/ok")))
    assert caught.value.rule == "net.requests"


@pytest.mark.parametrize(
    "header",
    [
        ("Host", "evil"),
        ("Content-Length", "5"),
        ("Transfer-Encoding", "chunked"),
        ("Proxy-Authorization", "x"),
        ("X-Bad", "a\r\nInjected: 1"),
        ("Bad Name", "x"),
        ("Accept-Encoding", "gzip"),
    ],
)
def test_headers_the_host_owns_or_smuggling_are_refused(
    server: ThreadingHTTPServer, header: tuple[str, str]
) -> None:
    egress = _egress()
    with pytest.raises(EgressError) as caught:
        egress.request(Request(url=_url(server, "/echo"), headers=(header,)))
    assert caught.value.rule == "net.header"
    assert egress.hops[-1]["verdict"] == "denied"


def test_no_proxy_from_the_environment(server: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://10.9.9.9:3128")
    assert _egress().request(Request(url=_url(server, "/ok"))).status == 200


# -- credentials and secrets across redirects


def _named(
    server: ThreadingHTTPServer, secrets: tuple[Secret, ...] = ()
) -> tuple[Egress, RecordingConnector]:
    connector = RecordingConnector(server.server_address[1])
    resolver = TableResolver({"example.org": ["93.184.216.34"], "api.example.org": ["93.184.216.35"]})
    grant = Grant.from_plan(["http://example.org", "http://*.example.org"], ["private"])
    return Egress(grant, seam=Seam(resolver, connector), secrets=secrets), connector


def _secret(value: str = "s3cr3t-token") -> Secret:
    return Secret.from_plan(
        {"origin": "http://example.org", "header": "Authorization", "env": "TOKEN", "format": "Bearer {}"},
        {"TOKEN": value},
    )


def test_guest_credentials_are_dropped_on_a_cross_origin_redirect(server: ThreadingHTTPServer) -> None:
    egress, _ = _named(server)
    before = len(server.seen)  # type: ignore[attr-defined]
    response = egress.request(
        Request(
            url="http://example.org/redirect?to=http://api.example.org/echo",
            headers=(("Authorization", "Basic Z3Vlc3Q="), ("Cookie", "a=b"), ("X-Keep", "1")),
            redirects=1,
        )
    )
    assert response.status == 200
    first, second = server.seen[before:]  # type: ignore[attr-defined]
    assert first[2]["Authorization"] == "Basic Z3Vlc3Q=" and first[2]["Cookie"] == "a=b"
    assert "Authorization" not in second[2] and "Cookie" not in second[2]
    assert second[2]["X-Keep"] == "1"


def test_a_secret_goes_only_to_its_exact_origin_and_is_redacted_from_echoes(
    server: ThreadingHTTPServer,
) -> None:
    egress, _ = _named(server, (_secret(),))
    before = len(server.seen)  # type: ignore[attr-defined]
    echoed = egress.request(
        Request(url="http://example.org/echo", headers=(("Authorization", "guest-value"),))
    )
    (seen,) = server.seen[before:]  # type: ignore[attr-defined]
    assert seen[2]["Authorization"] == "Bearer s3cr3t-token"  # the host's value replaced the guest's
    assert b"s3cr3t-token" not in echoed.body and b"[secret TOKEN]" in echoed.body
    assert egress.hops[-1]["secrets"] == ["TOKEN"]
    # another origin: same host on another scheme, port or name gets nothing
    before = len(server.seen)  # type: ignore[attr-defined]
    egress.request(Request(url="http://api.example.org/echo"))
    egress.request(Request(url="http://example.org/redirect?to=http://api.example.org/echo", redirects=1))
    seen_after = server.seen[before:]  # type: ignore[attr-defined]
    assert [("Authorization" in s[2]) for s in seen_after] == [False, True, False]
    assert [hop["secrets"] for hop in egress.hops[-3:]] == [[], ["TOKEN"], []]
    assert all("s3cr3t" not in repr(hop) for hop in egress.hops)


def test_a_missing_secret_refuses_its_origin(server: ThreadingHTTPServer) -> None:
    missing = Secret.from_plan({"origin": "http://example.org", "header": "Authorization", "env": "NOPE"}, {})
    egress, connector = _named(server, (missing,))
    with pytest.raises(EgressError) as caught:
        egress.request(Request(url="http://example.org/ok"))
    assert caught.value.rule == "net.secret-missing" and connector.dials == []


def test_secret_repr_never_shows_the_value() -> None:
    assert "s3cr3t" not in repr(_secret())


# -- TLS


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThreadingHTTPServer, bytes]]:
    ca = make_test_ca(tmp_path_factory.mktemp("ca"), ["api.example.org"])
    with http_server(ca.server_context) as running:
        yield running, ca.ca_pem


def _tls_egress(server: ThreadingHTTPServer, ca_pem: bytes, name: str) -> Egress:
    resolver = TableResolver({name: [LOOPBACK]})
    seam = Seam(resolver, SystemConnector(), extra_ca_pem=ca_pem)
    return Egress(Grant.from_plan([f"https://{name}:*"], []), seam=seam)


def test_https_with_a_test_ca(tls_server: tuple[ThreadingHTTPServer, bytes]) -> None:
    server, ca_pem = tls_server
    egress = _tls_egress(server, ca_pem, "api.example.org")
    response = egress.request(Request(url=f"https://api.example.org:{server.server_address[1]}/ok"))
    assert response.body == b"hello from loopback\n"


def test_https_name_mismatch_is_refused(tls_server: tuple[ThreadingHTTPServer, bytes]) -> None:
    server, ca_pem = tls_server
    egress = _tls_egress(server, ca_pem, "other.example.org")
    with pytest.raises(EgressError) as caught:
        egress.request(Request(url=f"https://other.example.org:{server.server_address[1]}/ok"))
    assert caught.value.rule == "net.tls"


def test_https_without_the_test_ca_is_refused(tls_server: tuple[ThreadingHTTPServer, bytes]) -> None:
    server, _ = tls_server
    egress = _tls_egress(server, b"", "api.example.org")
    with pytest.raises(EgressError) as caught:
        egress.request(Request(url=f"https://api.example.org:{server.server_address[1]}/ok"))
    assert caught.value.rule == "net.tls"


def test_url_normal_form() -> None:
    url = parse_url("HTTP://Example.ORG.:8080/a/b?x=1#frag")
    assert (url.text, url.origin, url.path) == (
        "http://example.org:8080/a/b?x=1",
        ("http", "example.org", 8080),
        "/a/b",
    )
    assert parse_url("https://[2001:db8::1]/").authority == "[2001:db8::1]"


def test_a_secret_value_with_a_newline_is_never_sent(server: ThreadingHTTPServer) -> None:
    # the runner's environment is trusted, but a CR/LF in it must not become header injection
    injected = Secret.from_plan(
        {"origin": "http://example.org", "header": "Authorization", "env": "TOKEN"},
        {"TOKEN": "x\r\nX-Evil: 1"},
    )
    egress, connector = _named(server, (injected,))
    with pytest.raises(EgressError) as caught:
        egress.request(Request(url="http://example.org/ok"))
    assert caught.value.rule == "net.secret-invalid" and connector.dials == []


def test_the_watchdog_works_in_a_forked_child(server: ThreadingHTTPServer) -> None:
    _egress().request(Request(url=_url(server, "/ok")))  # the parent's watchdog thread is running
    pid = os.fork()
    if pid == 0:  # the child: a trickling request must still end at its timeout
        code = 1
        try:
            _egress().request(Request(url=_url(server, "/trickle"), timeout_s=0.3))
        except EgressError as exc:
            code = 0 if exc.rule == "net.timeout" else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_cancelling_the_job_ends_a_request_in_flight(server: ThreadingHTTPServer) -> None:
    cancel = threading.Event()
    egress = _egress(cancel=cancel)
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(EgressError) as caught:
        egress.request(Request(url=_url(server, "/trickle"), timeout_s=60))
    assert caught.value.rule == "net.cancelled"
    assert time.monotonic() - started < ENDS_WITHIN_S


def test_cancelling_the_job_ends_a_hanging_lookup(server: ThreadingHTTPServer) -> None:
    cancel = threading.Event()
    resolver = TableResolver({}, hang=frozenset({"slow.example.org"}))
    seam = Seam(resolver, RecordingConnector(server.server_address[1]))
    egress = _egress(allow=("http://*.example.org",), seam=seam, cancel=cancel)
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(EgressError) as caught:
        egress.request(Request(url="http://slow.example.org/ok", timeout_s=60))
    assert caught.value.rule == "net.cancelled"
    assert time.monotonic() - started < ENDS_WITHIN_S


def test_a_guest_looping_on_refused_requests_cannot_flood_the_log(server: ThreadingHTTPServer) -> None:
    egress = _egress(bounds=Bounds(max_requests=5))
    rules = []
    for _ in range(50):
        with pytest.raises(EgressError) as caught:
            egress.request(Request(url="http://0177.0.0.1/"))
        rules.append(caught.value.rule)
    assert rules[:5] == ["url.host"] * 5 and set(rules[5:]) == {"net.requests"}
    assert [hop["rule"] for hop in egress.hops] == ["url.host"] * 5 + ["net.requests"]


def test_a_connected_socket_blocks_with_the_kernel_timeouts_as_a_backstop() -> None:
    # The watchdog bounds a request; the kernel's send/receive timeouts back it up a little later.
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(5)
        _blocking_with_backstop(left, 2.5)
        assert left.gettimeout() is None
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            seconds, micros = struct.unpack("ll", left.getsockopt(socket.SOL_SOCKET, option, 16))
            assert seconds + micros / 1e6 == pytest.approx(2.5 + _BACKSTOP_S, abs=0.01)


def test_the_backstop_ends_a_read_the_watchdog_missed() -> None:
    left, right = socket.socketpair()
    ended: list[BaseException] = []

    def read() -> None:
        try:
            left.recv(1)
        except OSError as exc:  # EAGAIN once the backstop passes, instead of blocking for ever
            ended.append(exc)

    with left, right:
        _blocking_with_backstop(left, 0.0)  # as if the watchdog had not cut the request off
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout=10)  # the backstop is 1 s; 10 s is a generous bound on a busy machine
        assert not reader.is_alive() and len(ended) == 1
