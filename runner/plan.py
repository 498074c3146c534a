"""The compiled plan: what the executor is allowed to do, and nothing more.

A plan is made by the policy compiler only after every check passed, so a :class:`Plan` that
exists is valid: the dataclasses are frozen, hold tuples, and check their invariants on creation.
Paths are stored relative to the compile root (POSIX separators), so the same commit compiles to
the same plan bytes, and so the same :attr:`Plan.sha256`, on every machine; the executor joins
them to its own root and checks them again before each job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from runner.canonical import canonical_json, sha256_hex
from runner.features import enabled
from runner.wasmfile import WasmKind

__all__ = [
    "PLAN_FORMAT",
    "plain",
    "DEFAULT_DISK",
    "MAX_WASM_STACK",
    "Limits",
    "ModuleLimits",
    "Mount",
    "work_dir_mount",
    "is_invoke_call",
    "Network",
    "Hermetic",
    "HttpRule",
    "NetLimits",
    "SecretRef",
    "Tool",
    "JobSpec",
    "InputFile",
    "PolicyRef",
    "Plan",
]

PLAN_FORMAT = "sandrun-plan/v1"
ENGINE_WASM_FEATURES = enabled()
DEFAULT_DISK = 1 << 30  # limits.disk when neither manifest nor policy sets one
#: The largest ``limits.stack`` an engine takes: Wasmtime refuses a ``max_wasm_stack`` above its
#: async stack size (2 MiB, which wasmtime-py cannot raise) by aborting the whole process.
MAX_WASM_STACK = 2 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KINDS = ("module", "component")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_relative_posix(path: str) -> bool:
    return (
        isinstance(path, str)
        and not path.startswith("/")
        and "\\" not in path
        and ".." not in path.split("/")
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Concrete limits of one job. ``fuel=None`` means no fuel metering (it costs time).

    ``disk`` is the largest file a job may write (the worker's ``RLIMIT_FSIZE``); plans written
    before it existed get the built-in default.
    """

    fuel: int | None
    memory: int
    timeout_ms: int
    stack: int
    output: int
    disk: int = DEFAULT_DISK

    def __post_init__(self) -> None:
        _require(self.fuel is None or self.fuel > 0, "fuel must be positive")
        for name in ("memory", "timeout_ms", "stack", "output", "disk"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value > 0, f"{name} must be a positive integer")
        _require(self.stack <= MAX_WASM_STACK, f"stack must be at most {MAX_WASM_STACK} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModuleLimits:
    """Bounds on a module before any job runs: its file size and compiling it (the policy's ``modules``)."""

    max_size: int = 64 << 20
    compile_timeout_ms: int = 60_000
    compile_memory: int = 2 << 30

    def __post_init__(self) -> None:
        for name in ("max_size", "compile_timeout_ms", "compile_memory"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value > 0, f"{name} must be a positive integer")


@dataclass(frozen=True, slots=True, kw_only=True)
class Mount:
    """A preopened directory: ``host`` relative to the root, ``guest`` absolute in the guest."""

    host: str
    guest: str
    mode: Literal["ro", "rw"]

    def __post_init__(self) -> None:
        _require(_is_relative_posix(self.host), f"mount host path must be relative: {self.host!r}")
        _require(self.guest.startswith("/"), f"guest path must be absolute: {self.guest!r}")
        _require(self.mode in ("ro", "rw"), f"mount mode must be ro or rw: {self.mode!r}")


def is_invoke_call(invoke: str) -> bool:
    """Whether a job's ``invoke`` is a WAVE call expression (``add(1, 2)``) rather than a bare
    export name whose arguments are the job's ``args`` (docs/invoke.md)."""
    return "(" in invoke


def work_dir_mount(mounts: tuple[Mount, ...], work_dir: str) -> tuple[Mount, str] | None:
    """The mount a job's ``work_dir`` lies in and the folder's path below it (``""``: the mount
    itself); None when it lies in none, or is not a plain absolute path (``.``/``..``, ``//``)."""
    parts = work_dir.split("/")
    if not work_dir.startswith("/") or any(part in (".", "..") for part in parts) or "//" in work_dir:
        return None
    path = work_dir.rstrip("/") or "/"
    for mount in mounts:
        if path == mount.guest:
            return mount, ""
        prefix = mount.guest.rstrip("/") + "/"
        if path.startswith(prefix):
            return mount, path[len(prefix) :]
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpRule:
    """An allow entry's object form: a host pattern narrowed to some methods and path prefixes."""

    host: str
    methods: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretRef:
    """A header the host adds for one origin, its value read from the runner's environment
    variable ``env`` at run time: the plan holds the name, never the value."""

    origin: str
    header: str
    env: str
    format: str = "{}"


@dataclass(frozen=True, slots=True, kw_only=True)
class NetLimits:
    """Bounds of ``sandrun:http`` for one job (the defaults are the built-in caps)."""

    timeout_ms: int = 30_000
    body: int = 16 << 20
    requests: int = 64
    handles: int = 8

    def __post_init__(self) -> None:
        for name in ("timeout_ms", "body", "requests", "handles"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value > 0, f"network {name} must be a positive integer")


@dataclass(frozen=True, slots=True, kw_only=True)
class Network:
    """Outbound network grant: host patterns allowed, and address blocks always refused."""

    allow: tuple[str | HttpRule, ...]
    block: tuple[str, ...]
    secrets: tuple[SecretRef, ...] = ()
    limits: NetLimits = NetLimits()


@dataclass(frozen=True, slots=True, kw_only=True)
class Hermetic:
    """A hermetic job's virtual world: the clock's start and tick, and the random stream's seed.

    Fixed by the compiler (docs/hermetic.md), so the plan, and the log, say exactly what the guest saw.
    """

    epoch_ns: int
    tick_ns: int
    seed: int

    def __post_init__(self) -> None:
        _require(isinstance(self.epoch_ns, int) and 0 <= self.epoch_ns < 1 << 63, "epoch_ns out of range")
        _require(isinstance(self.tick_ns, int) and 0 < self.tick_ns <= 1 << 40, "tick_ns out of range")
        _require(isinstance(self.seed, int) and 0 <= self.seed < 1 << 64, "seed must fit 64 bits")


@dataclass(frozen=True, slots=True, kw_only=True)
class Tool:
    """A registered tool: the bytes (by digest) and who vouched for them."""

    manifest: str
    name: str
    module: str
    sha256: str
    version: str | None
    signer: str | None
    signature_verified: bool
    actions: tuple[str, ...]
    kind: WasmKind = "module"  # by the binary's header: a core module or a component (WASI p2)

    def __post_init__(self) -> None:
        _require(bool(_SHA256.fullmatch(self.sha256)), f"bad sha256 for tool {self.name}")
        _require(self.kind in _KINDS, f"tool kind must be module or component: {self.kind!r}")
        _require(
            self.module.startswith("builtin:") or _is_relative_posix(self.module.lstrip("/")),
            f"module path must be relative, or absolute without '..': {self.module!r}",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """One job, fully resolved: the executor reads nothing else."""

    id: str
    manifest: str
    name: str
    tool: str
    module: str
    module_sha256: str
    args: tuple[str, ...]
    program_name: str
    invoke: str | None
    env: tuple[tuple[str, str], ...]
    stdin: str | None
    mounts: tuple[Mount, ...]
    network: Network | None
    limits: Limits
    needs: tuple[str, ...]
    expect_exit_code: int
    actions: tuple[str, ...]
    score: str
    hermetic: Hermetic | None = None
    route: str | None = None  # the HTTP path prefix ``sandrun serve`` answers with this job
    kind: WasmKind = "module"  # its tool's: how the executor loads and starts it (docs/components.md)
    work_dir: str | None = None  # the guest folder relative paths resolve in (inside a mount)

    def __post_init__(self) -> None:
        _require(self.id == f"{self.manifest}/{self.name}", f"job id must be manifest/name: {self.id}")
        _require(self.kind in _KINDS, f"job kind must be module or component: {self.kind!r}")
        # the compiler refuses the export-name form for components (rule component.invoke)
        _require(
            self.kind == "module" or self.invoke is None or is_invoke_call(self.invoke),
            f"component job {self.id} invokes by name: a component needs a WAVE call expression",
        )
        _require(self.route is None or self.route.startswith("/"), f"route must be absolute: {self.route!r}")
        _require(bool(_SHA256.fullmatch(self.module_sha256)), f"bad module sha256 for job {self.id}")
        _require(self.stdin is None or _is_relative_posix(self.stdin), "stdin path must be relative")
        guests = [m.guest for m in self.mounts]
        _require(len(set(guests)) == len(guests), f"duplicate guest path in job {self.id}")
        _require(
            self.work_dir is None or work_dir_mount(self.mounts, self.work_dir) is not None,
            f"work_dir must lie inside a mount of job {self.id}: {self.work_dir!r}",
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        """Rebuild a job from its :meth:`Plan.to_dict` form (a replay reads it from the log)."""
        return _job_from_dict(data)

    @property
    def fs_scope(self) -> Literal["none", "readonly", "readwrite"]:
        """DESIGN.md's WasiFsScope: None, ReadOnly or ReadWrite."""
        if not self.mounts:
            return "none"
        return "readwrite" if any(m.mode == "rw" for m in self.mounts) else "readonly"


@dataclass(frozen=True, slots=True, kw_only=True)
class InputFile:
    """A file the plan was compiled from, and its digest."""

    path: str
    sha256: str

    def __post_init__(self) -> None:
        _require(bool(_SHA256.fullmatch(self.sha256)), f"bad sha256 for input {self.path}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyRef:
    """The policy a plan was compiled under; ``git_commit`` when the file lies in a git repo."""

    name: str
    path: str
    sha256: str
    git_commit: str | None

    def __post_init__(self) -> None:
        _require(bool(_SHA256.fullmatch(self.sha256)), f"bad sha256 for policy {self.path}")
        # a run joins it to its root before anything else of the plan is read (api.verified_plan)
        _require(isinstance(self.path, str) and "\x00" not in self.path, "policy path must be a path")


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Manifests and a policy, compiled. :attr:`sha256` is over :meth:`to_json`."""

    policy: PolicyRef
    inputs: tuple[InputFile, ...]
    tools: tuple[Tool, ...]
    jobs: tuple[JobSpec, ...]
    manifests: tuple[str, ...] = ()
    modules: ModuleLimits = ModuleLimits()
    #: The WebAssembly proposals its modules were validated against (runner.features).
    wasm_features: tuple[str, ...] = ENGINE_WASM_FEATURES
    format: str = PLAN_FORMAT

    def __post_init__(self) -> None:
        _require(self.format == PLAN_FORMAT, f"unknown plan format {self.format!r}")
        ids = [job.id for job in self.jobs]
        _require(len(set(ids)) == len(ids), "job ids must be unique")
        known = set(ids)
        for job in self.jobs:
            for need in job.needs:
                _require(need in known, f"job {job.id} needs unknown job {need}")

    def to_dict(self) -> dict[str, Any]:
        """``dataclasses.asdict(self)``, three times faster: every run hashes its whole plan, and a
        shard hashes the whole plan to run a part of it (bench/bench_shard.py)."""
        return plain(self)

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())

    @property
    def sha256(self) -> str:
        return sha256_hex(self.to_json())

    def job(self, job_id: str) -> JobSpec:
        for job in self.jobs:
            if job.id == job_id:
                return job
        raise KeyError(job_id)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Rebuild a plan from :meth:`to_dict` output; raises ``ValueError``/``KeyError``/``TypeError``
        (or ``AttributeError``: a document of the wrong shape, a number where a string belongs)."""
        return cls(
            format=data["format"],
            policy=PolicyRef(**data["policy"]),
            inputs=tuple(InputFile(**item) for item in data["inputs"]),
            tools=tuple(Tool(**{**item, "actions": tuple(item["actions"])}) for item in data["tools"]),
            jobs=tuple(_job_from_dict(item) for item in data["jobs"]),
            manifests=tuple(data["manifests"]),
            modules=ModuleLimits(**data["modules"]),
            wasm_features=tuple(data["wasm_features"]),
        )


_LEAVES = frozenset({str, int, bool, type(None)})


def plain(value: Any) -> Any:
    """What ``asdict`` makes of a plan's values (frozen dataclasses of scalars and tuples), without
    its deep copies: the scalars are immutable, so they are shared. Scalars, most of a plan, are
    told by their exact type first (a failed attribute lookup on each cost a quarter of the time)."""
    kind = type(value)
    if kind in _LEAVES:
        return value
    if kind is tuple:
        return tuple([plain(item) for item in value])
    fields = getattr(kind, "__dataclass_fields__", None)
    if fields is not None:
        return {name: plain(getattr(value, name)) for name in fields}
    return value


def _job_from_dict(item: dict[str, Any]) -> JobSpec:
    network = item["network"]
    return JobSpec(
        **{
            **item,
            "args": tuple(item["args"]),
            "env": tuple((str(k), str(v)) for k, v in item["env"]),
            "mounts": tuple(Mount(**m) for m in item["mounts"]),
            "network": None if network is None else _network_from_dict(network),
            "limits": Limits(**item["limits"]),
            "needs": tuple(item["needs"]),
            "actions": tuple(item["actions"]),
            "hermetic": None if item.get("hermetic") is None else Hermetic(**item["hermetic"]),
        }
    )


def _network_from_dict(item: dict[str, Any]) -> Network:
    def rule(entry: str | dict[str, Any]) -> str | HttpRule:
        if isinstance(entry, str):
            return entry
        methods, paths = entry.get("methods"), entry.get("paths")
        return HttpRule(
            host=entry["host"],
            methods=None if methods is None else tuple(methods),
            paths=None if paths is None else tuple(paths),
        )

    return Network(
        allow=tuple(rule(entry) for entry in item["allow"]),
        block=tuple(item["block"]),
        secrets=tuple(SecretRef(**secret) for secret in item.get("secrets", ())),
        limits=NetLimits(**item.get("limits", {})),
    )
