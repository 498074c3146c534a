"""``sandrun:http/client`` for components (runner/egress/wit_host.py, wit/sandrun-http.wit): a
component written in component text, built here with ``wat2wasm``, imports the interface and
calls it against a loopback server. Allowed requests answer; refusals are ``err`` values with the
egress layer's rule ids, recorded like the core ABI's hops; nothing traps."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from netkit import http_server
from nettree import write_tree
from wasmtime import Engine, Store, WasmtimeError, wat2wasm
from wasmtime.component import Component, Linker

from runner.api import compile_manifests, run
from runner.egress import Bounds, Egress, Grant, Secret, abi, wit_host

ROOT = Path(__file__).resolve().parents[2]


def _component(imported: str, signature: str, arity: int, guest: str, exports: str) -> str:
    """A component whose core module ``guest`` imports ``http.request`` (core ``signature``) and
    gets the lowering of the imported instance's ``request``. The lowering needs the guest's
    memory and realloc, so the guest is instantiated first against a table slot filled after."""
    call = " ".join(f"(local.get {index})" for index in range(arity))
    return f"""
(component
  (import "sandrun:http/client" (instance $http {imported}))
  (core module $guest
    (import "http" "request" (func $request {signature}))
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 4096))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (local.set $at (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                              (i32.sub (i32.const 0) (local.get 2))))
      (global.set $heap (i32.add (local.get $at) (local.get 3)))
      (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
        (then (drop (memory.grow (i32.add (i32.const 1) (i32.shr_u
          (i32.sub (global.get $heap) (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)))))))
      (local.get $at))
    {guest})
  (core module $slot
    (table (export "table") 1 funcref)
    (func (export "request") {signature} (call_indirect {signature} {call} (i32.const 0))))
  (core instance $slot (instantiate $slot))
  (alias core export $slot "request" (core func $slot_request))
  (alias core export $slot "table" (core table $slot_table))
  (core instance $guest (instantiate $guest (with "http" (instance (export "request" (func $slot_request))))))
  (alias core export $guest "memory" (core memory $memory))
  (alias core export $guest "realloc" (core func $realloc))
  (alias export $http "request" (func $http_request))
  (core func $lowered (canon lower (func $http_request) (memory $memory) (realloc $realloc)))
  (core module $fill (import "" "table" (table 1 funcref)) (import "" "request" (func {signature}))
    (elem (i32.const 0) func 0))
  (core instance (instantiate $fill (with "" (instance (export "table" (table $slot_table))
                                                       (export "request" (func $lowered))))))
  {exports})
"""


# A guest component: `run(request, body)` calls sandrun:http/client's `request` and returns the
# status, or 1000 + the error-kind's index; `body`, `rule`, `message` and `header-count` read
# the last result back out of its memory (the canonical ABI's layout of the result at 1024:
# discriminant, then the record at 1028).
GUEST = _component(
    imported="""
    (type $kind (enum "invalid" "denied" "dns" "connect" "tls" "timeout" "too-large" "limit" "protocol"))
    (export "error-kind" (type $kind' (eq $kind)))
    (type $response (record (field "status" u16) (field "headers" (list (tuple string string)))
                            (field "body" (list u8))))
    (export "response" (type $response' (eq $response)))
    (type $error (record (field "kind" $kind') (field "rule" string) (field "message" string)))
    (export "request-error" (type $error' (eq $error)))
    (export "request" (func (param "request" string) (param "body" (list u8))
                            (result (result $response' (error $error')))))""",
    signature="(param i32 i32 i32 i32 i32)",
    arity=5,
    guest="""
    (func (export "run") (param i32 i32 i32 i32) (result i32)
      (call $request (local.get 0) (local.get 1) (local.get 2) (local.get 3) (i32.const 1024))
      (if (result i32) (i32.load8_u (i32.const 1024))
        (then (i32.add (i32.const 1000) (i32.load8_u (i32.const 1028))))
        (else (i32.load16_u (i32.const 1028)))))
    (func (export "header-count") (result i32) (i32.load (i32.const 1036)))
    (func (export "at-1032") (result i32) (i32.const 1032))
    (func (export "at-1040") (result i32) (i32.const 1040))""",
    exports="""
  (alias core export $guest "run" (core func $run))
  (alias core export $guest "header-count" (core func $header_count))
  (alias core export $guest "at-1032" (core func $at_1032))
  (alias core export $guest "at-1040" (core func $at_1040))
  (func (export "run") (param "request" string) (param "body" (list u8)) (result u32)
    (canon lift (core func $run) (memory $memory) (realloc $realloc)))
  (func (export "header-count") (result u32) (canon lift (core func $header_count)))
  (func (export "body") (result (list u8)) (canon lift (core func $at_1040) (memory $memory)))
  (func (export "rule") (result string) (canon lift (core func $at_1032) (memory $memory)))
  (func (export "message") (result string) (canon lift (core func $at_1040) (memory $memory)))""",
)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


@pytest.fixture(scope="module")
def component(engine: Engine) -> Component:
    return Component(engine, wat2wasm(GUEST))


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadingHTTPServer]:
    with http_server() as running:
        yield running


@dataclass
class Guest:
    """One instance of the guest component, and what its last call left behind."""

    store: Store
    instance: Any

    def call(self, name: str, *args: Any) -> Any:
        function = self.instance.get_func(self.store, name)
        result = function(self.store, *args)
        function.post_return(self.store)
        return result

    def request(self, request: str, body: bytes = b"") -> int:
        return int(self.call("run", request, body))


def _guest(engine: Engine, component: Component, session: abi.Session | None) -> Guest:
    linker = Linker(engine)
    wit_host.define_client(linker, session)
    store = Store(engine)
    return Guest(store, linker.instantiate(store, component))


def _session(allow: list[str], block: tuple[str, ...] = (), **kwargs: Any) -> abi.Session:
    return abi.Session(lambda: Egress(Grant.from_plan(allow, block), **kwargs))


def _refused(code: int) -> str:
    assert code >= 1000, f"expected an err value, got status {code}"
    return wit_host.ERROR_KINDS[code - 1000]


def test_an_allowed_get_reaches_the_loopback_server(
    engine: Engine, component: Component, server: ThreadingHTTPServer
) -> None:
    port = server.server_address[1]
    session = _session([f"http://127.0.0.1:{port}"])
    guest = _guest(engine, component, session)
    assert guest.request(f'{{"url": "http://127.0.0.1:{port}/ok"}}') == 200
    assert guest.call("body") == b"hello from loopback\n"
    assert guest.call("header-count") >= 2
    (hop,) = session.hops
    assert hop["verdict"] == "allowed" and hop["pinned"] == "127.0.0.1" and hop["status"] == 200


def test_the_request_body_reaches_the_server(
    engine: Engine, component: Component, server: ThreadingHTTPServer
) -> None:
    port = server.server_address[1]
    guest = _guest(engine, component, _session([f"http://127.0.0.1:{port}"]))
    code = guest.request(f'{{"url": "http://127.0.0.1:{port}/echo", "method": "POST"}}', b"payload\x00\xff")
    assert code == 200
    assert guest.call("body").endswith(b"\npayload\x00\xff")


@pytest.mark.parametrize(
    ("allow", "block", "url", "kind", "rule"),
    [
        ([], (), "http://127.0.0.1:{port}/ok", "denied", "net.no-grant"),
        (["http://example.org"], (), "http://127.0.0.1:{port}/ok", "denied", "net.not-allowed"),
        (["http://*:*"], ("private",), "http://127.0.0.1:{port}/ok", "denied", "net.blocked"),
        (["http://*:*"], ("private",), "http://[::ffff:127.0.0.1]:{port}/ok", "denied", "net.blocked"),
        (["http://*:*"], (), "http://0177.0.0.1:{port}/ok", "invalid", "url.host"),
        (["http://*:*"], (), "http://a@127.0.0.1:{port}/ok", "invalid", "url.userinfo"),
        (["http://*:*"], (), "file:///etc/passwd", "invalid", "url.scheme"),
    ],
)
def test_a_refusal_is_an_err_value_with_its_rule(
    engine: Engine,
    component: Component,
    server: ThreadingHTTPServer,
    allow: list[str],
    block: tuple[str, ...],
    url: str,
    kind: str,
    rule: str,
) -> None:
    port = server.server_address[1]
    session = _session(allow, block)
    guest = _guest(engine, component, session)
    before = len(server.seen)  # type: ignore[attr-defined]
    assert _refused(guest.request(f'{{"url": "{url.format(port=port)}"}}')) == kind
    assert guest.call("rule") == rule
    assert guest.call("message")
    assert len(server.seen) == before  # type: ignore[attr-defined]  # nothing reached the server
    assert session.hops[-1]["verdict"] == "denied" and session.hops[-1]["rule"] == rule


@pytest.mark.parametrize(
    "request_json",
    [
        "not json",
        '{"url": "http://127.0.0.1/", "url": "http://10.0.0.1/"}',
        '{"url": "http://127.0.0.1/", "proxy": "x"}',
        '{"url": "http://127.0.0.1/", "redirects": true}',
        '{"url": "http://127.0.0.1/", "headers": {"A": "1", "A": "2"}}',
        '["url"]',
    ],
)
def test_a_malformed_request_is_invalid_not_a_trap(
    engine: Engine, component: Component, request_json: str
) -> None:
    guest = _guest(engine, component, _session(["http://*:*"]))
    assert _refused(guest.request(request_json)) == "invalid"
    assert guest.call("rule") == "net.request"


def test_the_request_body_cap_is_kept(
    engine: Engine, component: Component, server: ThreadingHTTPServer
) -> None:
    port = server.server_address[1]
    session = _session([f"http://127.0.0.1:{port}"], bounds=Bounds(max_body=10))
    guest = _guest(engine, component, session)
    url = f"http://127.0.0.1:{port}/echo"
    assert _refused(guest.request(f'{{"url": "{url}", "method": "POST"}}', b"x" * 11)) == "too-large"
    assert guest.call("rule") == "net.body"


def test_a_response_over_the_component_cap_is_too_large(
    engine: Engine, component: Component, server: ThreadingHTTPServer
) -> None:
    port = server.server_address[1]
    guest = _guest(engine, component, _session([f"http://127.0.0.1:{port}"]))
    url = f"http://127.0.0.1:{port}/big?n={wit_host.BODY_MAX + 1}"
    assert _refused(guest.request(f'{{"url": "{url}"}}')) == "too-large"
    assert guest.call("rule") == "net.body"


def test_a_secret_reaches_the_server_and_never_the_component(
    engine: Engine, component: Component, server: ThreadingHTTPServer
) -> None:
    port = server.server_address[1]
    origin = f"http://127.0.0.1:{port}"
    secret = Secret.from_plan(
        {"origin": origin, "header": "Authorization", "env": "TOKEN", "format": "Bearer {}"},
        {"TOKEN": "s3cr3t-value"},
    )
    session = _session([origin], secrets=[secret])
    guest = _guest(engine, component, session)
    assert guest.request(f'{{"url": "{origin}/echo"}}') == 200
    assert server.seen[-1][2]["Authorization"] == "Bearer s3cr3t-value"  # type: ignore[attr-defined]
    body = guest.call("body")
    assert b"s3cr3t-value" not in body and b"[secret TOKEN]" in body
    assert session.hops[-1]["secrets"] == ["TOKEN"]


def test_the_thread_bound_session_serves_a_shared_linker(
    engine: Engine, component: Component, server: ThreadingHTTPServer
) -> None:
    port = server.server_address[1]
    guest = _guest(engine, component, None)
    # no job bound to this thread: refused, not a trap
    assert _refused(guest.request(f'{{"url": "http://127.0.0.1:{port}/ok"}}')) == "denied"
    session = _session([f"http://127.0.0.1:{port}"])
    with abi.bound(session):
        assert guest.request(f'{{"url": "http://127.0.0.1:{port}/ok"}}') == 200
    assert len(session.hops) == 1


def test_the_wit_file_declares_what_the_host_defines() -> None:
    wit = (ROOT / "wit" / "sandrun-http.wit").read_text()
    assert "package sandrun:http;" in wit
    assert wit_host.INTERFACE == "sandrun:http/client" and "interface client {" in wit
    enum = re.search(r"enum error-kind \{(.*?)\}", wit, re.S)
    assert enum is not None
    cases = re.findall(r"^\s*([a-z-]+),\s*$", enum.group(1), re.M)
    assert tuple(cases) == wit_host.ERROR_KINDS
    assert "request: func(request: string, body: list<u8>) -> result<response, request-error>;" in wit


# A guest importing `request` with the body as list<u32> and a bare u32 result: the host function
# is defined dynamically, so the type is the component's to declare, and must be checked.
MISTYPED = _component(
    imported="""(export "request" (func (param "request" string) (param "body" (list u32)) (result u32)))""",
    signature="(param i32 i32 i32 i32) (result i32)",
    arity=4,
    guest="""
    (func (export "run") (param i32 i32 i32 i32) (result i32)
      (call $request (local.get 0) (local.get 1) (local.get 2) (local.get 3)))""",
    exports="""
  (alias core export $guest "run" (core func $run))
  (func (export "run") (param "request" string) (param "body" (list u32)) (result u32)
    (canon lift (core func $run) (memory $memory) (realloc $realloc)))""",
)

EXTRA = r"""
(component
  (import "sandrun:http/client" (instance $http (export "socket" (func (param "fd" u32))))))
"""


def test_a_matching_import_has_no_problem(engine: Engine, component: Component) -> None:
    assert wit_host.import_problem(component, engine) is None
    plain = Component(engine, wat2wasm("(component)"))
    assert wit_host.import_problem(plain, engine) is None  # does not import the interface


@pytest.mark.parametrize(("text", "named"), [(MISTYPED, "list<u32>"), (EXTRA, "'socket'")])
def test_another_import_type_is_named_before_it_runs(engine: Engine, text: str, named: str) -> None:
    problem = wit_host.import_problem(Component(engine, wat2wasm(text)), engine)
    assert problem is not None and named in problem


def test_a_mistyped_import_traps_instead_of_being_misread(
    engine: Engine, server: ThreadingHTTPServer
) -> None:
    port = server.server_address[1]
    session = _session([f"http://127.0.0.1:{port}"])
    guest = _guest(engine, Component(engine, wat2wasm(MISTYPED)), session)
    before = len(server.seen)  # type: ignore[attr-defined]
    with pytest.raises(WasmtimeError, match="imported with another type"):
        guest.call("run", f'{{"url": "http://127.0.0.1:{port}/ok"}}', [1, 2, 3])
    assert len(server.seen) == before and session.hops == ()  # type: ignore[attr-defined]


# -- a component job through the compiler and the executor (worker processes): the job's grant
# decides, the hops are in the job's log, the result is the typed invoke's


def _component_job(root: Path, url: str, allow: list[str] | None) -> dict[str, Any]:
    """Run one job of the guest component calling ``run`` with a GET of ``url`` under the grant
    ``allow`` (None: no network grant); its report row and the ``net.request`` records."""
    request = json.dumps({"url": url}).replace("\\", "\\\\").replace('"', '\\"')
    manifest, policy = write_tree(
        root,
        policy_network={"allow": ["http://127.0.0.1:*"]},
        jobs=[
            {"name": "get", "invoke": f'run("{request}", [])'}
            | ({} if allow is None else {"network": {"allow": allow}})
        ],
        wasm=wat2wasm(GUEST),
    )
    outcome = run(lambda: compile_manifests([manifest], policy, root=root), root=root, out_dir=root / "out")
    (row,) = outcome.report["jobs"]
    records = [json.loads(line) for line in (root / "out" / "audit.jsonl").read_text().splitlines()]
    return {"row": row, "hops": [r["data"] for r in records if r["kind"] == "net.request"]}


def test_a_component_job_reaches_loopback_only_under_its_grant(
    tmp_path: Path, server: ThreadingHTTPServer
) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}/ok"
    allowed = _component_job(tmp_path / "yes", url, ["http://127.0.0.1:*"])
    assert allowed["row"]["invoke"]["json"] == [200], allowed["row"]
    assert [hop["verdict"] for hop in allowed["hops"]] == ["allowed"]
    refused = _component_job(tmp_path / "no", url, None)
    assert refused["row"]["invoke"]["json"] == [1000 + wit_host.ERROR_KINDS.index("denied")], refused["row"]
    assert refused["hops"] and all(hop["verdict"] != "allowed" for hop in refused["hops"])
