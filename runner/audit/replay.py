"""``sandrun audit replay``: re-run a logged hermetic job from its record and compare every digest.

A hermetic job's ``job.started`` record holds the whole job (its plan entry: module digest,
argv, env, mounts, limits, clock and seed) and the digest of each mount before the run; its
``job.finished`` record holds the exit, the stdout/stderr digests and what it wrote to each rw
mount. A replay (docs/hermetic.md):

1. verifies the log (a damaged log is never replayed);
2. stages the job in a scratch folder: the module (from ``--modules`` by digest, else the job's
   own path, else the module cache), a copy of each mount and of stdin; a rw mount is rebuilt as
   it was before the run (today's content minus the files the job added; a job that changed or
   removed files cannot be rebuilt);
3. checks, in order, the module, each input mount, stdin, each recorded output artifact still on
   disk and each rebuilt rw mount against the record;
4. runs the job in a worker process and compares its exit, stdout, stderr and each output file;
5. logs the replay as a new run citing the replayed records (kind ``replay.job``).

The first difference is named; nothing later is compared.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from runner import __version__, hermetic
from runner.errors import AuditError, InputError, Location, SandrunError
from runner.plan import JobSpec, Mount, Plan, PolicyRef
from runner.sandbox import Runtime
from runner.signing import PrivateKey
from runner.worker import job_runners

__all__ = ["Verdict", "replay_log", "describe", "exit_error", "REPLAY_JOB"]

REPLAY_JOB = "replay.job"
_MAX_MODULE_FILES = 10_000  # files of --modules looked at for a digest
Kind = Literal["identical", "differs", "refused"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """One replayed job: ``identical``, ``differs`` (the first difference) or ``refused`` (why)."""

    job: str
    kind: Kind
    detail: str | None = None
    cites: dict[str, Any] | None = None
    rule: str | None = None  # why it is not identical: a rule id of runner.rules

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "verdict": self.kind,
            "detail": self.detail,
            "cites": self.cites,
            "rule": self.rule,
        }


class _Differs(Exception):
    def __init__(self, what: str, recorded: object, found: object) -> None:
        super().__init__(f"{what}: recorded {recorded}, {found}")


class _Refused(Exception):
    def __init__(self, message: str, rule: str = "replay.not-hermetic") -> None:
        super().__init__(message)
        self.rule = rule


def _records(path: Path, public_keys: list[Any]) -> list[dict[str, Any]]:
    """The records of a log that verifies intact (its last run sealed), read once: what was
    verified is exactly what is replayed, whatever replaces the file meanwhile."""
    from runner.audit import verified_records

    report, records = verified_records(path, public_keys=public_keys)
    if report.exit_code != 0:
        raise AuditError(violations=tuple(report.problems[:1]))
    return records


def _cite(record: dict[str, Any]) -> dict[str, Any]:
    return {"run": record["run"], "seq": record["seq"], "hash": record["hash"]}


def _pairs(
    records: list[dict[str, Any]], job: str | None
) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(job.started, job.finished) of the named job's last run, or of every job of the last run."""
    started = [r for r in records if r["kind"] == "job.started"]
    if job is not None:
        started = [r for r in started if job in (r["data"]["id"], r["data"]["id"].split("/", 1)[-1])]
        if not started:
            raise InputError.one(
                "replay.job-unknown", f"the log has no job named {job!r}", Location(file="--job")
            )
        chosen = [started[-1]]
    else:
        if not started:
            raise InputError.one("replay.job-unknown", "the log has no job to replay", Location(file="--all"))
        last_run = started[-1]["run"]
        chosen = [r for r in started if r["run"] == last_run]
    finished = {
        (r["run"], f"{r['data'].get('manifest')}/{r['data'].get('name')}"): r
        for r in records
        if r["kind"] == "job.finished"
    }
    return [(r, finished.get((r["run"], r["data"]["id"]))) for r in chosen]


def _find_module(digest: str, wanted_name: str, modules: Path) -> Path:
    """The file of ``modules`` whose bytes have ``digest``; one of the job's name with other bytes differs."""
    same_name: Path | None = None
    for count, entry in enumerate(sorted(modules.iterdir())):
        if count >= _MAX_MODULE_FILES:
            break
        if entry.is_symlink() or not entry.is_file():
            continue
        if hermetic.file_sha256(entry) == digest:
            return entry
        if entry.name == wanted_name:
            same_name = entry
    if same_name is not None:
        raise _Differs("module", digest, f"{same_name} has {hermetic.file_sha256(same_name)}")
    raise InputError.one(
        "replay.module-missing",
        f"no file in {modules} has the module's sha256 {digest}",
        Location(file=str(modules)),
    )


def _stage_module(job: JobSpec, root: Path, modules: Path | None, scratch: Path) -> None:
    """Copy the module to ``scratch/module.wasm``, its digest checked (absent: the cache may have it)."""
    source = _find_module(job.module_sha256, Path(job.module).name, modules) if modules else root / job.module
    if not source.is_file():
        return
    found = hermetic.file_sha256(source)
    if found != job.module_sha256:
        raise _Differs("module", job.module_sha256, f"{source} has {found}")
    shutil.copyfile(source, scratch / "module.wasm")


def _stage_mount(
    index: int, mount: Mount, root: Path, scratch: Path, recorded: str, written: dict[str, Any] | None
) -> None:
    """Copy one mount as the job saw it before the run; raise at the first digest that differs."""
    where = root / mount.host
    try:
        now = hermetic.digest_tree(where)
    except OSError as exc:
        raise _Differs(f"mount {mount.guest}", recorded, f"now unreadable ({exc.strerror})") from exc
    if any(d.startswith("other:") for d in now.files.values()):
        raise _Refused(
            f"mount {mount.guest} holds a FIFO, socket or device: not copied", "replay.rw-unrebuildable"
        )
    if mount.mode == "ro" and now.sha256 != recorded:
        raise _Differs(f"input {mount.guest}", recorded, f"now {now.sha256}")
    target = scratch / f"m{index}"
    shutil.copytree(where, target, symlinks=True)
    if mount.mode == "ro":
        return
    assert written is not None
    if written["changed"] or written["removed"]:
        raise _Refused(
            f"rw mount {mount.guest}: the job changed or removed files that existed before the run; "
            "their earlier content is not kept, so the mount cannot be rebuilt",
            "replay.rw-unrebuildable",
        )
    for path, digest in written["added"].items():
        on_disk = now.files.get(path)
        if on_disk != digest:
            raise _Differs(f"output {mount.guest}/{path}", digest, f"on disk {on_disk or 'missing'}")
        (target / path).unlink()
    _remove_added_folders(target, written["added"])
    rebuilt = hermetic.digest_tree(target)
    if rebuilt.sha256 != recorded:
        raise _Differs(f"rw mount {mount.guest} before the run", recorded, f"rebuilt {rebuilt.sha256}")


def _remove_added_folders(target: Path, added: dict[str, str]) -> None:
    """Folders left empty once the added files are gone, deepest first (they may be new too)."""
    folders = {str(Path(p).parent) for p in added} - {"."}
    for folder in sorted(folders, key=lambda f: -f.count("/")):
        with_parents = [folder, *(str(p) for p in Path(folder).parents if str(p) != ".")]
        for name in with_parents:
            path = target / name
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def _staged_job(job: JobSpec, root: Path, scratch: Path, hermetic_record: dict[str, Any]) -> JobSpec:
    stdin = None
    if job.stdin is not None:
        found = hermetic.file_sha256(root / job.stdin)
        if found != hermetic_record["stdin_sha256"]:
            raise _Differs("stdin", hermetic_record["stdin_sha256"], f"now {found}")
        shutil.copyfile(root / job.stdin, scratch / "stdin")
        stdin = "stdin"
    mounts = tuple(dataclasses.replace(m, host=f"m{i}") for i, m in enumerate(job.mounts))
    return dataclasses.replace(job, module="module.wasm", mounts=mounts, stdin=stdin)


def _run(job: JobSpec, scratch: Path, cache_dir: Path | None) -> Any:
    """Run the staged job once in a worker process (the same isolation as ``sandrun run``)."""
    plan = Plan(
        policy=PolicyRef(name="replay", path="replay", sha256="0" * 64, git_commit=None),
        inputs=(),
        tools=(),
        jobs=(job,),
    )
    with Runtime(cache_dir=cache_dir) as runtime:
        try:
            runtime.load_module(job, scratch)
        except InputError as exc:
            if exc.violations[0].rule_id == "module.missing":
                raise InputError.one(
                    "replay.module-missing",
                    f"module {job.module_sha256} is neither at its path nor in the cache; pass --modules DIR",
                    Location(file=job.id),
                ) from exc
            raise
        runner = job_runners("workers", runtime, plan, scratch, passthrough=False)()
        try:
            return runner.run(0, threading.Event())
        finally:
            runner.close()


def _compare(
    job: JobSpec, finished: dict[str, Any], outcome: Any, scratch: Path, before: dict[str, hermetic.Tree]
) -> None:
    data = finished["data"]
    if (data["exit_code"], data["trap"]) != (outcome.exit_code, outcome.trap):
        raise _Differs(
            "exit", f"{data['exit_code']}/{data['trap']}", f"replay {outcome.exit_code}/{outcome.trap}"
        )
    for stream in ("stdout", "stderr"):
        replayed = getattr(outcome, f"{stream}_sha256")
        if data[f"{stream}_sha256"] != replayed:
            raise _Differs(stream, data[f"{stream}_sha256"], f"replay {replayed}")
    recorded = {item["guest"]: item for item in data.get("outputs", [])}
    for item in hermetic.outputs(job, scratch, before):
        mine = recorded.get(item["guest"], {})
        for change in ("added", "changed"):
            theirs = mine.get(change, {})
            for path in sorted(set(theirs) | set(item[change])):
                if theirs.get(path) != item[change].get(path):
                    where = f"output {item['guest']}/{path}"
                    raise _Differs(
                        where, theirs.get(path, "absent"), f"replay {item[change].get(path, 'absent')}"
                    )
        if mine.get("removed", []) != item["removed"]:
            raise _Differs(
                f"output {item['guest']} removed files", mine.get("removed"), f"replay {item['removed']}"
            )


@contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sandrun-replay-") as folder:
        yield Path(folder)


def _replay_one(
    started: dict[str, Any],
    finished: dict[str, Any] | None,
    root: Path,
    modules: Path | None,
    cache_dir: Path | None,
    seed: int | None,
) -> Verdict:
    data = started["data"]
    cites = {"started": _cite(started), "finished": None if finished is None else _cite(finished)}
    record = data.get("hermetic")
    if record is None:
        why = "the job did not run hermetic: its clock, random bytes and inputs were not fixed"
        return Verdict(data["id"], "refused", why, cites, "replay.not-hermetic")
    if finished is None or finished["data"].get("stdout_sha256") is None:
        return Verdict(
            data["id"], "refused", "the job has no finished run to compare with", cites, "replay.not-hermetic"
        )
    job = JobSpec.from_dict(record["job"])
    if job.hermetic is None or job.network is not None:  # no compiled hermetic job is: an edited record
        why = "the recorded job is not hermetic or asks for network, as no hermetic job does (an edited log?)"
        return Verdict(data["id"], "refused", why, cites, "replay.not-hermetic")
    if seed is not None and job.hermetic is not None:
        job = dataclasses.replace(job, hermetic=dataclasses.replace(job.hermetic, seed=seed))
    outputs = {item["guest"]: item for item in finished["data"].get("outputs", [])}
    try:
        with _scratch() as scratch:
            _stage_module(job, root, modules, scratch)
            for index, mount in enumerate(job.mounts):
                _stage_mount(
                    index, mount, root, scratch, record["mounts"][mount.guest], outputs.get(mount.guest)
                )
            staged = _staged_job(job, root, scratch, record)
            before = hermetic.snapshot(staged, scratch)
            outcome = _run(staged, scratch, cache_dir)
            _compare(staged, finished, outcome, scratch, before)
    except _Differs as exc:
        return Verdict(data["id"], "differs", str(exc), cites, "replay.differs")
    except _Refused as exc:
        return Verdict(data["id"], "refused", str(exc), cites, exc.rule)
    return Verdict(data["id"], "identical", None, cites)


def replay_log(
    log: Path,
    *,
    job: str | None,
    root: Path,
    modules: Path | None = None,
    cache_dir: Path | None = None,
    seed: int | None = None,
    public_keys: list[Any] | None = None,
    run_id: str,
    signing_key: PrivateKey | None = None,
    key_name: str | None = None,
) -> list[Verdict]:
    """Replay ``job`` (None: every job of the log's last run) and log the replay as run ``run_id``,
    sealed and signed like any run by ``signing_key`` (the runner's: an unsigned seal in a signed
    log would make it fail ``audit verify --pub`` for good).

    With ``public_keys``, the log's seals must be signed by one of them (as ``audit verify --pub``)."""
    from runner.audit import AuditLog

    records = _records(log, public_keys or [])
    verdicts = [_replay_one(s, f, root, modules, cache_dir, seed) for s, f in _pairs(records, job)]
    try:
        signer = None if signing_key is None else signing_key.public_key()
        with AuditLog.open(log.parent, run_id=run_id, signer=signer) as audit:
            audit.append(
                "run.started", {"sandrun": __version__, "sources": [], "replay_of": verdicts[0].cites}
            )
            for verdict in verdicts:
                audit.append(REPLAY_JOB, {**verdict.to_dict(), "seed": seed})
            audit.seal(signing_key, key_name)
    except OSError as exc:
        raise AuditError.one(
            "audit.write-failed", f"cannot log the replay: {exc.strerror}", Location(file=str(log))
        ) from exc
    return verdicts


def describe(verdicts: list[Verdict]) -> list[str]:
    """One line per job: ``JOB: identical``, ``JOB: differs: ...`` or ``JOB: refused: ...``."""
    return [f"{v.job}: {v.kind}" + (f": {v.detail}" if v.detail else "") for v in verdicts]


def exit_error(verdicts: list[Verdict]) -> SandrunError | None:
    """The audit failure to exit with (4), or None when every job replayed identical."""
    bad = [v for v in verdicts if v.kind != "identical"]
    if not bad:
        return None
    return AuditError.one(bad[0].rule or "replay.differs", bad[0].detail or "", Location(file=bad[0].job))
