"""The WebAssembly proposals the engine enables, stated rather than inherited from wasmtime-py.

Which proposals a module may use is part of what a plan approves: the engine enables exactly
:data:`ENGINE_FEATURES` (today's Wasmtime defaults, written out, so an upgrade cannot widen them
silently), and a policy may deny any of them (``modules.wasm_features: {gc: false}``); a plan
then records the set its modules were validated against, and a module that needs a denied one
is refused before any job runs (rule ``tool.module.wasm-feature``).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["ENGINE_FEATURES", "FEATURE_NAMES", "enabled"]

#: Every proposal a policy may name, and whether the engine enables it.
ENGINE_FEATURES: Mapping[str, bool] = {
    "bulk_memory": True,
    "multi_value": True,
    "reference_types": True,
    "simd": True,
    "relaxed_simd": True,
    "tail_call": True,
    "multi_memory": True,
    "memory64": True,
    "threads": True,
    "exceptions": True,
    "function_references": True,
    "gc": True,
    "wide_arithmetic": True,
    "custom_page_sizes": False,
    "stack_switching": False,
}
FEATURE_NAMES: tuple[str, ...] = tuple(ENGINE_FEATURES)


def enabled(denied: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """The engine's proposals less ``denied``, in a fixed order (what a plan records)."""
    return tuple(name for name, on in ENGINE_FEATURES.items() if on and name not in denied)
