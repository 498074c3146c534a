"""WASI preview-2 components: what they are linked with, how they start, and how a run ended.

A component runs in the same sandbox as a core module (:mod:`runner.sandbox`): the same engine and
epoch ticker, a fresh ``Store`` per job with the same ``WasiConfig`` (argv, env, stdin, captured
stdout and stderr, preopened mounts, read-only where the plan says ``ro``), the same fuel, memory,
table and stack limits, in the same worker processes. What differs, and lives here:

- **linking**: one ``component.Linker`` per engine with Wasmtime's WASI preview 2
  (``add_wasip2``). That also links ``wasi:sockets``, which the job's network grant cannot
  enforce, so a component that imports ``wasi:sockets/*`` or ``wasi:http/*`` is failed before it is
  instantiated (:func:`unlinked_import`). The network goes through ``sandrun:http/client``
  (:mod:`runner.egress.wit_host`), linked like the core ABI, its import type checked first.
- **the entry**: the ``run`` function of the ``wasi:cli/run`` export, found by Wasmtime's
  semver-compatible lookup (``wasi:cli/run@0.2.0`` finds ``@0.2.12``); or, for a job that sets
  ``invoke``, the typed export its WAVE call names (:mod:`runner.invoke`).
- **the ending**: a component's trap reaches Python as a ``WasmtimeError`` whose text names the
  trap (no trap code), so it is classified by that text; ``exit(n)`` arrives as ``ExitTrap``, and
  through the preview-1 adapter any non-zero ``n`` arrives as 1.
- **hermetic jobs**: :func:`hermetic_linker` shadows the clock and random functions of
  ``wasi:clocks/*`` and ``wasi:random/*`` with the job's :class:`~runner.hermetic.VirtualWorld`, at
  exactly the versions the component imports (Wasmtime resolves an import to a definition of the
  same version before a semver-compatible one). Sleeps (``subscribe-duration``, ``subscribe-instant``
  and ``wasi:io/poll``) stay Wasmtime's: their pollables are host resources that cannot be made
  from Python, so a hermetic component's sleep takes real time (its clocks still read virtual).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wasmtime import Engine, ExitTrap, Store, Trap, WasmtimeError
from wasmtime.component import Component, ExportIndex, Linker, Record

from runner.hermetic import VirtualWorld
from runner.results import TrapKind

if TYPE_CHECKING:
    from runner.invoke import InvokeError, InvokeResult

__all__ = [
    "RUN_EXPORT",
    "UNLINKED_PREFIXES",
    "Ended",
    "new_linker",
    "unlinked_import",
    "virtual_imports",
    "hermetic_linker",
    "run",
]

#: The command entry; Wasmtime resolves it to the component's own ``0.2.x`` export.
RUN_EXPORT = "wasi:cli/run@0.2.0"
#: Interfaces a component may not import: ``add_wasip2`` links sockets, which nothing would police.
UNLINKED_PREFIXES = ("wasi:sockets/", "wasi:http/")

# Wasmtime's texts for the traps a job result names (its ``Trap`` Display strings).
_TRAP_TEXTS: tuple[tuple[str, TrapKind], ...] = (
    ("wasm trap: all fuel consumed by WebAssembly", "out_of_fuel"),
    ("wasm trap: call stack exhausted", "stack_overflow"),
    ("wasm trap: interrupt", "timeout"),
)
_MEMORY_TEXT = "exceeds memory limits"  # an initial memory above the job's cap


@dataclass(frozen=True, slots=True)
class Ended:
    """How a component's run ended: an exit code, or a trap kind and Wasmtime's text.
    ``instantiating`` says the component never started (a missing import, a limit); ``invoked``
    and ``refused`` are an ``invoke`` call's results or the rule that refused its arguments."""

    exit_code: int | None = None
    trap: TrapKind | None = None
    text: str | None = None
    instantiating: bool = False
    invoked: InvokeResult | None = None
    refused: InvokeError | None = None


def new_linker(engine: Engine) -> Linker:
    """The linker every component job of ``engine`` shares: WASI preview 2 and
    ``sandrun:http/client`` bound to the calling thread's job (its grant decides every request)."""
    from runner.egress import wit_host  # component jobs only: the egress layer imports ssl

    linker = Linker(engine)
    linker.add_wasip2()
    wit_host.define_client(linker)
    return linker


# --- hermetic jobs: virtual clocks and random -------------------------------------------------

WorldOf = Callable[[], VirtualWorld | None]
_NS = 1_000_000_000
_MAX_RANDOM = 64 << 20  # bytes one random call may ask for (the host allocates them)


def _datetime(ns: int) -> Record:
    value = Record()  # WIT's ``datetime``; the record's fields are set by name
    seconds, nanoseconds = divmod(ns, _NS)
    setattr(value, "seconds", seconds)  # noqa: B010
    setattr(value, "nanoseconds", nanoseconds)  # noqa: B010
    return value


def _random_bytes(world: VirtualWorld, count: int) -> bytes:
    if count > _MAX_RANDOM:
        raise WasmtimeError(f"a random call asked for {count} bytes (at most {_MAX_RANDOM})")
    return world.random_bytes(count)


def _random_u64(world: VirtualWorld) -> int:
    return int.from_bytes(world.random_bytes(8), "little")


#: Interface -> function -> what it returns, from the job's virtual world.
_VIRTUAL: Mapping[str, Mapping[str, Callable[..., Any]]] = {
    "wasi:clocks/monotonic-clock": {
        "now": lambda world: world.read(False),
        "resolution": lambda world: world.hermetic.tick_ns,
    },
    "wasi:clocks/wall-clock": {
        "now": lambda world: _datetime(world.read(True)),
        "resolution": lambda world: _datetime(world.hermetic.tick_ns),
    },
    "wasi:random/random": {"get-random-bytes": _random_bytes, "get-random-u64": _random_u64},
    "wasi:random/insecure": {
        "get-insecure-random-bytes": _random_bytes,
        "get-insecure-random-u64": _random_u64,
    },
    "wasi:random/insecure-seed": {"insecure-seed": lambda world: (_random_u64(world), _random_u64(world))},
}


@dataclass(frozen=True, slots=True)
class _Facts:
    """What every run of one compiled component looks up: its imports and its run entry."""

    imports: tuple[str, ...]
    entry: ExportIndex | None


_facts_of: weakref.WeakKeyDictionary[Component, _Facts] = weakref.WeakKeyDictionary()
_facts_lock = threading.Lock()


def _facts(component: Component, engine: Engine) -> _Facts:
    """Read once per compiled component: reading its type costs more than running a tiny job."""
    with _facts_lock:
        facts = _facts_of.get(component)
    if facts is None:
        interface = component.get_export_index(RUN_EXPORT)
        entry = None if interface is None else component.get_export_index("run", interface)
        facts = _Facts(tuple(component.type.imports(engine)), entry)
        with _facts_lock:
            _facts_of[component] = facts
    return facts


def _imports(component: Component, engine: Engine) -> tuple[str, ...]:
    return _facts(component, engine).imports


def virtual_imports(component: Component, engine: Engine) -> tuple[str, ...]:
    """The clock and random interfaces ``component`` imports, with their versions, sorted."""
    return tuple(sorted(name for name in _imports(component, engine) if name.split("@")[0] in _VIRTUAL))


def _virtual(function: Callable[..., Any], world_of: WorldOf) -> Callable[..., Any]:
    """A host function over the job's world. It raises only ``WasmtimeError`` (the guest traps
    with its text): wasmtime-py passes any other exception through a module global, which is racy
    when several threads run guests."""

    def host(_store: object, *args: Any) -> Any:
        world = world_of()
        if world is None:  # only hermetic jobs use this linker: a bug of ours, stop the guest
            raise WasmtimeError("a hermetic component ran without its virtual world")
        try:
            return function(world, *args)
        except WasmtimeError:
            raise
        except Exception as exc:
            raise WasmtimeError(f"sandrun: {type(exc).__name__}: {exc}") from None

    return host


def hermetic_linker(engine: Engine, interfaces: tuple[str, ...], world_of: WorldOf) -> Linker:
    """A WASI preview-2 linker whose clocks and random come from ``world_of()`` for the given
    ``interfaces`` (from :func:`virtual_imports`: each at the version a component imports)."""
    linker = new_linker(engine)
    linker.allow_shadowing = True
    with linker.root() as root:
        for name in interfaces:
            with root.add_instance(name) as instance:
                for function, body in _VIRTUAL[name.split("@")[0]].items():
                    instance.add_func(function, _virtual(body, world_of))
    return linker


def unlinked_import(component: Component, engine: Engine) -> str | None:
    """The first import of ``component`` that Sandrun refuses to provide, or None."""
    for name in _imports(component, engine):
        if name.startswith(UNLINKED_PREFIXES):
            return name
    return None


def _cause(text: str) -> str:
    """The innermost cause in a Wasmtime error's text: the last line after its last ``Caused by:``.

    A component's trap reads ``error while executing at wasm backtrace: <frames> Caused by: <trap>``
    and the frames carry the guest's own function names (its name section), which may hold any
    text, line breaks and ``Caused by:`` included: only what Wasmtime wrote after them is the cause.
    """
    _, marker, causes = text.rpartition("\nCaused by:\n")
    lines = (causes if marker else text).strip().splitlines()
    last = lines[-1].strip() if lines else ""
    number, colon, rest = last.partition(": ")  # several causes are numbered: "1: wasm trap: ..."
    return rest if colon and number.isdigit() else last


def _classify(exc: Trap | WasmtimeError) -> Ended:
    if isinstance(exc, ExitTrap):
        return Ended(exit_code=exc.code)
    cause = _cause(str(exc))
    for trap_text, kind in _TRAP_TEXTS:
        if cause == trap_text:
            return Ended(trap=kind, text=cause)
    return Ended(trap="trap", text=cause)


def _import_refusal(component: Component, engine: Engine) -> str | None:
    """Why ``component`` cannot be given what it imports, or None."""
    refused = unlinked_import(component, engine)
    if refused is not None:
        return (
            f"the component imports {refused}, which Sandrun does not link "
            "(no wasi:sockets or wasi:http for components: docs/components.md)"
        )
    from runner.egress import wit_host

    if wit_host.INTERFACE not in _imports(component, engine):
        return None  # reading the import's type costs more than a tiny job: only when imported
    problem = wit_host.import_problem(component, engine)
    return None if problem is None else f"[{wit_host.IMPORT_RULE}] {problem}"


def _invoke(store: Store, instance: Any, text: str) -> Ended:
    """Call the typed export the WAVE call ``text`` names (docs/invoke.md)."""
    from runner.invoke import InvokeError, invoke_component  # invoke jobs only

    try:
        return Ended(exit_code=0, invoked=invoke_component(store, instance, text))
    except InvokeError as exc:
        return Ended(trap="trap", text=exc.message, refused=exc)
    except (Trap, WasmtimeError) as exc:
        return _classify(exc)


def run(store: Store, linker: Linker, component: Component, invoke: str | None = None) -> Ended:
    """Instantiate ``component`` in ``store`` and call its ``wasi:cli/run``, or the export the WAVE
    call ``invoke`` names; every way the guest can end becomes an :class:`Ended`."""
    engine = linker.engine
    refusal = _import_refusal(component, engine)
    if refusal is not None:
        return Ended(trap="trap", text=refusal, instantiating=True)
    try:
        instance = linker.instantiate(store, component)
    except (Trap, WasmtimeError) as exc:
        # the first line names what failed (the import, the limit); the causes below it do not
        first = (str(exc).strip().splitlines() or ["instantiation failed"])[0]
        kind: TrapKind = "memory" if _MEMORY_TEXT in first else "trap"
        return Ended(trap=kind, text=first, instantiating=True)
    if invoke is not None:
        return _invoke(store, instance, invoke)
    entry = _facts(component, engine).entry
    func = None if entry is None else instance.get_func(store, entry)
    if func is None:
        return Ended(trap="trap", text="the component exports no wasi:cli/run (0.2.x) run function")
    try:
        result = func(store)
    except (Trap, WasmtimeError) as exc:
        return _classify(exc)
    # ``result<_, _>``: ok is exit code 0; err is what the adapter makes of a failing ``main``.
    return Ended(exit_code=0 if getattr(result, "tag", "ok") == "ok" else 1)
