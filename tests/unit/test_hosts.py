"""Host patterns: the grammar, matching, sound coverage, and address block lists."""

from __future__ import annotations

import ipaddress
import itertools
import pickle

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from runner.hosts import (
    BLOCK_WORDS,
    USUAL_PORTS,
    BlockList,
    HostPattern,
    HostPatternError,
    covers,
    matches,
    parse_block_entry,
    parse_host_pattern,
)


def p(text: str) -> HostPattern:
    return parse_host_pattern(text)


# --- parsing ---------------------------------------------------------------------------------------------

ACCEPTED = [
    # (input, normalised text)
    ("https://api.github.com", "https://api.github.com"),
    ("HTTPS://API.GitHub.COM", "https://api.github.com"),
    ("https://example.org.", "https://example.org"),
    ("https://example.org:443", "https://example.org"),
    ("https://example.org:80", "https://example.org:80"),
    ("http://example.org:80", "http://example.org"),
    ("*://example.org:443", "*://example.org:443"),
    ("*://example.org", "*://example.org"),
    ("*://*", "*://*"),
    ("*://*:*", "*://*:*"),
    ("https://*", "https://*"),
    ("https://*.example.org", "https://*.example.org"),
    ("https://*.Example.ORG.", "https://*.example.org"),
    ("https://*.com", "https://*.com"),
    ("https://example.org:8000..8999", "https://example.org:8000..8999"),
    ("https://example.org:8443..8444", "https://example.org:8443"),
    ("https://example.org:1..65535", "https://example.org:1..65535"),
    ("https://localhost", "https://localhost"),
    ("https://_dmarc.example.org", "https://_dmarc.example.org"),
    ("https://xn--bcher-kva.de", "https://xn--bcher-kva.de"),
    ("https://bücher.de", "https://xn--bcher-kva.de"),
    ("https://BÜCHER.de", "https://xn--bcher-kva.de"),
    ("https://exаmple.com", "https://xn--exmple-4nf.com"),  # Cyrillic 'а': the lookalike shows as xn--
    ("https://a1.example", "https://a1.example"),
    ("https://10.0.0.1", "https://10.0.0.1"),
    ("https://10.0.0.1/32", "https://10.0.0.1"),
    ("https://10.0.0.0/8", "https://10.0.0.0/8"),
    ("https://10.0.0.0/8:8443", "https://10.0.0.0/8:8443"),
    ("https://0.0.0.0/0", "https://0.0.0.0/0"),
    ("https://[::1]", "https://[::1]"),
    ("https://[2001:DB8:0::1]:8443", "https://[2001:db8::1]:8443"),
    ("https://[2001:db8::]/32", "https://[2001:db8::]/32"),
    ("https://[2001:db8::]/32:*", "https://[2001:db8::]/32:*"),
    ("https://[2001:db8::1]/128", "https://[2001:db8::1]"),
    ("redis://cache.internal", "redis://cache.internal"),
    ("redis://cache.internal:6379", "redis://cache.internal"),
    ("foo+bar.v2://h.example:9", "foo+bar.v2://h.example:9"),
    ("https://" + "a" * 63 + ".org", "https://" + "a" * 63 + ".org"),
    ("https://" + ".".join(["a" * 61] * 4), "https://" + ".".join(["a" * 61] * 4)),  # 247 characters
]


@pytest.mark.parametrize(("text", "normal"), ACCEPTED)
def test_accepted_patterns_normalise(text: str, normal: str) -> None:
    pattern = p(text)
    assert pattern.text == normal
    assert p(normal) == pattern  # the normal form is a fixed point


REJECTED = [
    # (input, code): each names why
    ("", "empty"),
    ("example.org", "scheme.missing"),
    ("https:/example.org", "scheme.missing"),
    ("//example.org", "scheme.missing"),
    ("://example.org", "scheme.invalid"),
    ("1http://example.org", "scheme.invalid"),
    ("ht_tp://example.org", "scheme.invalid"),
    ("**://example.org", "scheme.invalid"),
    ("https:// example.org", "character"),
    ("https://example.org\n", "character"),
    ("https://exa\tmple.org", "character"),
    ("https://a@b.com", "userinfo"),
    ("https://user:pw@b.com", "userinfo"),
    ("https://b.com/x", "path"),
    ("https://b.com/", "path"),
    ("https://b.com:443/x", "path"),
    ("https://b.com?q=1", "path"),
    ("https://b.com#frag", "path"),
    ("https://b.com/8", "path"),
    ("https://10.0.0.0/8/x", "path"),
    ("https://10.0.0.1/x", "path"),
    ("https://", "host.empty"),
    ("https://:443", "host.empty"),
    ("https://.", "host.empty"),
    ("https://example.org..", "host.label"),
    ("https://.example.org", "host.label"),
    ("https://a..example.org", "host.label"),
    ("https://-a.example.org", "host.label"),
    ("https://a-.example.org", "host.label"),
    ("https://a%2e.example.org", "host.label"),
    ("https://a!b.org", "host.label"),
    ("https://" + "a" * 64 + ".org", "host.label"),
    ("https://" + ".".join(["a" * 63] * 4), "host.length"),  # 255 characters
    ("https://*.", "host.wildcard"),
    ("https://*..", "host.wildcard"),
    ("https://**", "host.wildcard"),
    ("https://*foo.com", "host.wildcard"),
    ("https://foo*.com", "host.wildcard"),
    ("https://a.*.com", "host.wildcard"),
    ("https://*.*.com", "host.wildcard"),
    ("https://*.example.org/8", "path"),
    ("https://0177.0.0.1", "host.numeric"),  # octal 127.0.0.1
    ("https://0x7f.0.0.1", "host.numeric"),
    ("https://2130706433", "host.numeric"),  # decimal 127.0.0.1
    ("https://0x7f000001", "host.numeric"),
    ("https://127.1", "host.numeric"),
    ("https://127.0.0.01", "host.numeric"),
    ("https://1.2.3.4.5", "host.numeric"),
    ("https://example.123", "host.numeric"),
    ("https://example.0x", "host.numeric"),
    ("https://*.0.0.1", "host.numeric"),
    ("https://256.0.0.1", "host.ipv4"),
    ("https://10.0.0.1/24", "host.cidr"),
    ("https://10.0.0.0/33", "host.cidr"),
    ("https://10.0.0.0/08", "host.cidr"),
    ("https://[2001:db8::1]/32", "host.cidr"),
    ("https://[2001:db8::]/129", "host.cidr"),
    ("https://::1", "host.ipv6"),
    ("https://2001:db8::1", "host.ipv6"),
    ("https://2001:db8::/32", "host.ipv6"),
    ("https://[2001:db8::/32]", "host.ipv6"),
    ("https://[fe80::1%eth0]", "host.ipv6"),
    ("https://[fe80::1%25eth0]", "host.ipv6"),
    ("https://[::1", "host.ipv6"),
    ("https://[::1]x", "host.ipv6"),
    ("https://[10.0.0.1]", "host.ipv6"),
    ("https://[]", "host.ipv6"),
    ("https://[::ffff:127.0.0.1]", "host.ipv6"),
    ("https://straße.de", "host.idna"),  # IDNA 2003 maps ß to ss; IDNA 2008 does not
    ("https://ｅxample.com", "host.idna"),  # full-width e is mapped to e
    ("https://example。com", "host.idna"),  # ideographic full stop is a dot to some resolvers
    ("https://ex\u200bample.com", "character"),  # zero-width space: invisible, so refused outright
    ("https://a.com:", "port.invalid"),
    ("https://a.com:x", "port.invalid"),
    ("https://a.com:-1", "port.invalid"),
    ("https://a.com:+443", "port.invalid"),
    ("https://a.com:0443", "port.invalid"),
    ("https://a.com:1..", "port.invalid"),
    ("https://a.com:..5", "port.invalid"),
    ("https://a.com:1...5", "port.invalid"),
    ("https://a.com:**", "port.invalid"),
    ("https://a.com:1-5", "port.invalid"),
    ("https://a.com:0", "port.range"),
    ("https://a.com:65536", "port.range"),
    ("https://a.com:99999999999999999999", "port.range"),
    ("https://a.com:0..5", "port.range"),
    ("https://a.com:5..3", "port.range"),
    ("https://a.com:5..5", "port.range"),  # a..b excludes b: empty
    ("https://a.com:1..65536", "port.range"),
    ("https://a.com:80:90", "host.ipv6"),
    ("foo://a.com", "port.default"),
]


@pytest.mark.parametrize(("text", "code"), REJECTED)
def test_rejected_patterns_say_why(text: str, code: str) -> None:
    with pytest.raises(HostPatternError) as info:
        p(text)
    assert info.value.code == code
    assert info.value.text == text
    assert repr(text) in str(info.value)  # the message names the offending pattern


@pytest.mark.parametrize("value", [None, 443, ["https://a.com"], b"https://a.com"])
def test_non_string_patterns_are_errors_not_crashes(value: object) -> None:
    with pytest.raises(HostPatternError) as info:
        parse_host_pattern(value)  # type: ignore[arg-type]
    assert info.value.code == "type"


def test_error_is_a_value_error_and_pickles() -> None:
    with pytest.raises(ValueError) as info:
        p("https://a.com:0")
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.code, copy.text, str(copy)) == ("port.range", "https://a.com:0", str(info.value))


def test_hostpattern_refuses_inconsistent_construction() -> None:
    with pytest.raises(ValueError):
        HostPattern(text="https://x", scheme="https", kind="name", name="x", ports=None)
    with pytest.raises(ValueError):
        HostPattern(text="https://x", scheme="https", kind="network", name="x", ports=(443, 443))


def test_parsed_fields() -> None:
    pattern = p("https://*.example.org:8000..8999")
    assert (pattern.scheme, pattern.kind, pattern.name, pattern.network, pattern.ports) == (
        "https",
        "suffix",
        "example.org",
        None,
        (8000, 8998),  # 8000..8999 excludes 8999
    )
    assert p("*://h.example").ports is None  # any scheme on its usual port
    assert p("https://h.example").ports == (443, 443)
    assert p("https://[2001:db8::]/32").network == ipaddress.ip_network("2001:db8::/32")


# --- matching ---------------------------------------------------------------------------------------------

MATCHES = [
    # (pattern, scheme, host, port, expected)
    ("https://api.example.org", "https", "api.example.org", None, True),
    ("https://api.example.org", "https", "api.example.org", 443, True),
    ("https://api.example.org", "HTTPS", "API.Example.Org.", None, True),
    ("https://api.example.org", "https", "api.example.org", 8443, False),
    ("https://api.example.org", "http", "api.example.org", None, False),
    ("https://api.example.org", "http", "api.example.org", 443, False),
    ("https://api.example.org", "https", "api.example.org.evil.net", None, False),
    ("https://api.example.org", "https", "xapi.example.org", None, False),
    ("https://api.example.org", "https", "api.example.org..", None, False),
    ("https://*.example.org", "https", "api.example.org", None, True),
    ("https://*.example.org", "https", "a.b.c.example.org", None, True),
    ("https://*.example.org", "https", "example.org", None, False),
    ("https://*.example.org", "https", "example.org.evil.net", None, False),
    ("https://*.example.org", "https", "evilexample.org", None, False),
    ("https://*.example.org", "https", ".example.org", None, False),
    ("https://*.example.org", "https", "*.example.org", None, False),
    ("https://*.example.org", "https", "a..example.org", None, False),
    ("https://*.example.org", "https", "10.0.0.1", None, False),
    ("https://*.example.org:8443", "https", "api.example.org", None, False),
    ("https://*.example.org:8443", "https", "api.example.org", 8443, True),
    ("https://xn--bcher-kva.de", "https", "bücher.de", None, True),
    ("https://xn--bcher-kva.de", "https", "BÜCHER.DE", None, True),
    ("https://strasse.de", "https", "straße.de", None, False),  # never the IDNA 2003 mapping
    ("https://example.com", "https", "ｅxample.com", None, False),
    ("https://*.com", "https", "example。com", None, False),
    ("https://*", "https", "anything.example", None, True),
    ("https://*", "https", "10.1.2.3", None, True),
    ("https://*", "https", "[::1]", None, True),
    ("https://*", "https", "0177.0.0.1", None, False),  # not a name and not an address
    ("https://*", "https", "2130706433", None, False),
    ("https://*", "https", "[fe80::1%eth0]", None, False),
    ("https://*", "https", "", None, False),
    ("https://*", "https", "user@host", None, False),
    ("https://*", "https", "host:443", None, False),
    ("https://*", "https", "host/x", None, False),
    ("*://*", "https", "h.example", None, True),
    ("*://*", "redis", "h.example", None, True),
    ("*://*", "redis", "h.example", 6379, True),
    ("*://*", "redis", "h.example", 443, False),
    ("*://*", "foo", "h.example", None, False),  # no usual port to admit
    ("*://*", "foo", "h.example", 1234, False),
    ("*://*", "not a scheme", "h.example", 80, False),
    ("*://*:*", "foo", "h.example", 1234, True),
    ("*://*:*", "foo", "h.example", 0, False),
    ("*://*:*", "foo", "h.example", 65536, False),
    ("*://*:*", "foo", "h.example", True, False),
    ("*://h.example:443", "http", "h.example", 443, True),
    ("*://h.example:443", "http", "h.example", None, False),
    ("https://h.example:8000..8999", "https", "h.example", 8000, True),
    ("https://h.example:8000..8999", "https", "h.example", 8998, True),
    ("https://h.example:8000..8999", "https", "h.example", 8999, False),  # the end is excluded
    ("https://h.example:8000..8999", "https", "h.example", 9000, False),
    ("https://h.example:8000..8999", "https", "h.example", 7999, False),
    ("https://10.0.0.0/8", "https", "10.255.255.255", None, True),
    ("https://10.0.0.0/8", "https", "11.0.0.0", None, False),
    ("https://10.0.0.0/8", "https", "ten.example", None, False),  # names are the resolver's job
    ("https://10.0.0.0/8", "https", "::ffff:10.0.0.1", None, False),  # allow is literal: fail closed
    ("https://10.0.0.1", "https", "10.0.0.1", None, True),
    ("https://10.0.0.1", "https", "010.0.0.1", None, False),
    ("https://[2001:db8::]/32", "https", "2001:db8:ffff::1", None, True),
    ("https://[2001:db8::]/32", "https", "[2001:DB8::1]", None, True),
    ("https://[2001:db8::]/32", "https", "2001:db9::1", None, False),
    ("https://[2001:db8::]/32", "https", "[2001:db8::1%eth0]", None, False),
    ("https://[2001:db8::]/32", "https", "32.1.13.184", None, False),
    ("https://[::1]", "https", "::1", None, True),
    ("https://[::1]", "https", "127.0.0.1", None, False),
]


@pytest.mark.parametrize(("pattern", "scheme", "host", "port", "expected"), MATCHES)
def test_matches(pattern: str, scheme: str, host: str, port: int | None, expected: bool) -> None:
    assert matches(p(pattern), scheme, host, port) is expected


# --- coverage ---------------------------------------------------------------------------------------------

COVERS = [
    # (outer, inner, expected)
    ("https://*.example.org", "https://api.example.org", True),
    ("https://*.example.org", "https://a.b.example.org", True),
    ("https://*.example.org", "https://*.a.example.org", True),
    ("https://*.example.org", "https://*.example.org", True),
    ("https://*.example.org", "https://example.org", False),
    ("https://*.example.org", "https://example.org.evil.net", False),
    ("https://*.example.org", "https://evilexample.org", False),
    ("https://*.example.org", "https://*.evilexample.org", False),
    ("https://*.example.org", "https://*.org", False),
    ("https://*.example.org", "https://*", False),
    ("https://*.example.org", "https://api.example.org:8443", False),
    ("https://*.example.org", "http://api.example.org", False),
    ("https://*.example.org", "*://api.example.org", False),
    ("https://*.example.org", "https://10.0.0.1", False),
    ("https://*.example.org:*", "https://api.example.org:8443", True),
    ("https://*.example.org:*", "https://api.example.org", True),
    ("https://api.example.org", "https://API.EXAMPLE.ORG.", True),
    ("https://api.example.org", "https://*.api.example.org", False),
    ("https://api.example.org", "https://api.example.org:443", True),
    ("https://api.example.org", "https://api.example.org:443..445", False),
    ("https://api.example.org", "https://api.example.org:443..444", True),  # only 443
    ("*://*", "https://anything.example", True),
    ("*://*", "*://*", True),
    ("*://*", "redis://h.example", True),
    ("*://*", "https://h.example:8443", False),  # the usual port only
    ("*://*", "*://h.example:443", False),  # any scheme on 443 includes http on 443
    ("*://*", "foo://h.example:1", False),
    ("*://*", "*://*:*", False),
    ("*://*:*", "*://*", True),
    ("*://*:*", "foo://h.example:1", True),
    ("*://*:*", "*://*:*", True),
    ("*://*:1..1000", "*://*", False),  # redis's 6379 is outside
    ("*://*:1..10000", "*://*", True),
    ("*://*:1..10000", "*://h:8000..9000", True),
    ("https://*", "*://h.example", False),
    ("https://*", "https://10.0.0.0/8", True),
    ("https://*", "https://[::]/0", True),
    ("https://10.0.0.0/8", "https://10.1.0.0/16", True),
    ("https://10.0.0.0/8", "https://10.1.2.3", True),
    ("https://10.0.0.0/8", "https://10.0.0.0/8", True),
    ("https://10.0.0.0/8", "https://0.0.0.0/0", False),
    ("https://10.0.0.0/8", "https://11.0.0.0/8", False),
    ("https://10.0.0.0/8", "https://ten.example", False),  # a name may resolve anywhere
    ("https://10.0.0.0/8", "https://*.example", False),
    ("https://0.0.0.0/0", "https://ten.example", False),
    ("https://0.0.0.0/0", "https://[::1]", False),
    ("https://[::]/0", "https://10.0.0.1", False),
    ("https://[2001:db8::]/32", "https://[2001:db8:1::]/48", True),
    ("https://ten.example", "https://10.0.0.1", False),
    ("https://h:8000..8999", "https://h:8000..8999", True),
    ("https://h:8000..8999", "https://h:8100..8200", True),
    ("https://h:8000..8999", "https://h:8443", True),
    ("https://h:8000..8999", "https://h:7999..8100", False),
    ("https://h:8000..8999", "https://h:*", False),
    ("https://h:1..65534", "https://h:*", False),
    ("https://h:*", "https://h:*", True),
    ("https://h:*", "https://h:1..65535", True),
    ("https://h", "https://h:443", True),
    ("*://h:443", "https://h", True),
    ("*://h:443", "http://h", False),
    ("*://h:443", "*://h", False),
    ("*://h", "https://h", True),
    ("*://h", "https://h:443", True),
    ("*://h", "https://h:80", False),
    ("*://h", "redis://h", True),
    ("*://h", "foo://h:80", False),
    ("*://h", "*://h:443", False),
    ("*://h:80..444", "https://h", True),
    ("*://h:80..443", "https://h", False),  # 443 is the excluded end
    ("*://h:80..443", "*://h", False),
    ("redis://h", "redis://h:6379", True),
    ("foo://h:1..100", "foo://h:50", True),
    ("foo://h:1..100", "bar://h:50", False),
]


@pytest.mark.parametrize(("outer", "inner", "expected"), COVERS)
def test_covers(outer: str, inner: str, expected: bool) -> None:
    assert covers(p(outer), p(inner)) is expected


# --- finite-universe checks: exhaustive, deterministic --------------------------------------------------

POOL_SCHEMES = ["https", "http", "redis", "*"]
POOL_HOSTS = [
    "*",
    "example.org",
    "a.example.org",
    "b.a.example.org",
    "example.net",
    "*.example.org",
    "*.a.example.org",
    "*.org",
    "10.0.0.1",
    "10.0.0.0/24",
    "10.0.0.0/8",
    "[2001:db8::1]",
    "[2001:db8::]/32",
]
POOL_PORTS = ["", ":*", ":443", ":80", ":6379", ":80..443", ":443..8443", ":1..10000"]
POOL = [
    pattern
    for scheme, host, port in itertools.product(POOL_SCHEMES, POOL_HOSTS, POOL_PORTS)
    for pattern in [p(f"{scheme}://{host}{port}")]
]
UNIVERSE = list(
    itertools.product(
        ["https", "http", "ws", "redis", "foo"],
        [
            "example.org",
            "a.example.org",
            "b.a.example.org",
            "c.b.a.example.org",
            "x.example.org",
            "example.net",
            "a.example.net",
            "evilexample.org",
            "10.0.0.1",
            "10.0.0.2",
            "10.0.1.1",
            "11.0.0.1",
            "2001:db8::1",
            "2001:db8::2",
            "2001:db9::1",
        ],
        [None, 1, 80, 443, 444, 6379, 8443, 9999, 65535],
    )
)


def _admitted(pattern: HostPattern) -> frozenset[tuple[str, str, int | None]]:
    return frozenset(url for url in UNIVERSE if matches(pattern, *url))


ADMITTED = {pattern: _admitted(pattern) for pattern in POOL}


def test_covers_is_sound_on_a_finite_universe() -> None:
    checked = 0
    for outer, inner in itertools.product(POOL, repeat=2):
        if covers(outer, inner):
            checked += 1
            missing = ADMITTED[inner] - ADMITTED[outer]
            assert not missing, (outer.text, inner.text, sorted(missing, key=str)[:3])
    assert checked > len(POOL)  # not vacuous: many pairs besides p covers p


def test_covers_is_transitive_on_the_pool() -> None:
    covered = {b: [c for c in POOL if covers(b, c)] for b in POOL}
    for a, b in itertools.product(POOL, repeat=2):
        if covers(a, b):
            for c in covered[b]:
                assert covers(a, c), (a.text, b.text, c.text)


def test_covers_is_reflexive_and_not_trivial_on_the_pool() -> None:
    assert all(covers(x, x) for x in POOL)
    assert any(not covers(a, b) and covers(b, a) for a, b in itertools.product(POOL[:40], repeat=2))


# --- property-based ---------------------------------------------------------------------------------------

LABELS = ["a", "b", "example", "org", "xn--bcher-kva"]
names = st.lists(st.sampled_from(LABELS), min_size=1, max_size=3).map(".".join)
v4_networks = st.builds(
    lambda a, b, prefix: ipaddress.ip_network(f"10.{a}.{b}.0/{prefix}", strict=False),
    st.sampled_from([0, 1]),
    st.sampled_from([0, 1]),
    st.sampled_from([8, 16, 24, 32]),
)
v6_networks = st.builds(
    lambda a, prefix: ipaddress.ip_network(f"2001:db8:{a}::/{prefix}", strict=False),
    st.sampled_from([0, 1]),
    st.sampled_from([32, 48, 128]),
)


def _host_text(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    address = str(network.network_address)
    return f"[{address}]/{network.prefixlen}" if network.version == 6 else f"{address}/{network.prefixlen}"


pattern_hosts = st.one_of(
    st.just("*"),
    names,
    names.map(lambda n: "*." + n),
    v4_networks.map(_host_text),
    v6_networks.map(_host_text),
)
port_numbers = st.sampled_from([1, 79, 80, 443, 444, 6379, 8443, 65535])
pattern_ports = st.one_of(
    st.just(""),
    st.just(":*"),
    port_numbers.map(lambda n: f":{n}"),
    st.tuples(port_numbers, port_numbers)
    .filter(lambda t: t[0] != t[1])
    .map(lambda t: f":{min(t)}..{max(t)}"),
)
pattern_schemes = st.sampled_from(["*", "http", "https", "ws", "redis", "foo"])


@st.composite
def patterns(draw: st.DrawFn) -> HostPattern:
    scheme, host, port = draw(pattern_schemes), draw(pattern_hosts), draw(pattern_ports)
    if scheme == "foo" and not port:
        port = ":1..100"
    return p(f"{scheme}://{host}{port}")


@st.composite
def generalisations(draw: st.DrawFn, inner: HostPattern) -> HostPattern:
    """A pattern built by widening parts of ``inner``: likely, but not certain, to cover it."""
    text = inner.text
    scheme, _, rest = text.partition("://")
    if draw(st.booleans()):
        scheme = "*"
    if draw(st.booleans()):
        host = draw(st.sampled_from(["*", "*.org", "*.example.org", "10.0.0.0/8", "[2001:db8::]/32"]))
        port = rest[rest.rindex(":") :] if rest.rfind(":") > rest.rfind("]") else ""
        rest = host + port
    if draw(st.booleans()):
        host = rest[: rest.rindex(":")] if rest.rfind(":") > rest.rfind("]") else rest
        rest = host + draw(st.sampled_from(["", ":*", ":1..10000", ":443"]))
    try:
        return p(f"{scheme}://{rest}")
    except HostPatternError:
        return inner


@st.composite
def pattern_pairs(draw: st.DrawFn) -> tuple[HostPattern, HostPattern]:
    inner = draw(patterns())
    outer = draw(st.one_of(patterns(), generalisations(inner)))
    return outer, inner


url_hosts = st.one_of(
    names,
    st.lists(st.sampled_from(LABELS), min_size=1, max_size=5).map(".".join),
    st.builds(lambda a, b, c: f"10.{a}.{b}.{c}", *[st.sampled_from([0, 1, 255])] * 3),
    st.builds(lambda a, b: f"2001:db8:{a}::{b}", st.sampled_from([0, 1]), st.sampled_from([0, 1])),
)
url_schemes = st.sampled_from(["http", "https", "ws", "wss", "redis", "foo", "mqtt"])
url_ports = st.one_of(st.none(), port_numbers, st.integers(min_value=-1, max_value=70000))


@settings(max_examples=300, deadline=None)
@given(patterns())
def test_normal_form_round_trips_and_covers_itself(pattern: HostPattern) -> None:
    assert p(pattern.text) == pattern
    assert covers(pattern, pattern)


@settings(max_examples=800, deadline=None)
@given(pattern_pairs(), url_schemes, url_hosts, url_ports)
def test_covers_is_sound(
    pair: tuple[HostPattern, HostPattern], scheme: str, host: str, port: int | None
) -> None:
    outer, inner = pair
    if covers(outer, inner) and matches(inner, scheme, host, port):
        assert matches(outer, scheme, host, port)


@settings(max_examples=500, deadline=None)
@given(patterns(), patterns(), patterns())
def test_covers_is_transitive(a: HostPattern, b: HostPattern, c: HostPattern) -> None:
    if covers(a, b) and covers(b, c):
        assert covers(a, c)


@settings(max_examples=500, deadline=None)
@given(names, st.one_of(url_hosts, st.text(max_size=30)), url_schemes)
@example("example.org", "evilexample.org", "https")
@example("example.org", "example.org", "https")
@example("example.org", "example.org.evil.net", "https")
def test_suffix_matches_only_strict_subdomains(suffix: str, host: str, scheme: str) -> None:
    pattern = p(f"*://*.{suffix}:*")
    if matches(pattern, scheme, host, 1):
        normal = host.lower().removesuffix(".")
        assert normal.endswith("." + suffix) and normal != suffix


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
@example("https://[::1]:99999999999999999999999999")
@example("https://[" + "1:" * 40 + "]")
def test_parse_never_crashes(text: str) -> None:
    try:
        pattern = p(text)
    except HostPatternError as exc:
        assert exc.code
    else:
        assert p(pattern.text) == pattern


@settings(max_examples=500, deadline=None)
@given(patterns(), st.text(max_size=10), st.text(max_size=30), st.one_of(st.none(), st.integers()))
def test_matches_never_crashes(pattern: HostPattern, scheme: str, host: str, port: int | None) -> None:
    assert matches(pattern, scheme, host, port) in (True, False)


# --- address blocks ---------------------------------------------------------------------------------------

BLOCKED = [
    # (entries, address, the entry that blocks it or None)
    (["loopback"], "127.0.0.1", "loopback"),
    (["loopback"], "127.255.255.254", "loopback"),
    (["loopback"], "::1", "loopback"),
    (["loopback"], "[::1]", "loopback"),
    (["loopback"], "::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
    (["loopback"], "::ffff:7f00:1", "loopback"),  # the same, in hex
    (["loopback"], "::ffff:0:7f00:1", "loopback"),  # IPv4-translated (SIIT)
    (["loopback"], "::127.0.0.1", "loopback"),  # IPv4-compatible
    (["loopback"], "64:ff9b::7f00:1", "loopback"),  # NAT64 well-known prefix
    (["loopback"], "2002:7f00:1::1", "loopback"),  # 6to4
    (["loopback"], "128.0.0.1", None),
    (["loopback"], "::2", None),
    (["loopback"], "::ffff:8.8.8.8", None),
    (["link-local"], "169.254.169.254", "link-local"),  # cloud metadata
    (["link-local"], "::ffff:169.254.169.254", "link-local"),
    (["link-local"], "fe80::1", "link-local"),
    (["link-local"], "fe80::1%eth0", "link-local"),
    (["link-local"], "febf::1", "link-local"),
    (["link-local"], "fec0::1", None),
    (["private"], "10.1.2.3", "private"),
    (["private"], "172.16.0.1", "private"),
    (["private"], "172.31.255.255", "private"),
    (["private"], "172.32.0.1", None),
    (["private"], "192.168.1.1", "private"),
    (["private"], "100.64.0.1", "private"),
    (["private"], "100.127.255.255", "private"),
    (["private"], "100.128.0.1", None),
    (["private"], "0.0.0.0", "private"),
    (["private"], "255.255.255.255", "private"),
    (["private"], "224.0.0.1", "private"),
    (["private"], "192.0.2.1", "private"),
    (["private"], "198.18.0.1", "private"),
    (["private"], "127.0.0.1", "private"),
    (["private"], "169.254.1.1", "private"),
    (["private"], "::", "private"),
    (["private"], "::1", "private"),
    (["private"], "fd00::1", "private"),
    (["private"], "fc00::1", "private"),
    (["private"], "ff02::1", "private"),
    (["private"], "2001:db8::1", "private"),
    (["private"], "2001::1", "private"),  # Teredo
    (["private"], "64:ff9b:1::1", "private"),
    (["private"], "::ffff:10.0.0.1", "private"),
    (["private"], "::ffff:a00:1", "private"),
    (["private"], "64:ff9b::a00:1", "private"),
    (["private"], "64:ff9b::c0a8:101", "private"),
    (["private"], "2002:c0a8:101::1", "private"),  # 6to4 of 192.168.1.1
    (["private"], "2002:0a00:0001::1", "private"),  # 6to4 of 10.0.0.1
    (["private"], "::ffff:100.64.0.1", "private"),
    (["private"], "8.8.8.8", None),
    (["private"], "1.1.1.1", None),
    (["private"], "::ffff:8.8.8.8", None),
    (["private"], "64:ff9b::808:808", None),
    (["private"], "2002:808:808::1", None),
    (["private"], "2606:4700:4700::1111", None),
    (["203.0.113.0/24"], "203.0.113.7", "203.0.113.0/24"),
    (["203.0.113.0/24"], "::ffff:203.0.113.7", "203.0.113.0/24"),
    (["203.0.113.0/24"], "203.0.114.1", None),
    (["2001:db8::/32"], "2001:db8::5", "2001:db8::/32"),
    (["[2001:db8::]/32"], "2001:db8::5", "[2001:db8::]/32"),
    (["8.8.8.8"], "8.8.8.8", "8.8.8.8"),
    (["::ffff:10.0.0.0/104"], "10.1.1.1", "::ffff:10.0.0.0/104"),  # a mapped entry holds the IPv4 too
    (["::ffff:10.0.0.0/104"], "::ffff:10.1.1.1", "::ffff:10.0.0.0/104"),
    (["203.0.113.0/24", "private"], "10.0.0.1", "private"),
    (["private", "10.0.0.0/8"], "10.0.0.1", "private"),  # the first entry in order
    (["10.0.0.0/8", "private"], "10.0.0.1", "10.0.0.0/8"),
    ([], "10.0.0.1", None),
]


@pytest.mark.parametrize(("entries", "address", "expected"), BLOCKED)
def test_blocked_by(entries: list[str], address: str, expected: str | None) -> None:
    blocks = BlockList.from_entries(entries)
    assert blocks.blocked_by(address) == expected
    assert blocks.blocked_by(ipaddress.ip_address(address.strip("[]"))) == expected


def test_block_entries_keep_order_and_drop_duplicates() -> None:
    blocks = BlockList.from_entries(["private", "10.0.0.0/8", "private"])
    assert blocks.entries == ("private", "10.0.0.0/8")
    assert blocks == BlockList(("private", "10.0.0.0/8"))


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("intranet", "block.invalid"),
        ("", "block.invalid"),
        ("0177.0.0.1", "block.invalid"),
        ("2130706433", "block.invalid"),
        ("10/8", "block.invalid"),
        ("10.0.0.1/24", "host.cidr"),
        ("10.0.0.0/33", "host.cidr"),
        ("10.0.0.0/08", "host.cidr"),
        ("10.0.0.0/255.0.0.0", "host.cidr"),
        ("fe80::1%eth0", "host.ipv6"),
        ("https://10.0.0.1", "block.invalid"),
    ],
)
def test_bad_block_entries(text: str, code: str) -> None:
    with pytest.raises(HostPatternError) as info:
        parse_block_entry(text)
    assert info.value.code == code
    with pytest.raises(HostPatternError):
        BlockList.from_entries(["private", text])


def test_block_words_are_exact() -> None:
    assert parse_block_entry("loopback") == tuple(map(ipaddress.ip_network, ["127.0.0.0/8", "::1/128"]))
    link_local = tuple(map(ipaddress.ip_network, ["169.254.0.0/16", "fe80::/10"]))
    assert parse_block_entry("link-local") == link_local
    private = set(parse_block_entry("private"))
    assert set(BLOCK_WORDS["loopback"]) | set(BLOCK_WORDS["link-local"]) <= private
    for network in ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"]:
        assert ipaddress.ip_network(network) in private
    assert parse_block_entry("PRIVATE") == parse_block_entry("private")


def test_bad_addresses_are_errors() -> None:
    with pytest.raises(HostPatternError) as info:
        BlockList.from_entries(["private"]).blocked_by("example.org")
    assert info.value.code == "address.invalid"


@settings(max_examples=2000, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_private_blocks_every_non_global_ipv4(value: int) -> None:
    address = ipaddress.IPv4Address(value)
    blocks = BlockList.from_entries(["private"])
    if not address.is_global:
        assert blocks.blocked_by(address) == "private"
    mapped = ipaddress.IPv6Address((0xFFFF << 32) | value)
    nat64 = ipaddress.IPv6Address((0x64FF9B << 96) | value)
    assert blocks.blocked_by(mapped) == blocks.blocked_by(nat64) == blocks.blocked_by(address)


# --- tables ---------------------------------------------------------------------------------------------


def test_usual_ports_table() -> None:
    assert USUAL_PORTS["http"] == USUAL_PORTS["ws"] == 80
    assert USUAL_PORTS["https"] == USUAL_PORTS["wss"] == 443
    with pytest.raises(TypeError):
        USUAL_PORTS["gopher"] = 70  # type: ignore[index]
