"""Strict URLs for the egress layer: parsed once, refused whenever two readers could disagree.

A URL that a policy check, a resolver and a server might each read differently is an SSRF hole
(``http://a.org\\@10.0.0.1/``, ``http://0177.0.0.1/``, ``http://127.1/``), so the grammar is small:
``http`` or ``https``, a host the host-pattern grammar accepts (:func:`runner.hosts.runtime_host`),
an optional decimal port, and a path and query of printable ASCII. Dot segments (also with
``;parameters``, ``..;/``, which Tomcat and Spring read as ``..``), encoded slashes, backslashes,
dots and semicolons, encoded control characters (``%00``) and escapes that are not UTF-8 (the
overlong ``%c0%ae``) are refused so that a path prefix in a grant means what it says to every
server behind it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from urllib.parse import unquote_to_bytes

from runner.hosts import HostPatternError, runtime_host

__all__ = ["SCHEMES", "UrlError", "Url", "parse_url"]

#: The schemes ``sandrun:http`` speaks, and their usual ports.
SCHEMES = {"http": 80, "https": 443}

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
# RFC 3986 pchar plus "/" and "?"; "%" only as a two-digit escape (checked below).
_TARGET = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# encoded '.', '/', '\\', ';' and control characters: a server that decodes before it splits the
# path (or truncates at NUL) would read other segments than the grant checked
_ENCODED_SEPARATOR = re.compile(r"%(?:2[eEfF]|5[cC]|3[bB]|[01][0-9a-fA-F]|7[fF])")
_MAX_URL = 8192
_PRINTABLE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces


class UrlError(ValueError):
    """A URL the egress layer refuses; ``code`` is stable (``url.scheme``, ``url.host``, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Url:
    """A checked URL. ``host`` is a normalised name or an address's text (IPv6 without brackets)."""

    scheme: str
    host: str
    address: IPv4Address | IPv6Address | None
    port: int
    target: str  # path and query, always starting with "/"

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def authority(self) -> str:
        """``host[:port]`` as sent in ``Host:`` (the port only when it is not the usual one)."""
        host = f"[{self.host}]" if isinstance(self.address, IPv6Address) else self.host
        return host if self.port == SCHEMES[self.scheme] else f"{host}:{self.port}"

    @property
    def text(self) -> str:
        return f"{self.scheme}://{self.authority}{self.target}"


def parse_url(text: str) -> Url:
    """Parse ``text`` or raise :class:`UrlError` saying why not. A fragment is dropped (never sent)."""
    if not isinstance(text, str) or not text:
        raise UrlError("url.empty", "the URL is empty")
    if len(text) > _MAX_URL:
        raise UrlError("url.length", f"the URL is longer than {_MAX_URL} characters")
    if not _PRINTABLE.fullmatch(text):
        raise UrlError(
            "url.character", "only printable ASCII without spaces (write IDN hosts as xn-- A-labels)"
        )
    if "\\" in text:
        raise UrlError("url.backslash", "backslashes are refused: parsers disagree about them")
    text = text.partition("#")[0]
    scheme_text, sep, rest = text.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme_text):
        raise UrlError("url.scheme", "expected http://host/... or https://host/...")
    scheme = scheme_text.lower()
    if scheme not in SCHEMES:
        raise UrlError("url.scheme", f"scheme {scheme!r} is not spoken here: only http and https")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, target = rest[:cut], rest[cut:]
    host_text, port = _split_authority(authority, SCHEMES[scheme])
    if "%" in host_text:
        raise UrlError("url.host", "'%' in a host (escapes or IPv6 zone ids) is refused")
    try:
        host, address = _host(host_text)
    except HostPatternError as exc:
        raise UrlError("url.host", f"host {host_text!r}: {exc.message}") from None
    return Url(scheme=scheme, host=host, address=address, port=port, target=_check_target(target or "/"))


@functools.lru_cache(maxsize=1024)
def _host(text: str) -> tuple[str, IPv4Address | IPv6Address | None]:
    """The host's normal text and its address when it is a literal. Remembered per process: a pure
    function of ``text`` (a refusal raises anew each time, nothing of it is kept)."""
    host = runtime_host(text)
    return str(host), None if isinstance(host, str) else host


def _split_authority(authority: str, usual: int) -> tuple[str, int]:
    if "@" in authority:
        raise UrlError("url.userinfo", "user info (user@host) is refused: credentials go in headers")
    if not authority:
        raise UrlError("url.host", "the host is empty")
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise UrlError("url.host", "unclosed '[' in the host")
        host_text, after = authority[: close + 1], authority[close + 1 :]
        if after and not after.startswith(":"):
            raise UrlError("url.host", "only ':port' may follow a bracketed address")
        port_text = after[1:] if after else None
    else:
        host_text, colon, port_text_raw = authority.partition(":")
        port_text = port_text_raw if colon else None
    if port_text is None:
        return host_text, usual
    if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
        raise UrlError("url.port", f"port {port_text!r} must be a decimal 1..65535 without leading zeros")
    return host_text, int(port_text)


def _check_target(target: str) -> str:
    if not target.startswith("/"):
        target = "/" + target  # "http://h?q" has an empty path
    if not _TARGET.fullmatch(target) or _ESCAPE.search(target):
        raise UrlError("url.path", "the path or query has a character that must be %-escaped")
    path = target.partition("?")[0]
    if _ENCODED_SEPARATOR.search(path):
        raise UrlError(
            "url.path",
            "encoded '.', '/', '\\', ';' or controls in the path are refused (they dodge path grants)",
        )
    # RFC 3986 segments may carry ';parameters': servers that strip them read '..;x' as '..'
    if any(segment.partition(";")[0] in (".", "..") for segment in path.split("/")):
        raise UrlError("url.path", "dot segments ('.', '..', also '..;x') in the path are refused")
    # escapes that are not UTF-8: lenient decoders read the overlong '%c0%ae' as '.' (and '%c0%af' as '/')
    try:
        unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise UrlError("url.path", "%-escapes in the path that are not UTF-8 are refused") from None
    return target
