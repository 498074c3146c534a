"""The built-in catalog: small tools shipped inside the package, used as ``module: builtin:NAME``.

Each built-in is its own WebAssembly module, built reproducibly from ``runner/catalog/src/NAME.c``
(``scripts/build-wasm.sh runner/catalog -Wl,-z,stack-size=262144``; docs/catalog.md). The table
below is the package's pin: a manifest names a built-in without writing a digest, and the plan
records the digest from here. The bytes are checked against it when a plan is compiled and again
before they are compiled to machine code, so a changed ``.wasm`` file is refused, never run.

The table also holds each tool's gate actions (checked against the policy like any tool's) and
its own effect vector (added to the governance score of every job that uses it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from runner.policy.governance import AXES

__all__ = ["PREFIX", "SIGNER", "Builtin", "CATALOG", "CorruptBuiltin", "check_bytes", "lookup", "module_path"]

PREFIX = "builtin:"
#: The signer recorded for a built-in tool: its bytes are vouched for by the package's own pin.
SIGNER = "builtin"

_READ = ("tool.fs.read",)


@dataclass(frozen=True, slots=True, kw_only=True)
class Builtin:
    """One built-in tool: its name, the digest of its module, its gate actions and effects."""

    name: str
    sha256: str
    actions: tuple[str, ...]
    effects: tuple[tuple[str, float], ...]
    doc: str

    def __post_init__(self) -> None:
        for axis, weight in self.effects:
            if axis not in AXES or not 0 <= weight <= 1:
                raise ValueError(f"built-in {self.name}: bad effect {axis}={weight}")

    @property
    def module(self) -> str:
        """How manifests, plans and the audit log name it: ``builtin:NAME``."""
        return PREFIX + self.name


def _entry(name: str, sha256: str, actions: tuple[str, ...], doc: str, **effects: float) -> Builtin:
    return Builtin(name=name, sha256=sha256, actions=actions, effects=tuple(effects.items()), doc=doc)


# fmt: off
#: name -> built-in. The digests are those of the committed .wasm files; tests/unit/test_catalog.py
#: checks them, and rebuilding with the script reproduces the same bytes.
CATALOG: dict[str, Builtin] = {b.name: b for b in (
    _entry("echo", "a4c9e02fbfa79f59b311501fa5bf576d34a48280a409e0d8fceb0376abf71f34", (),
           "print the arguments (-n: no newline)"),
    _entry("true", "0251a0c05f642f445d507bb6bfb6c498506faa12f5fcd28fda0ba70b5e4107d6", (),
           "exit 0"),
    _entry("false", "07907ac9737e0abc74fa93a6741072abbb900856f667f9affb77a91ac1bd61f7", (),
           "exit 1"),
    _entry("cat", "c447866793c000463cc18b8f0c8b508e3c535c7a0c8e422a4e9f9d45fa75420c", _READ,
           "copy files (or stdin) to stdout", privacy=0.1),
    _entry("wc", "af1f02ee293e8f2574547d2b26af4670d110ebb34d4f7fbeb95e513d818ca0a0", _READ,
           "count lines, words and bytes (-l -w -c), as GNU wc prints them"),
    _entry("sha256sum", "f3f7566f732ce9ecbac0995a36d308866a02064ec6d84150b5162baba46ca4be", _READ,
           "print or check (-c) SHA-256 digests, as GNU sha256sum"),
    _entry("json-check", "b45f17e8f482e83b144829f8b3fabf684fa779bb1b6dc46f050128a0b98af03f", _READ,
           "validate strict JSON (RFC 8259, no duplicate keys); exit 1 if invalid"),
    _entry("yaml-check", "4b127da7f8b86f447928a076094af9c765e2b5653ad93884663f9edc0fee360a", _READ,
           "validate a strict YAML subset (docs/catalog.md); exit 1 if refused"),
    _entry("fs-analyze", "76ba4aff9868649fcfebe3538a656ad6e3ef73cc77f4251b6015de5c389894a5", _READ,
           "counts, sizes, depth and largest files of folders, as JSON", privacy=0.05),
    _entry("grep", "52e12a4da0a85e6e682575f587e66873629568276ec3db67530e16ea4663fe98", _READ,
           "pattern gate: exit 0 if a line matches, 1 if none, 2 on trouble", privacy=0.05),
    _entry("cmp", "48079d1885994be64535490a389e52d71fcfcd10039867295da0f03ed37b0b58", _READ,
           "compare two files byte by byte; exit 1 if they differ"),
    _entry("diff", "004ea67a457891df976bc963045f9ec866d27471e442ef6341fa8f76e28f2038", _READ,
           "which files of two paths differ, like diff -qr; exit 1 if any"),
)}
# fmt: on


class CorruptBuiltin(Exception):
    """The package's module file does not have the digest the catalog pins."""


def lookup(module: str) -> Builtin | None:
    """The built-in that ``builtin:NAME`` names, or None. Only an exact name of the table matches:
    the text is never joined into a path, so ``builtin:../x`` can name nothing."""
    if not module.startswith(PREFIX):
        return None
    return CATALOG.get(module[len(PREFIX) :])


def module_path(builtin: Builtin) -> Path:
    """Where the package keeps the module; its bytes must still be checked against ``sha256``."""
    from importlib import resources  # ~10 ms (tempfile, zipfile): only when a built-in is used

    return Path(str(resources.files(__name__).joinpath(f"{builtin.name}.wasm")))


def check_bytes(builtin: Builtin) -> None:
    """Raise :class:`CorruptBuiltin` unless the shipped module has the pinned digest."""
    try:
        digest = hashlib.sha256(module_path(builtin).read_bytes()).hexdigest()
    except OSError as exc:
        raise CorruptBuiltin(f"{builtin.module}: cannot read the module: {exc.strerror}") from None
    if digest != builtin.sha256:
        raise CorruptBuiltin(
            f"{builtin.module}: the package's module has sha256 {digest}, not {builtin.sha256}"
        )
