"""Host patterns: parsing, matching, sound coverage, and address blocks (with property tests)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from runner.hosts import BlockList, HostPatternError, covers, matches, parse_block_entry, parse_host_pattern

P = parse_host_pattern


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("https://*.example.org", "https://*.example.org"),
        ("HTTPS://API.Example.ORG", "https://api.example.org"),
        ("https://api.example.org:8443", "https://api.example.org:8443"),
        ("*://*:*", "*://*:*"),
        ("https://[::1]", "https://[::1]"),
        ("https://10.0.0.0/8", "https://10.0.0.0/8"),
        ("https://[2001:db8::]/32:443", "https://[2001:db8::]/32:443"),
        ("tcp://x.example:1..100", "tcp://x.example:1..100"),
        ("*://api.github.com", "*://api.github.com"),
        ("https://xn--bcher-kva.example", "https://xn--bcher-kva.example"),
    ],
)
def test_valid_patterns_normalise(text: str, normal: str) -> None:
    assert P(text).text == normal
    assert P(normal).text == normal


@pytest.mark.parametrize(
    "text",
    [
        "", " https://a.com", "a.com", "https://", "https://a.com/x", "https://a.com:443/x", "https://a@b.com",
        "https://a.com?x", "https://a.com#f", "https://0177.0.0.1", "https://2130706433", "https://*.",
        "https://**", "https://*foo.com", "https://a.*.com", "https://a.com:0", "https://a.com:65536",
        "https://a.com:1..", "https://a.com:5..3", "https://a.com:01", "https://[fe80::1%eth0]",
        "tcp://x.com", "https://a.com.", "https://[1.2.3.4]", "https://::1", "https://bücher.example",
        "https://-a.com", "https://a..com", "https://" + "a" * 64 + ".com", "ht tp://a.com", "1http://a.com",
        "https://10.0.0.1/8", "https://[::1",
    ],
)
def test_invalid_patterns_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(HostPatternError) as caught:
        P(text)
    assert str(caught.value)


SUFFIX = P("https://*.example.org")


@pytest.mark.parametrize(
    ("inner", "covered"),
    [
        ("https://api.example.org", True),
        ("https://api.example.org:443", True),
        ("https://*.a.example.org", True),
        ("https://*.example.org", True),
        ("https://example.org", False),
        ("https://example.org.evil.net", False),
        ("https://evilexample.org", False),
        ("https://api.example.org:8443", False),
        ("https://api.example.org:*", False),
        ("http://api.example.org", False),
        ("*://api.example.org", False),
        ("https://*", False),
        ("https://93.184.216.34", False),
    ],
)
def test_suffix_coverage(inner: str, covered: bool) -> None:
    assert covers(SUFFIX, P(inner)) is covered


@pytest.mark.parametrize(
    ("outer", "inner", "covered"),
    [
        ("*://*:*", "tcp://a.com:1..65535", True),
        ("*://*", "https://a.com", True),
        ("*://*", "https://a.com:8443", False),
        ("https://10.0.0.0/8", "https://10.1.2.3", True),
        ("https://10.0.0.0/8", "https://10.1.0.0/16", True),
        ("https://10.0.0.0/8", "https://11.0.0.1", False),
        ("https://10.0.0.0/8", "https://internal.example", False),
        ("https://[2001:db8::]/32", "https://[2001:db8::1]", True),
        ("https://0.0.0.0/0", "https://[::1]", False),
        ("tcp://a.com:1000..2000", "tcp://a.com:1500..1600", True),
        ("tcp://a.com:1000..2000", "tcp://a.com:1500..2600", False),
        ("https://a.com:443", "https://a.com", True),
        ("https://a.com", "https://a.com:443", True),
        ("*://a.com", "https://a.com", True),
        ("*://a.com", "*://a.com", True),
        ("https://a.com:*", "*://a.com", False),
    ],
)
def test_coverage_table(outer: str, inner: str, covered: bool) -> None:
    assert covers(P(outer), P(inner)) is covered


def test_matching() -> None:
    assert matches(SUFFIX, "https", "API.example.org")
    assert not matches(SUFFIX, "https", "example.org")
    assert not matches(SUFFIX, "https", "api.example.org", 8443)
    assert matches(P("https://10.0.0.0/8"), "https", "10.9.9.9")
    assert not matches(P("https://10.0.0.0/8"), "https", "ten.example")
    assert not matches(P("*://*"), "tcp", "a.com")  # no usual port for tcp: an explicit port is needed
    assert matches(P("*://*:*"), "tcp", "a.com", 9)


@pytest.mark.parametrize(
    ("address", "entry"),
    [
        ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:7f00:1", "loopback"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
        ("10.1.2.3", "private"), ("100.64.0.1", "private"), ("fd00::1", "private"), ("64:ff9b::a00:1", "private"),
        ("2002:c0a8:101::1", "private"), ("::10.0.0.1", "private"), ("0.0.0.0", "private"),
        ("8.8.8.8", None), ("2606:4700::1111", None), ("64:ff9b::808:808", None),
    ],
)
def test_block_list_sees_through_embedded_ipv4(address: str, entry: str | None) -> None:
    blocks = BlockList.from_entries(["loopback", "link-local", "private"])
    assert blocks.blocked_by(address) == entry


def test_block_entries() -> None:
    assert parse_block_entry("203.0.113.0/24") == (ipaddress.ip_network("203.0.113.0/24"),)
    for bad in ["203.0.113.1/24", "publik", "", "10.0.0.0/33"]:
        with pytest.raises(HostPatternError):
            parse_block_entry(bad)
    assert BlockList.from_entries(["203.0.113.0/24"]).blocked_by("203.0.113.9") == "203.0.113.0/24"


# -- properties -----------------------------------------------------------------------------------

labels = st.sampled_from(["a", "b", "api", "example", "org", "x1", "evil", "net"])
names = st.lists(labels, min_size=1, max_size=4).map(".".join)
schemes = st.sampled_from(["https", "http", "wss", "tcp", "*"])
ports = st.one_of(
    st.just(""), st.just(":*"), st.integers(1, 65535).map(lambda p: f":{p}"),
    st.tuples(st.integers(1, 9000), st.integers(0, 9000)).map(lambda t: f":{t[0]}..{t[0] + t[1]}"),
)
hosts = st.one_of(
    names, names.map(lambda n: "*." + n), st.just("*"),
    st.ip_addresses(v=4).map(str),
    st.tuples(st.ip_addresses(v=4), st.integers(8, 32)).map(
        lambda t: str(ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False))),
)


@st.composite
def patterns(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    text = f"{draw(schemes)}://{draw(hosts)}{draw(ports)}"
    try:
        return P(text)
    except HostPatternError:
        assume(False)


urls = st.tuples(st.sampled_from(["https", "http", "wss", "tcp"]),
                 st.one_of(names, st.ip_addresses(v=4).map(str)),
                 st.one_of(st.none(), st.sampled_from([80, 443, 8443, 22, 1, 65535]), st.integers(1, 65535)))


@settings(max_examples=400, deadline=None)
@given(patterns())
def test_every_pattern_covers_itself(pattern) -> None:  # type: ignore[no-untyped-def]
    assert covers(pattern, pattern)


@settings(max_examples=1500, deadline=None)
@given(patterns(), patterns(), urls)
def test_coverage_is_sound(outer, inner, url) -> None:  # type: ignore[no-untyped-def]
    if covers(outer, inner) and matches(inner, *url):
        assert matches(outer, *url)


@settings(max_examples=600, deadline=None)
@given(patterns(), patterns(), patterns())
def test_coverage_is_transitive(a, b, c) -> None:  # type: ignore[no-untyped-def]
    if covers(a, b) and covers(b, c):
        assert covers(a, c)


@settings(max_examples=500, deadline=None)
@given(names, names)
def test_suffix_match_requires_a_dot_boundary(suffix: str, host: str) -> None:
    if matches(P(f"https://*.{suffix}"), "https", host):
        assert host.endswith("." + suffix)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
def test_parse_raises_only_host_pattern_error(text: str) -> None:
    try:
        P(text)
    except HostPatternError:
        pass
