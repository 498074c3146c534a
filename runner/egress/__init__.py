"""The network capability's host side: strict URLs, grants, pinned and bounded HTTP, hop records.

Pure Python (no wasmtime): :mod:`runner.egress.abi` turns guest calls into :class:`Egress`
requests; the sandbox only links them. :mod:`runner.egress.wit_host`, imported only by the
component path, defines the same for components through wasmtime's component linker. The
contract is in ``docs/http.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.egress.client import Bounds, Egress, EgressError, Request, Response, Secret
    from runner.egress.rules import AllowEntry, Denied, Grant
    from runner.egress.transport import Connector, Resolver, Seam, SystemConnector, SystemResolver
    from runner.egress.urls import Url, UrlError, parse_url

__all__ = [
    "AllowEntry",
    "Bounds",
    "Connector",
    "Denied",
    "Egress",
    "EgressError",
    "Grant",
    "Request",
    "Resolver",
    "Response",
    "Seam",
    "Secret",
    "SystemConnector",
    "SystemResolver",
    "Url",
    "UrlError",
    "parse_url",
]

# Each name's submodule, imported on first use (PEP 562): a policy check reads only ``rules`` and
# ``urls``, and must not pay for ``client`` (httptools, ssl) on every start.
_HOMES = {
    **dict.fromkeys(("Bounds", "Egress", "EgressError", "Request", "Response", "Secret"), "client"),
    **dict.fromkeys(("AllowEntry", "Denied", "Grant"), "rules"),
    **dict.fromkeys(("Connector", "Resolver", "Seam", "SystemConnector", "SystemResolver"), "transport"),
    **dict.fromkeys(("Url", "UrlError", "parse_url"), "urls"),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
