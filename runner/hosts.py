"""Network host patterns (``scheme://host[:port]``), their coverage, and address block lists.

A manifest asks for hosts with patterns and a policy bounds them with patterns; the compiler must
decide *soundly* whether the policy's patterns admit everything a job's pattern admits, so every
pattern is parsed into a small normal form whose admitted set is exact. Anything ambiguous (octal or
shortened IPv4, IDNA spellings that resolvers map differently, zone ids, paths) is refused instead of
guessed. Block lists are about *resolved addresses*, checked at connection time, so they look
through IPv6 forms that carry an IPv4 address (mapped, translated, 6to4, NAT64, Teredo).

The grammar, the tables and every decision are documented in ``docs/network.md``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from encodings import idna
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import MappingProxyType
from typing import Literal, Union

__all__ = [
    "USUAL_PORTS",
    "BLOCK_WORDS",
    "HostPatternError",
    "HostPattern",
    "parse_host_pattern",
    "matches",
    "covers",
    "CoverIndex",
    "parse_block_entry",
    "BlockList",
    "runtime_host",
]

IPAddress = Union[IPv4Address, IPv6Address]
IPNetwork = Union[IPv4Network, IPv6Network]
HostKind = Literal["any", "name", "suffix", "network"]

#: The port an empty ``:port`` stands for, per scheme. A pattern with another scheme must name a port.
USUAL_PORTS: Mapping[str, int] = MappingProxyType(
    {
        "http": 80,
        "https": 443,
        "ws": 80,
        "wss": 443,
        "mqtt": 1883,
        "mqtts": 8883,
        "mysql": 3306,
        "postgres": 5432,
        "redis": 6379,
    }
)

_ALL_PORTS = (1, 65535)
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_IPV4 = re.compile(r"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}")
_PREFIX = re.compile(r"0|[1-9][0-9]{0,2}")
_NUMBER = re.compile(r"[0-9]+")
_PORT_RANGE = re.compile(r"([0-9]+)\.\.([0-9]+)")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
# WHATWG URL "ends in a number": resolvers read such hosts as IPv4 in octal/hex/short forms.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")


class HostPatternError(ValueError):
    """A host pattern, block entry or address that cannot be parsed.

    ``code`` is a stable machine-readable reason (``port.range``, ``host.numeric``…, listed in
    ``docs/network.md``) so callers and tests need not match message text.
    """

    def __init__(self, text: object, code: str, message: str) -> None:
        super().__init__(f"{text!r}: {message}")
        self.text = text
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[HostPatternError], tuple[object, str, str]]:
        return (type(self), (self.text, self.code, self.message))


class _Reason(Exception):
    """Internal: why a piece is invalid; wrapped into HostPatternError with the whole text."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPattern:
    """One parsed host pattern; build it with :func:`parse_host_pattern`.

    ``scheme`` None means any scheme. ``kind`` says what ``name``/``network`` hold: ``any`` (every host),
    ``name`` (exactly ``name``), ``suffix`` (any name strictly below ``name``), ``network`` (IP literals
    inside ``network``). ``ports`` is an inclusive range, or None for "the usual port of whatever scheme
    is used" (only with any scheme: a concrete scheme's usual port is resolved at parse time); the
    text ``a..b`` excludes ``b`` (Spin's grammar), so it is stored as ``(a, b - 1)``.
    """

    text: str
    scheme: str | None
    kind: HostKind
    name: str = ""
    network: IPNetwork | None = None
    ports: tuple[int, int] | None = _ALL_PORTS

    def __post_init__(self) -> None:
        # The invariants covers() relies on; parse_host_pattern always satisfies them.
        consistent = (
            (self.network is not None) == (self.kind == "network")
            and bool(self.name) == (self.kind in ("name", "suffix"))
            and (self.ports is not None or self.scheme is None)
            and (self.ports is None or 1 <= self.ports[0] <= self.ports[1] <= 65535)
        )
        if not consistent:
            raise ValueError(f"inconsistent HostPattern {self.text!r}; use parse_host_pattern")


# --- parsing ------------------------------------------------------------------------------------------


def parse_host_pattern(text: str) -> HostPattern:
    """Parse and normalise ``scheme://host[:port]``; raise :class:`HostPatternError` saying why not."""
    if not isinstance(text, str):
        raise HostPatternError(text, "type", "a host pattern must be a string")
    try:
        return _parse_cached(text)
    except _Reason as reason:
        raise HostPatternError(text, reason.code, reason.message) from None


def _parse(text: str) -> HostPattern:
    if not text:
        raise _Reason("empty", "the pattern is empty")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise _Reason("character", "whitespace and control characters are not allowed")
    if "?" in text or "#" in text:
        raise _Reason("path", "queries and fragments are not allowed: a pattern names hosts, not URLs")
    scheme_text, sep, rest = text.partition("://")
    if not sep:
        raise _Reason("scheme.missing", "expected scheme://host[:port], e.g. https://example.org")
    if "@" in rest:
        raise _Reason("userinfo", "userinfo (user@) is not allowed")
    scheme = _parse_scheme(scheme_text)
    host_text, prefix, port_text, bracketed = _split_authority(rest)
    kind, name, network = _parse_host(host_text, prefix, bracketed)
    ports = _parse_ports(port_text, scheme)
    return HostPattern(
        text=_format(scheme, kind, name, network, ports),
        scheme=scheme,
        kind=kind,
        name=name,
        network=network,
        ports=ports,
    )


# The compiler parses the same policy and job patterns for every job; results are immutable.
_parse_cached = functools.lru_cache(maxsize=4096)(_parse)


def _parse_scheme(text: str) -> str | None:
    if text == "*":
        return None
    scheme = text.lower()
    if not _SCHEME.fullmatch(scheme):
        raise _Reason("scheme.invalid", f"scheme {text!r} must be '*' or a letter followed by [a-z0-9+.-]")
    return scheme


def _split_authority(rest: str) -> tuple[str, str | None, str | None, bool]:
    """Split ``host[/len][:port]`` into (host, prefix length, port, bracketed) without judging them."""
    bracketed = rest.startswith("[")
    if bracketed:
        end = rest.find("]")
        if end < 0:
            raise _Reason("host.ipv6", "unclosed '[' in an IPv6 literal")
        host, after = rest[1:end], rest[end + 1 :]
    else:
        if rest.count(":") > 1:
            raise _Reason("host.ipv6", "more than one ':'; IPv6 literals go in brackets, e.g. [2001:db8::1]")
        cut = min((i for i in (rest.find(":"), rest.find("/")) if i >= 0), default=len(rest))
        host, after = rest[:cut], rest[cut:]
    prefix = None
    if after.startswith("/"):
        prefix, colon, port = after[1:].partition(":")
        if not _NUMBER.fullmatch(prefix) or "/" in port:
            raise _Reason("path", "paths are not allowed; '/len' may only follow an IP address")
        after = colon + port
    if not after:
        return host, prefix, None, bracketed
    if not after.startswith(":"):
        raise _Reason("host.ipv6", f"unexpected {after!r} after the IPv6 literal")
    port_text = after[1:]
    if "/" in port_text:
        raise _Reason("path", "paths are not allowed: a pattern names hosts, not URLs")
    return host, prefix, port_text, bracketed


def _parse_host(host: str, prefix: str | None, bracketed: bool) -> tuple[HostKind, str, IPNetwork | None]:
    if bracketed:
        return "network", "", _ip_network(_ipv6(host), prefix)
    if _IPV4.fullmatch(host):
        return "network", "", _ip_network(_ipv4(host), prefix)
    if prefix is not None:
        raise _Reason("path", "paths are not allowed; '/len' may only follow an IP address")
    if host == "*":
        return "any", "", None
    if host.startswith("*.") and "*" not in host[2:]:
        if host in ("*.", "*.."):
            raise _Reason("host.wildcard", "'*.' needs a domain after it, e.g. *.example.org")
        return "suffix", _dns_name(host[2:]), None
    if "*" in host:
        raise _Reason(
            "host.wildcard", "'*' may only be the whole host or the whole leftmost label, e.g. *.example.org"
        )
    return "name", _dns_name(host), None


def _ipv4(text: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError:
        raise _Reason("host.ipv4", f"{text!r} is not an IPv4 address (each part is 0..255)") from None


def _ipv6(text: str) -> IPv6Address:
    if "%" in text:
        raise _Reason("host.ipv6", "IPv6 zone ids (%…) are not allowed")
    if "/" in text:
        raise _Reason("host.ipv6", "the prefix length goes after the bracket, e.g. [2001:db8::]/32")
    try:
        address = IPv6Address(text)
    except ValueError:
        raise _Reason("host.ipv6", f"{text!r} is not an IPv6 address") from None
    if address.ipv4_mapped is not None:
        raise _Reason("host.ipv6", "IPv4-mapped IPv6 addresses are not allowed: write the IPv4 form")
    return address


def _ip_network(address: IPAddress, prefix: str | None) -> IPNetwork:
    if prefix is None:
        return ipaddress.ip_network(address)
    if not _PREFIX.fullmatch(prefix) or int(prefix) > address.max_prefixlen:
        raise _Reason("host.cidr", f"prefix length must be 0..{address.max_prefixlen} without leading zeros")
    try:
        return ipaddress.ip_network(f"{address}/{prefix}")
    except ValueError:
        loose = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
        raise _Reason("host.cidr", f"host bits set after the prefix; did you mean {loose}?") from None


def _dns_name(text: str) -> str:
    """Normalise a DNS name: lower case, A-labels (punycode), one trailing root dot dropped."""
    name = text[:-1] if text.endswith(".") else text
    if not name:
        raise _Reason("host.empty", "the host is empty")
    labels = [_dns_label(label) for label in name.split(".")]
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise _Reason(
            "host.numeric",
            "ends in a number but is not a dotted-decimal IPv4 address; resolvers read such hosts as "
            "octal, hex or shortened IPv4 (e.g. 0177.0.0.1, 2130706433), so they are refused",
        )
    normal = ".".join(labels)
    if len(normal) > 253:
        raise _Reason("host.length", f"the name is {len(normal)} characters long; at most 253")
    return normal


def _dns_label(label: str) -> str:
    if not label:
        raise _Reason("host.label", "empty label (a leading dot or two dots in a row)")
    ascii_label = label.lower() if label.isascii() else _a_label(label)
    if len(ascii_label) > 63:
        raise _Reason(
            "host.label", f"label {ascii_label[:20]}… is {len(ascii_label)} characters long; at most 63"
        )
    if not _LABEL.fullmatch(ascii_label):
        raise _Reason(
            "host.label",
            f"label {ascii_label!r}: only letters, digits, '-' and '_', not starting or ending with '-'",
        )
    return ascii_label


def _a_label(label: str) -> str:
    """The punycode form of a Unicode label, only when every IDNA reading agrees on it.

    IDNA 2003 (the stdlib codec) maps some characters (``ß`` -> ``ss``, full-width letters, dot
    lookalikes) where IDNA 2008 resolvers do not, so a label that mapping would change is refused:
    the policy would name one domain and the resolver reach another.
    """
    lower = label.lower()
    if any(unicodedata.category(c)[0] not in "LMN" and c != "-" for c in lower):
        raise _Reason("host.idna", f"label {label!r} has characters that are not letters, marks or digits")
    try:
        encoded = idna.ToASCII(lower).decode("ascii")
        stable = idna.ToUnicode(encoded) == lower
    except UnicodeError:
        stable = False
    if not stable:
        raise _Reason("host.idna", f"label {label!r} changes under IDNA mapping; write its xn-- form")
    return encoded


def _parse_ports(text: str | None, scheme: str | None) -> tuple[int, int] | None:
    if text is None:
        if scheme is None:
            return None
        usual = USUAL_PORTS.get(scheme)
        if usual is None:
            raise _Reason(
                "port.default", f"scheme {scheme!r} has no usual port; give one, e.g. {scheme}://host:1234"
            )
        return (usual, usual)
    if text == "*":
        return _ALL_PORTS
    ranged = _PORT_RANGE.fullmatch(text)
    if ranged:
        # Spin's grammar: a..b is the half-open range [a, b), so b itself is excluded.
        low, end = _port(ranged.group(1)), _port(ranged.group(2))
        if low >= end:
            raise _Reason(
                "port.range",
                f"port range {text!r} is empty: a..b excludes b, so the first port must be below the second",
            )
        return (low, end - 1)
    if _NUMBER.fullmatch(text):
        port = _port(text)
        return (port, port)
    raise _Reason("port.invalid", f"port {text!r} must be a number, '*' or a range a..b")


def _port(text: str) -> int:
    if len(text) > 1 and text.startswith("0"):
        raise _Reason("port.invalid", f"port {text!r} has a leading zero")
    if len(text) > 5 or not 1 <= int(text) <= 65535:
        raise _Reason("port.range", f"port {text} is outside 1..65535")
    return int(text)


def _format(
    scheme: str | None, kind: HostKind, name: str, network: IPNetwork | None, ports: tuple[int, int] | None
) -> str:
    if network is not None:
        address = str(network.network_address)
        if network.version == 6:
            address = f"[{address}]"
        full = network.prefixlen == network.max_prefixlen
        host = address if full else f"{address}/{network.prefixlen}"
    else:
        host = {"any": "*", "suffix": f"*.{name}"}.get(kind, name)
    text = f"{scheme or '*'}://{host}"
    if ports is None or (scheme is not None and ports[0] == ports[1] == USUAL_PORTS.get(scheme)):
        return text
    if ports == _ALL_PORTS:
        return text + ":*"
    return text + (f":{ports[0]}" if ports[0] == ports[1] else f":{ports[0]}..{ports[1] + 1}")


# --- matching and coverage ---------------------------------------------------------------------------


def matches(pattern: HostPattern, scheme: str, host: str, port: int | None = None) -> bool:
    """Does ``pattern`` admit a connection to ``host`` on ``port`` with ``scheme``?

    ``host`` is a name or an IP literal (IPv6 with or without brackets); ``port`` None is the scheme's
    usual port. Invalid input is simply not admitted. A name never matches a CIDR pattern here: checking
    the addresses a name resolves to is the runtime resolver's job.
    """
    scheme = scheme.lower()
    if not _SCHEME.fullmatch(scheme) or (pattern.scheme is not None and scheme != pattern.scheme):
        return False
    usual = USUAL_PORTS.get(scheme)
    port = usual if port is None else port
    if port is None or isinstance(port, bool) or not isinstance(port, int):
        return False
    if pattern.ports is None:
        if port != usual:
            return False
    elif not pattern.ports[0] <= port <= pattern.ports[1]:
        return False
    try:
        target = _host_target(host)
    except _Reason:
        return False
    return _host_matches(pattern, target)


def runtime_host(host: str) -> IPAddress | str:
    """A connection's host as an address or a normalised name; :class:`HostPatternError` when the
    grammar refuses it (shortened or octal IPv4, zone ids, bad labels, IDNA spellings that map)."""
    try:
        return _host_target(host)
    except _Reason as reason:
        raise HostPatternError(host, reason.code, reason.message) from None


def _host_target(host: str) -> IPAddress | str:
    """A runtime host as an address or a normalised name; ``_Reason`` when it is neither."""
    if host.startswith("[") and host.endswith("]"):
        return _ipv6_host(host[1:-1])
    if ":" in host:
        return _ipv6_host(host)
    if _IPV4.fullmatch(host):
        return _ipv4(host)
    return _dns_name(host)


def _ipv6_host(text: str) -> IPv6Address:
    if "%" in text or "/" in text:
        raise _Reason("host.ipv6", "zone ids and prefixes are not hosts")
    try:
        return IPv6Address(text)
    except ValueError:
        raise _Reason("host.ipv6", "not an IPv6 address") from None


def _host_matches(pattern: HostPattern, target: IPAddress | str) -> bool:
    if pattern.kind == "any":
        return True
    if isinstance(target, str):
        if pattern.kind == "suffix":
            return target.endswith("." + pattern.name)
        return pattern.kind == "name" and target == pattern.name
    return pattern.network is not None and target in pattern.network


def covers(outer: HostPattern, inner: HostPattern) -> bool:
    """True only when every (scheme, host, port) that ``inner`` admits, ``outer`` admits too."""
    return _ports_cover(outer, inner) and _hosts_cover(outer, inner)


def _ports_cover(outer: HostPattern, inner: HostPattern) -> bool:
    if outer.scheme is not None:
        # A concrete scheme always has a concrete port range (the usual port is resolved at parse).
        return (
            inner.scheme == outer.scheme
            and outer.ports is not None
            and inner.ports is not None
            and outer.ports[0] <= inner.ports[0]
            and inner.ports[1] <= outer.ports[1]
        )
    if outer.ports is None:  # any scheme on its usual port
        if inner.scheme is None:
            return inner.ports is None
        usual = USUAL_PORTS.get(inner.scheme)
        return usual is not None and inner.ports == (usual, usual)
    low, high = outer.ports
    if inner.ports is None:
        return all(low <= usual <= high for usual in USUAL_PORTS.values())
    return low <= inner.ports[0] and inner.ports[1] <= high


def _hosts_cover(outer: HostPattern, inner: HostPattern) -> bool:
    if outer.kind == "any":
        return True
    if inner.kind == "any":
        return False
    if outer.kind == "network" or inner.kind == "network":
        # Names may resolve anywhere, so a network never covers a name, nor a name an address.
        return (
            outer.network is not None
            and inner.network is not None
            and outer.network.version == inner.network.version
            and inner.network.subnet_of(outer.network)  # type: ignore[arg-type]
        )
    if outer.kind == "name":
        return inner.kind == "name" and inner.name == outer.name
    return inner.name.endswith("." + outer.name) or (inner.kind == "suffix" and inner.name == outer.name)


class CoverIndex:
    """``any(covers(outer, inner) for outer in outers)``, without trying every outer pattern.

    The compiler asks this once per allow entry of every job: trying each policy pattern would
    cost (job entries x policy entries). The outer patterns are indexed by what can cover what:
    a name is covered only by ``*``, the same name or a suffix it ends with; an address range only
    by ``*`` or a network containing it. So only those few candidates go through :func:`covers`.
    """

    def __init__(self, outers: Iterable[HostPattern]) -> None:
        self._any: list[HostPattern] = []
        self._names: dict[str, list[HostPattern]] = {}
        self._suffixes: dict[str, list[HostPattern]] = {}
        self._networks: dict[IPNetwork, list[HostPattern]] = {}
        self._prefixes: set[tuple[int, int]] = set()  # (IP version, prefix length) of the networks
        for outer in outers:
            if outer.kind == "any":
                self._any.append(outer)
            elif outer.kind == "name":
                self._names.setdefault(outer.name, []).append(outer)
            elif outer.kind == "suffix":
                self._suffixes.setdefault(outer.name, []).append(outer)
            elif outer.network is not None:
                self._networks.setdefault(outer.network, []).append(outer)
                self._prefixes.add((outer.network.version, outer.network.prefixlen))

    def _candidates(self, inner: HostPattern) -> Iterator[HostPattern]:
        yield from self._any
        if inner.kind in ("name", "suffix"):
            if inner.kind == "name":
                yield from self._names.get(inner.name, ())
            else:
                yield from self._suffixes.get(inner.name, ())
            labels = inner.name.split(".")
            for start in range(1, len(labels)):  # every name strictly above: "b.c", "c" for "a.b.c"
                yield from self._suffixes.get(".".join(labels[start:]), ())
        elif inner.network is not None:
            network = inner.network
            for version, length in self._prefixes:
                if version == network.version and length <= network.prefixlen:
                    yield from self._networks.get(network.supernet(new_prefix=length), ())

    def covers(self, inner: HostPattern) -> bool:
        """Whether some outer pattern admits everything ``inner`` admits."""
        return any(covers(outer, inner) for outer in self._candidates(inner))


# --- address blocks ------------------------------------------------------------------------------------


def _networks(*texts: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(text) for text in texts)


_LOOPBACK = _networks("127.0.0.0/8", "::1/128")
_LINK_LOCAL = _networks("169.254.0.0/16", "fe80::/10")

#: The words a block list accepts, and the exact ranges each stands for.
BLOCK_WORDS: Mapping[str, tuple[IPNetwork, ...]] = MappingProxyType(
    {
        "loopback": _LOOPBACK,
        "link-local": _LINK_LOCAL,
        "private": _LOOPBACK
        + _LINK_LOCAL
        + _networks(
            "0.0.0.0/8",  # "this network"
            "10.0.0.0/8",
            "100.64.0.0/10",  # carrier-grade NAT
            "172.16.0.0/12",
            "192.0.0.0/24",  # IETF protocol assignments
            "192.0.2.0/24",  # TEST-NET-1
            "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
            "192.168.0.0/16",
            "198.18.0.0/15",  # benchmarking
            "198.51.100.0/24",  # TEST-NET-2
            "203.0.113.0/24",  # TEST-NET-3
            "224.0.0.0/4",  # multicast
            "240.0.0.0/4",  # reserved, and the broadcast address
            "::/128",  # unspecified
            "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation
            "100::/64",  # discard-only
            "2001::/23",  # IETF protocol assignments, Teredo included
            "2001:db8::/32",  # documentation
            "3fff::/20",  # documentation
            "5f00::/16",  # segment routing SIDs
            "fc00::/7",  # unique local
            "fec0::/10",  # site-local (deprecated)
            "ff00::/8",  # multicast
        ),
    }
)

_MAPPED = IPv6Network("::ffff:0:0/96")


def parse_block_entry(text: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """The networks a block entry stands for: a word of :data:`BLOCK_WORDS`, an address or a CIDR.

    IPv6 may be bracketed (``[fd00::]/8``) as in host patterns. An IPv4-mapped IPv6 entry also yields
    its IPv4 network, so the block holds whichever form the resolver returns.
    """
    if not isinstance(text, str):
        raise HostPatternError(text, "block.invalid", "a block entry must be a string")
    word = BLOCK_WORDS.get(text.lower())
    if word is not None:
        return word
    address, slash, prefix = text.partition("/")
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    try:
        if "%" in address:
            raise _Reason("host.ipv6", "IPv6 zone ids (%…) are not allowed")
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            raise _Reason(
                "block.invalid", f"expected {', '.join(BLOCK_WORDS)}, an IP address or a CIDR"
            ) from None
        network = _ip_network(parsed, prefix if slash else None)
    except _Reason as reason:
        raise HostPatternError(text, reason.code, reason.message) from None
    if isinstance(network, IPv6Network) and network.prefixlen >= 96 and network.subnet_of(_MAPPED):
        mapped = IPv4Network((int(network.network_address) & 0xFFFF_FFFF, network.prefixlen - 96))
        return (network, mapped)
    return (network,)


def _embedded_ipv4(address: IPv6Address) -> tuple[IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address carries, which a gateway or dual-stack socket may reach."""
    value = int(address)
    found: list[IPv4Address] = []
    # ::a.b.c.d (compatible), ::ffff:a.b.c.d (mapped), ::ffff:0:a.b.c.d (translated), 64:ff9b::a.b.c.d (NAT64)
    # ``::`` and ``::1`` are the unspecified and loopback addresses themselves, not 0.0.0.0/0.0.0.1.
    if value >> 32 in (0, 0xFFFF, 0xFFFF_0000, 0x0064_FF9B_0000_0000_0000_0000) and value > 1:
        found.append(IPv4Address(value & 0xFFFF_FFFF))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return tuple(found)


def _address(value: str | IPAddress) -> IPAddress:
    if isinstance(value, (IPv4Address, IPv6Address)):
        address: IPAddress = value
    else:
        text = value[1:-1] if value.startswith("[") and value.endswith("]") else value
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise HostPatternError(value, "address.invalid", "not an IP address") from None
    # Drop any zone id: blocks are about the address itself.
    return IPv6Address(int(address)) if isinstance(address, IPv6Address) else address


@dataclass(frozen=True, slots=True)
class BlockList:
    """Address blocks, checked against every resolved address at connection time."""

    entries: tuple[str, ...]
    _ranges: tuple[tuple[str, tuple[tuple[int, int, int], ...]], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # (version, first, last) as ints: a connection checks every entry, so keep it cheap.
        ranges = tuple(
            (
                entry,
                tuple(
                    (net.version, int(net.network_address), int(net.broadcast_address))
                    for net in parse_block_entry(entry)
                ),
            )
            for entry in self.entries
        )
        object.__setattr__(self, "_ranges", ranges)

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> BlockList:
        """Parse entries (raising :class:`HostPatternError` on a bad one), dropping duplicates."""
        return cls(tuple(dict.fromkeys(entries)))

    def blocked_by(self, address: str | IPv4Address | IPv6Address) -> str | None:
        """The first entry that blocks ``address`` or an IPv4 address it embeds; None when none does."""
        ip = _address(address)
        candidates = [(ip.version, int(ip))]
        if isinstance(ip, IPv6Address):
            candidates += [(4, int(v4)) for v4 in _embedded_ipv4(ip)]
        for entry, ranges in self._ranges:
            for version, first, last in ranges:
                if any(v == version and first <= n <= last for v, n in candidates):
                    return entry
        return None
