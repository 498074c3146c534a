"""The SSRF table against the egress layer itself: table-driven DNS, every dial recorded and sent
to a loopback server. Each refusal names its rule; each control must really get a response."""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest
from netkit import RecordingConnector, TableResolver, http_server
from ssrf_cases import CASES, DNS, OK, Case

from runner.egress import Bounds, Egress, EgressError, Grant, Request, Seam


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadingHTTPServer]:
    with http_server() as running:
        yield running


def _run(case: Case, server: ThreadingHTTPServer) -> tuple[str, Egress, RecordingConnector]:
    connector = RecordingConnector(server.server_address[1])
    seam = Seam(resolver=TableResolver(dict(DNS)), connector=connector)
    egress = Egress(Grant.from_plan(case.allow, case.block), seam=seam)
    request = Request(url=case.url, method=case.method, redirects=case.redirects, timeout_s=10)
    try:
        response = egress.request(request)
    except EgressError as exc:
        return exc.rule, egress, connector
    assert response.status == _status(case), response
    return OK, egress, connector


def _status(case: Case) -> int:
    """A control gets 200, or the redirect itself when it does not ask to follow it."""
    return 302 if "/redirect?" in case.url and case.redirects == 0 else 200


def test_the_table_is_big_and_has_controls() -> None:
    assert len(CASES) >= 60
    assert len({case.id for case in CASES}) == len(CASES)
    assert sum(case.expect == OK for case in CASES) >= 8


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_ssrf_case(case: Case, server: ThreadingHTTPServer) -> None:
    verdict, egress, connector = _run(case, server)
    assert verdict == case.expect
    # every dial went to an address that was checked and recorded as pinned, never elsewhere
    pinned = [(hop["pinned"], hop["verdict"]) for hop in egress.hops if hop["pinned"] is not None]
    assert [address for address, _ in connector.dials] == [address for address, _ in pinned if _ != "denied"]
    last = egress.hops[-1]
    if case.expect == OK:
        assert last["verdict"] == "allowed" and last["status"] == _status(case)
    else:
        assert last["verdict"] in ("denied", "failed") and last["rule"] == case.expect


def test_rebinding_cannot_switch_the_pinned_address(server: ThreadingHTTPServer) -> None:
    # The name answers a public address first and loopback afterwards. Within the job's DNS cache
    # the checked first answer is reused: one lookup, every dial to that address.
    connector = RecordingConnector(server.server_address[1])
    resolver = TableResolver({"rebind.example.org": [["93.184.216.42"], ["127.0.0.1"]]})
    egress = Egress(Grant.from_plan(["http://*.example.org"], ["private"]), seam=Seam(resolver, connector))
    for _ in range(3):
        egress.request(Request(url="http://rebind.example.org/ok"))
    assert connector.dials == [("93.184.216.42", 80)] * 3
    assert resolver.asked == ["rebind.example.org"]
    assert [hop["pinned"] for hop in egress.hops] == ["93.184.216.42"] * 3


@pytest.mark.parametrize("cache_s", [0, 0.05])
def test_rebinding_after_the_cache_is_judged_anew(server: ThreadingHTTPServer, cache_s: float) -> None:
    # Without the cache, or once it expires, each hop looks up again, and the dial goes to the
    # address that lookup returned, after it was judged: the loopback answer is refused.
    connector = RecordingConnector(server.server_address[1])
    resolver = TableResolver({"rebind.example.org": [["93.184.216.42"], ["127.0.0.1"]]})
    egress = Egress(
        Grant.from_plan(["http://*.example.org"], ["private"]),
        seam=Seam(resolver, connector),
        bounds=Bounds(dns_cache_s=cache_s),
    )
    egress.request(Request(url="http://rebind.example.org/ok"))
    time.sleep(cache_s * 4)  # past the cache's expiry (a lower bound on time, never an upper one)
    with pytest.raises(EgressError) as caught:
        egress.request(Request(url="http://rebind.example.org/ok"))
    assert caught.value.rule == "net.blocked"
    assert resolver.asked == ["rebind.example.org"] * 2
    assert connector.dials == [("93.184.216.42", 80)]


def test_a_refused_answer_stays_refused_from_the_cache(server: ThreadingHTTPServer) -> None:
    # A name with one blocked answer among its answers is refused on every hop, cached or not.
    connector = RecordingConnector(server.server_address[1])
    resolver = TableResolver({"mixed.example.org": ["93.184.216.41", "10.0.0.6"]})
    egress = Egress(Grant.from_plan(["http://*.example.org"], ["private"]), seam=Seam(resolver, connector))
    for _ in range(2):
        with pytest.raises(EgressError) as caught:
            egress.request(Request(url="http://mixed.example.org/ok"))
        assert caught.value.rule == "net.blocked"
    assert connector.dials == []
    assert resolver.asked == ["mixed.example.org"]


def test_fail_closed_records_every_answer(server: ThreadingHTTPServer) -> None:
    connector = RecordingConnector(server.server_address[1])
    egress = Egress(
        Grant.from_plan(["http://*.example.org"], ["private"]), seam=Seam(TableResolver(dict(DNS)), connector)
    )
    with pytest.raises(EgressError):
        egress.request(Request(url="http://mixed.example.org/ok"))
    (hop,) = egress.hops
    assert hop["addresses"] == ["93.184.216.41", "10.0.0.6"]
    assert hop["pinned"] is None and hop["rule"] == "net.blocked"
    assert connector.dials == []


def test_one_job_judges_each_method_and_path_anew(server: ThreadingHTTPServer) -> None:
    # The grant's answer per origin (which entries match the host) is kept for the job; the method
    # and path are judged on every request, so an allowed request never lets a later one through,
    # nor does a refusal stick to a later allowed one, on the same origin or another.
    connector = RecordingConnector(server.server_address[1])
    allow = [
        {"host": "http://api.example.org", "methods": ["GET"], "paths": ["/ok"]},
        {"host": "http://example.org", "methods": ["POST"]},
    ]
    egress = Egress(Grant.from_plan(allow, ["private"]), seam=Seam(TableResolver(dict(DNS)), connector))
    asked = [
        ("GET", "http://api.example.org/ok", OK),
        ("GET", "http://api.example.org/okay/../secret", "url.path"),
        ("GET", "http://api.example.org/admin", "net.path"),
        ("POST", "http://api.example.org/ok", "net.method"),
        ("GET", "http://api.example.org/ok?again", OK),
        ("GET", "http://example.org/ok", "net.method"),
        ("POST", "http://example.org/echo", OK),
        ("POST", "http://api.example.org/echo", "net.method"),
        ("GET", "http://other.example.net/ok", "net.not-allowed"),
        ("GET", "http://api.example.org/ok", OK),
    ]
    for method, url, expect in asked:
        try:
            egress.request(Request(url=url, method=method))
            verdict = OK
        except EgressError as exc:
            verdict = exc.rule
        assert verdict == expect, (method, url)
    assert [address for address, _ in connector.dials] == ["93.184.216.35"] * 2 + ["93.184.216.34"] + [
        "93.184.216.35"
    ]
