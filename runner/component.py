"""WASI preview-2 components: what they are linked with, how they start, and how a run ended.

A component runs in the same sandbox as a core module (:mod:`runner.sandbox`): the same engine and
epoch ticker, a fresh ``Store`` per job with the same ``WasiConfig`` (argv, env, stdin, captured
stdout and stderr, preopened mounts, read-only where the plan says ``ro``), the same fuel, memory,
table and stack limits, in the same worker processes. What differs, and lives here:

- **linking**: one ``component.Linker`` per engine with Wasmtime's WASI preview 2
  (``add_wasip2``). That also links ``wasi:sockets``, which the job's network grant cannot
  enforce, so a component that imports ``wasi:sockets/*`` or ``wasi:http/*`` is failed before it is
  instantiated (:func:`unlinked_import`); ``sandrun:http`` is not linked for components at all, so
  instantiating one that imports it fails naming the import.
- **the entry**: the ``run`` function of the ``wasi:cli/run`` export, found by Wasmtime's
  semver-compatible lookup (``wasi:cli/run@0.2.0`` finds ``@0.2.12``).
- **the ending**: a component's trap reaches Python as a ``WasmtimeError`` whose text names the
  trap (no trap code), so it is classified by that text; ``exit(n)`` arrives as ``ExitTrap``, and
  through the preview-1 adapter any non-zero ``n`` arrives as 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from wasmtime import Engine, ExitTrap, Store, Trap, WasmtimeError
from wasmtime.component import Component, Linker

from runner.results import TrapKind

__all__ = ["RUN_EXPORT", "UNLINKED_PREFIXES", "Ended", "new_linker", "unlinked_import", "run"]

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
    ``instantiating`` says the component never started (a missing import, a limit)."""

    exit_code: int | None = None
    trap: TrapKind | None = None
    text: str | None = None
    instantiating: bool = False


def new_linker(engine: Engine) -> Linker:
    """The linker every component job of ``engine`` shares: WASI preview 2 and nothing else."""
    linker = Linker(engine)
    linker.add_wasip2()
    return linker


def unlinked_import(component: Component, engine: Engine) -> str | None:
    """The first import of ``component`` that Sandrun refuses to provide, or None."""
    for name in component.type.imports(engine):
        if name.startswith(UNLINKED_PREFIXES):
            return name
    return None


def _classify(exc: Trap | WasmtimeError) -> Ended:
    if isinstance(exc, ExitTrap):
        return Ended(exit_code=exc.code)
    text = str(exc)
    for needle, kind in _TRAP_TEXTS:
        if needle in text:
            return Ended(trap=kind, text=text)
    return Ended(trap="trap", text=text)


def run(store: Store, linker: Linker, component: Component) -> Ended:
    """Instantiate ``component`` in ``store`` and call its ``wasi:cli/run``; every way the guest
    can end becomes an :class:`Ended`."""
    engine = linker.engine
    refused = unlinked_import(component, engine)
    if refused is not None:
        return Ended(
            trap="trap",
            text=f"the component imports {refused}, which Sandrun does not link "
            "(no wasi:sockets or wasi:http for components: docs/components.md)",
            instantiating=True,
        )
    try:
        instance = linker.instantiate(store, component)
    except (Trap, WasmtimeError) as exc:
        # the first line names what failed (the import, the limit); the causes below it do not
        first = (str(exc).strip().splitlines() or ["instantiation failed"])[0]
        kind: TrapKind = "memory" if _MEMORY_TEXT in first else "trap"
        return Ended(trap=kind, text=first, instantiating=True)
    interface = component.get_export_index(RUN_EXPORT)
    entry = None if interface is None else component.get_export_index("run", interface)
    func = None if entry is None else instance.get_func(store, entry)
    if func is None:
        return Ended(trap="trap", text="the component exports no wasi:cli/run (0.2.x) run function")
    try:
        result = func(store)
    except (Trap, WasmtimeError) as exc:
        return _classify(exc)
    # ``result<_, _>``: ok is exit code 0; err is what the adapter makes of a failing ``main``.
    return Ended(exit_code=0 if getattr(result, "tag", "ok") == "ok" else 1)
