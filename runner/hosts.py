"""Network host patterns, whether one pattern covers another, and address blocks.

Patterns follow the grammar Spin's ``allowed_outbound_hosts`` made familiar, ``scheme://host[:port]``
(see ``docs/network.md``). The compiler asks :func:`covers` whether a job's allow entry is inside
the policy's; the answer must be sound (never "covered" when some URL the job's pattern admits is
refused by the policy), so every case not proven covered is refused. Blocks are checked against
*resolved* addresses by the network capability; :meth:`BlockList.blocked_by` looks through the
IPv6 forms that embed an IPv4 address, so ``::ffff:127.0.0.1`` is loopback too.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Union

__all__ = [
    "DEFAULT_PORTS",
    "BLOCK_WORDS",
    "HostPatternError",
    "HostPattern",
    "parse_host_pattern",
    "matches",
    "covers",
    "parse_block_entry",
    "BlockList",
]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

#: The usual port of each scheme that has one; an empty port means this one.
DEFAULT_PORTS = {
    "http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21, "ssh": 22, "git": 9418,
    "postgres": 5432, "mysql": 3306, "redis": 6379, "rediss": 6379, "mqtt": 1883, "mqtts": 8883,
    "amqp": 5672, "amqps": 5671,
}  # fmt: skip

_ANY_PORT = (1, 65535)
_SCHEME = re.compile(r"\*|[a-z][a-z0-9+.-]{0,31}")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORT = re.compile(r"[1-9][0-9]{0,4}")


def _nets(*cidrs: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


_LOOPBACK = _nets("127.0.0.0/8", "::1/128")
_LINK_LOCAL = _nets("169.254.0.0/16", "fe80::/10")
#: Every non-global range (IANA special-purpose registries), IPv4 and IPv6.
_PRIVATE = _LOOPBACK + _LINK_LOCAL + _nets(
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24",
    "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
    "224.0.0.0/4", "240.0.0.0/4", "::/128", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64",
    "2001::/23", "2001:db8::/32", "fc00::/7", "fec0::/10", "ff00::/8",
)  # fmt: skip
BLOCK_WORDS: dict[str, tuple[Network, ...]] = {
    "private": _PRIVATE,
    "loopback": _LOOPBACK,
    "link-local": _LINK_LOCAL,
}


class HostPatternError(ValueError):
    """A host pattern or block entry that does not parse; the message says why."""


HostKind = Literal["any", "suffix", "name", "ip", "cidr"]


@dataclass(frozen=True, slots=True)
class HostPattern:
    """A parsed pattern. ``ports`` is None for the scheme's usual port, else an inclusive range."""

    text: str
    scheme: str
    kind: HostKind
    host: str
    network: Network | None
    ports: tuple[int, int] | None


def _parse_name(name: str, what: str) -> str:
    if not name.isascii():
        raise HostPatternError(f"{what} {name!r} is not ASCII: write internationalised names as punycode (xn--…)")
    name = name.lower()
    if name.endswith("."):
        raise HostPatternError(f"{what} {name!r} must not end with a dot")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise HostPatternError(f"{what} {name!r} is not a valid DNS name")
    if labels[-1].isdigit():
        raise HostPatternError(f"{what} {name!r} looks like a numeric address: write IPv4 as a dotted quad")
    return name


def _parse_ports(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    if text == "*":
        return _ANY_PORT
    low, sep, high = text.partition("..")
    if not _PORT.fullmatch(low) or (sep and not _PORT.fullmatch(high)):
        raise HostPatternError(f"port {text!r} must be a number 1-65535, '*' or a range a..b")
    bounds = (int(low), int(high) if sep else int(low))
    if bounds[1] > 65535 or bounds[0] > bounds[1]:
        raise HostPatternError(f"port {text!r} is out of range (1-65535, a <= b)")
    return bounds


def _split_host_port(rest: str) -> tuple[str, str | None]:
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise HostPatternError("an IPv6 literal needs a closing ']'")
        host, tail = rest[: end + 1], rest[end + 1 :]
        if tail.startswith("/"):
            prefix, _, port = tail[1:].partition(":")
            return f"{host}/{prefix}", (port if ":" in tail else None)
        if tail and not tail.startswith(":"):
            raise HostPatternError(f"unexpected {tail!r} after the IPv6 literal")
        return host, (tail[1:] if tail else None)
    host, sep, port = rest.partition(":")
    return host, (port if sep else None)


def _parse_host(host: str) -> tuple[HostKind, str, Network | None]:
    if host == "*":
        return "any", "*", None
    if host.startswith("*."):
        return "suffix", _parse_name(host[2:], "host suffix"), None
    if "*" in host:
        raise HostPatternError(f"host {host!r}: '*' is allowed only alone or as a leading '*.'")
    bracketed = host.startswith("[")
    text = host.replace("[", "").replace("]", "") if bracketed else host
    if "%" in text:
        raise HostPatternError(f"host {host!r}: IPv6 zone ids are not allowed")
    try:
        if "/" in text:
            network = ipaddress.ip_network(text, strict=True)
            if bracketed != (network.version == 6):
                raise HostPatternError(f"host {host!r}: IPv6 CIDRs are written [addr]/len, IPv4 without brackets")
            return "cidr", network.with_prefixlen, network
        address = ipaddress.ip_address(text)
    except ValueError as exc:
        if "/" in text and not bracketed and not text.replace(".", "").split("/")[0].isdigit():
            raise HostPatternError(f"host {host!r}: a pattern has no path") from None
        if bracketed or "/" in text or ":" in text:
            raise HostPatternError(f"host {host!r}: {exc}") from None
        return "name", _parse_name(text, "host"), None
    if bracketed != (address.version == 6):
        raise HostPatternError(f"host {host!r}: IPv6 literals are written in brackets, IPv4 without")
    return "ip", str(address), ipaddress.ip_network(address)


def parse_host_pattern(text: str) -> HostPattern:
    """Parse ``scheme://host[:port]``; raises :class:`HostPatternError` with the reason."""
    if not isinstance(text, str) or text != text.strip() or not text:
        raise HostPatternError("a host pattern is a non-empty string without surrounding spaces")
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise HostPatternError(f"{text!r} must look like scheme://host[:port]")
    if not _SCHEME.fullmatch(scheme):
        raise HostPatternError(f"scheme {scheme!r} must be '*' or a lowercase name")
    if any(c in rest for c in "?#@"):
        raise HostPatternError(f"{text!r}: no query, fragment or user info is allowed")
    host, port_text = _split_host_port(rest)
    if not host:
        raise HostPatternError(f"{text!r} has no host")
    kind, host_norm, network = _parse_host(host)
    ports = _parse_ports(port_text)
    if ports is None and scheme != "*" and scheme not in DEFAULT_PORTS:
        raise HostPatternError(f"scheme {scheme!r} has no usual port: give one ({scheme}://host:PORT)")
    shown = f"[{host_norm}]" if kind == "ip" and ":" in host_norm else host_norm
    if kind == "suffix":
        shown = "*." + host_norm
    if kind == "cidr" and network is not None and network.version == 6:
        shown = f"[{network.network_address}]/{network.prefixlen}"
    port_shown = "" if ports is None else ("*" if ports == _ANY_PORT else
                                           f"{ports[0]}" if ports[0] == ports[1] else f"{ports[0]}..{ports[1]}")
    normal = f"{scheme}://{shown}" + (f":{port_shown}" if port_shown else "")
    return HostPattern(normal, scheme, kind, host_norm, network, ports)


def _port_ok(pattern: HostPattern, scheme: str, port: int) -> bool:
    if pattern.ports is None:
        return DEFAULT_PORTS.get(scheme) == port
    return pattern.ports[0] <= port <= pattern.ports[1]


def matches(pattern: HostPattern, scheme: str, host: str, port: int | None = None) -> bool:
    """Whether a connection to ``scheme://host:port`` (port None = the usual one) is admitted."""
    if pattern.scheme not in ("*", scheme):
        return False
    actual = DEFAULT_PORTS.get(scheme) if port is None else port
    if actual is None or not _port_ok(pattern, scheme, actual):
        return False
    host = host.lower().strip("[]")
    try:
        address: Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if pattern.kind == "any":
        return True
    if address is not None:
        return pattern.network is not None and address in pattern.network
    if pattern.kind == "suffix":
        return host.endswith("." + pattern.host)
    return pattern.kind == "name" and host == pattern.host


def _ports_covered(outer: HostPattern, inner: HostPattern) -> bool:
    if outer.ports == _ANY_PORT:
        return True
    if inner.ports is None:
        if outer.ports is None:  # both "the usual port"; schemes are equal or outer is '*'
            return True
        if inner.scheme == "*":
            return False
        usual = DEFAULT_PORTS[inner.scheme]
        return outer.ports[0] <= usual <= outer.ports[1]
    if outer.ports is None:
        if inner.scheme == "*":
            return False
        usual = DEFAULT_PORTS.get(inner.scheme)
        return inner.ports == (usual, usual)
    return outer.ports[0] <= inner.ports[0] and inner.ports[1] <= outer.ports[1]


def _hosts_covered(outer: HostPattern, inner: HostPattern) -> bool:
    if outer.kind == "any":
        return True
    if inner.kind == "any":
        return False
    if outer.kind == "suffix":
        return inner.kind in ("name", "suffix") and (
            inner.host.endswith("." + outer.host) or (inner.kind == "suffix" and inner.host == outer.host)
        )
    if outer.kind == "name":
        return inner.kind == "name" and inner.host == outer.host
    # outer is an IP or a CIDR: it covers addresses inside it, never names (they resolve anywhere)
    if inner.network is None or outer.network is None or inner.network.version != outer.network.version:
        return False
    return inner.network.subnet_of(outer.network)  # type: ignore[arg-type]


def covers(outer: HostPattern, inner: HostPattern) -> bool:
    """True only when every connection ``inner`` admits is admitted by ``outer``."""
    if outer.scheme != "*" and outer.scheme != inner.scheme:
        return False
    return _ports_covered(outer, inner) and _hosts_covered(outer, inner)


def parse_block_entry(text: str) -> tuple[Network, ...]:
    """A CIDR (or one address), or one of the words ``private``, ``loopback``, ``link-local``."""
    if not isinstance(text, str):
        raise HostPatternError("a block entry is a string")
    if text in BLOCK_WORDS:
        return BLOCK_WORDS[text]
    try:
        return (ipaddress.ip_network(text, strict=True),)
    except ValueError as exc:
        raise HostPatternError(
            f"block entry {text!r} is neither a CIDR nor one of {', '.join(BLOCK_WORDS)}: {exc}"
        ) from None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside IPv4-mapped, NAT64, 6to4 and IPv4-compatible forms."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    value = int(address)
    if address in ipaddress.ip_network("64:ff9b::/96") or (value >> 32 == 0 and value > 1):
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    return None


@dataclass(frozen=True, slots=True)
class BlockList:
    """Block entries, parsed; checked against every resolved address before connecting."""

    entries: tuple[str, ...]
    networks: tuple[tuple[str, tuple[Network, ...]], ...]

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> BlockList:
        kept = tuple(dict.fromkeys(entries))
        return cls(kept, tuple((entry, parse_block_entry(entry)) for entry in kept))

    def blocked_by(self, address: str | Address) -> str | None:
        """The first entry that blocks ``address`` (or the IPv4 address it embeds), else None."""
        parsed = ipaddress.ip_address(address.strip("[]") if isinstance(address, str) else address)
        candidates: list[Address] = [parsed]
        if isinstance(parsed, ipaddress.IPv6Address):
            embedded = _embedded_ipv4(parsed)
            if embedded is not None:
                candidates.append(embedded)
        for entry, networks in self.networks:
            for candidate in candidates:
                if any(candidate.version == n.version and candidate in n for n in networks):
                    return entry
        return None
