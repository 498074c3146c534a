"""What a job may reach: allow entries (host pattern, methods, path prefixes) and address blocks.

The egress layer asks two questions per hop, in this order: may this URL and method be requested
at all (:meth:`Grant.admit`, before any lookup), and may this resolved address be dialled
(:meth:`Grant.address_verdict`, for every address a name resolves to). Each refusal carries a
stable rule id that the guest sees as an error code and the audit log records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from runner.egress.urls import Url
from runner.hosts import BlockList, HostPattern, covers, matches, parse_block_entry, parse_host_pattern

__all__ = ["METHODS", "Denied", "AllowEntry", "Grant", "UNROUTABLE", "blocked_entirely"]

#: The methods a request may use; an allow entry may narrow them.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

#: Addresses no grant reaches: they are not destinations but wildcards or group addresses
#: (``0.0.0.0`` and ``[::]`` reach the local host on Linux).
UNROUTABLE = BlockList.from_entries(("0.0.0.0/8", "::/128", "224.0.0.0/4", "240.0.0.0/4", "ff00::/8"))


class Denied(Exception):
    """A hop the grant refuses: ``rule`` is a stable id (``net.not-allowed``, ``net.blocked`` ...)."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


@dataclass(frozen=True, slots=True)
class AllowEntry:
    """One allow entry: a host pattern, and optionally the methods and path prefixes it permits."""

    pattern: HostPattern
    methods: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, entry: str | Mapping[str, Any]) -> AllowEntry:
        """From the plan's form: a pattern string, or ``{host, methods?, paths?}``."""
        if isinstance(entry, str):
            return cls(parse_host_pattern(entry))
        methods = entry.get("methods")
        paths = entry.get("paths")
        return cls(
            parse_host_pattern(entry["host"]),
            None if methods is None else tuple(m.upper() for m in methods),
            None if paths is None else tuple(paths),
        )

    def covered_by(self, outer: AllowEntry) -> bool:
        """True only when every request this entry admits, ``outer`` admits too: its host pattern
        covers ours, and its methods and path prefixes are no narrower than ours."""
        if not covers(outer.pattern, self.pattern):
            return False
        if outer.methods is not None and (
            self.methods is None or not set(self.methods) <= set(outer.methods)
        ):
            return False
        if outer.paths is None:
            return True
        return self.paths is not None and all(
            any(path.startswith(prefix) for prefix in outer.paths) for path in self.paths
        )

    def why_not(self, url: Url, method: str) -> str | None:
        """None when this entry admits the request; else the rule that refuses it."""
        if not matches(self.pattern, url.scheme, url.host, url.port):
            return "net.not-allowed"
        return self.why_not_on_its_host(url, method)

    def why_not_on_its_host(self, url: Url, method: str) -> str | None:
        """:meth:`why_not` for a URL whose scheme, host and port this entry's pattern admits."""
        if self.methods is not None and method not in self.methods:
            return "net.method"
        if self.paths is not None and not any(url.path.startswith(prefix) for prefix in self.paths):
            return "net.path"
        return None


@dataclass(frozen=True, slots=True)
class Grant:
    """A job's network grant, parsed once when the job starts. An empty grant refuses everything."""

    allow: tuple[AllowEntry, ...]
    blocks: BlockList

    @classmethod
    def from_plan(cls, allow: Iterable[str | Mapping[str, Any]], block: Iterable[str]) -> Grant:
        return cls(tuple(AllowEntry.parse(entry) for entry in allow), BlockList.from_entries(block))

    @classmethod
    def none(cls) -> Grant:
        return cls((), BlockList.from_entries(()))

    def for_origin(self, url: Url) -> tuple[AllowEntry, ...]:
        """The entries whose host pattern admits ``url``'s scheme, host and port: a pure function
        of the origin, so a job may keep it per origin and pass it to :meth:`admit`."""
        return tuple(entry for entry in self.allow if matches(entry.pattern, url.scheme, url.host, url.port))

    def admit(self, url: Url, method: str, entries: tuple[AllowEntry, ...] | None = None) -> None:
        """Raise :class:`Denied` unless an entry admits ``method`` on ``url``; addresses (a literal
        one too) are judged afterwards by :meth:`address_verdict`. ``entries``: what
        :meth:`for_origin` answered for this URL's origin (found now when None)."""
        if not self.allow:
            raise Denied("net.no-grant", "the job has no network grant")
        on_host = self.for_origin(url) if entries is None else entries
        reasons = [entry.why_not_on_its_host(url, method) for entry in on_host] or ["net.not-allowed"]
        if None not in reasons:
            # the most specific reason: the host matched but the method or the path did not
            rule = min(reasons, key=lambda r: ("net.path", "net.method", "net.not-allowed").index(str(r)))
            what = {"net.path": f"path {url.path!r}", "net.method": f"method {method}"}.get(
                str(rule), f"{url.scheme}://{url.authority}"
            )
            raise Denied(str(rule), f"{what} is not allowed by the job's network grant")

    def address_verdict(self, address: IPv4Address | IPv6Address) -> None:
        """Raise :class:`Denied` when ``address`` (or an IPv4 address it carries) is blocked."""
        entry = self.blocks.blocked_by(address)
        if entry is not None:
            raise Denied("net.blocked", f"address {address} is blocked by {entry!r}")
        entry = UNROUTABLE.blocked_by(address)
        if entry is not None:
            raise Denied("net.unroutable", f"address {address} is inside {entry}, which is never dialled")


def blocked_entirely(pattern: HostPattern, blocks: Iterable[str]) -> str | None:
    """The block entry (or never-dialled range) that contains every address ``pattern`` admits, so
    the entry can never succeed; None when some address may get through. Names resolve at run
    time, so only address and CIDR patterns can be judged here."""
    network = pattern.network
    if network is None:
        return None
    for entry in (*blocks, *UNROUTABLE.entries):
        for blocked in parse_block_entry(entry):
            if blocked.version == network.version and network.subnet_of(blocked):  # type: ignore[arg-type]
                return entry
    return None
