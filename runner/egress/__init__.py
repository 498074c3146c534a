"""The network capability's host side: strict URLs, grants, pinned and bounded HTTP, hop records.

Pure Python (no wasmtime): :mod:`runner.egress.abi` turns guest calls into :class:`Egress`
requests; the sandbox only links them. :mod:`runner.egress.wit_host`, imported only by the
component path, defines the same for components through wasmtime's component linker. The
contract is in ``docs/http.md``.
"""

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
