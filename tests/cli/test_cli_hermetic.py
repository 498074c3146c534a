"""Hermetic jobs through the CLI: a virtual clock and seeded random stream, digested mounts, replay."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from tests.cli.cli_process import sandrun

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TIMELY = FIXTURES / "timely.wasm"
PROBE = FIXTURES / "probe.wasm"

POLICY = """\
apiVersion: sandrun/v1
kind: Policy
metadata: {{name: p}}
signatures: {{required: false}}
fs: {{roots: [data, out], write: [out]}}
{extra}"""

MANIFEST = """\
apiVersion: sandrun/v1
kind: Manifest
metadata: {{name: t}}
tools:
  timely: {{module: ../tools/timely.wasm, sha256: {timely}}}
  probe: {{module: ../tools/probe.wasm, sha256: {probe}}}
jobs:
  - {{name: clock, tool: timely, hermetic: true}}
  - {{name: twin, tool: timely, hermetic: {{seed: {seed}}}}}
  - {{name: twin2, tool: timely, hermetic: {{seed: {seed}}}}}
  - {{name: plain, tool: timely, args: [reads, "3"]}}
  - name: writer
    tool: probe
    hermetic: true
    args: [read, /data/a.txt, creat, /out/r.txt]
    fs: [{{host: ../data, guest: /data}}, {{host: ../out, guest: /out, mode: rw}}]
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make(root: Path, *, policy_extra: str = "", jobs: str | None = None, seed: int = 7) -> Path:
    for folder in ("tools", "data", "out", "m"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TIMELY, root / "tools" / "timely.wasm")
    shutil.copyfile(PROBE, root / "tools" / "probe.wasm")
    (root / "data" / "a.txt").write_text("input\n")
    (root / "policy.yaml").write_text(POLICY.format(extra=policy_extra))
    text = MANIFEST.format(timely=_sha(TIMELY), probe=_sha(PROBE), seed=seed)
    if jobs is not None:
        text = text[: text.index("jobs:")] + jobs
    (root / "m" / "t.yaml").write_text(text)
    return root


def run(root: Path, out: str = "so", *args: str, env: dict[str, str] | None = None) -> object:
    return sandrun(
        "run", "m/t.yaml", "--policy", "policy.yaml", "--out", out, "-j", "2", *args, cwd=root, env=env
    )


def records(root: Path, out: str = "so") -> list[dict]:
    lines = (root / out / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make(tmp_path_factory.mktemp("hermetic"))
    result = run(root)
    assert result.returncode == 0, result.stderr
    return root


def _stdout(root: Path, job: str, out: str = "so") -> str:
    return (root / out / "logs" / "t" / f"{job}.stdout").read_text()


def test_hermetic_output_is_fixed_by_the_plan_and_the_sleep_is_virtual(ran: Path) -> None:
    clock = _stdout(ran, "clock")
    before, after = clock.splitlines()
    # the clock starts at the plan's fixed time and moves 1 ms per read; the 2 s sleep is virtual
    assert before.startswith(
        "before time=1700000000 realtime=1700000000.001000000 monotonic=0.002000000 res=1000000 "
    )
    assert after.startswith("after time=1700000002 realtime=1700000002.")
    assert re.search(r"monotonic=2\.\d{9} ", after)
    report = json.loads((ran / "so" / "report.json").read_text())
    walls = {f"{j['manifest']}/{j['name']}": j["wall_ms"] for j in report["jobs"]}
    assert walls["t/clock"] < 1500  # it did not sleep 2 s of wall time


def test_same_seed_gives_the_same_bytes_in_other_workers_and_runs(ran: Path, tmp_path: Path) -> None:
    assert _stdout(ran, "twin") == _stdout(ran, "twin2")  # run -j 2: two worker processes
    assert _stdout(ran, "twin") != _stdout(ran, "clock")  # another seed, other random bytes
    again = make(tmp_path)
    assert run(again).returncode == 0
    for job in ("clock", "twin", "writer"):
        assert _stdout(again, job) == _stdout(ran, job)


def test_not_hermetic_output_changes(tmp_path: Path) -> None:
    jobs = "jobs:\n  - {name: plain, tool: timely}\n"
    root = make(tmp_path, jobs=jobs)
    outputs = []
    for out in ("a", "b"):
        assert run(root, out).returncode == 0
        outputs.append(_stdout(root, "plain", out))
    assert outputs[0] != outputs[1]
    assert "time=1700000000 " not in outputs[0]


def test_source_date_epoch_sets_the_start(tmp_path: Path) -> None:
    root = make(tmp_path, jobs="jobs:\n  - {name: clock, tool: timely, hermetic: true}\n")
    assert run(root, env={"SOURCE_DATE_EPOCH": "86400"}).returncode == 0
    assert _stdout(root, "clock").startswith("before time=86400 realtime=86400.001000000")
    bad = run(root, "so2", env={"SOURCE_DATE_EPOCH": "yesterday"})
    assert bad.returncode == 2 and "[hermetic.epoch]" in bad.stderr


def test_policy_can_require_hermetic_jobs(tmp_path: Path) -> None:
    root = make(tmp_path, policy_extra="hermetic: {required: true}\n")
    result = run(root)
    assert result.returncode == 3
    assert "[hermetic.required]" in result.stderr and "t/plain" in result.stderr
    assert "t/clock" not in result.stderr


def test_hermetic_job_has_no_network(tmp_path: Path) -> None:
    jobs = "jobs:\n  - {name: n, tool: timely, hermetic: true, network: {allow: ['https://example.com']}}\n"
    root = make(tmp_path, policy_extra="network: {allow: ['https://example.com']}\n", jobs=jobs)
    result = run(root)
    assert result.returncode == 3 and "[hermetic.network]" in result.stderr


def test_inputs_and_outputs_are_recorded(ran: Path) -> None:
    started = {r["data"]["id"]: r["data"] for r in records(ran) if r["kind"] == "job.started"}
    finished = {r["data"]["name"]: r["data"] for r in records(ran) if r["kind"] == "job.finished"}
    writer = started["t/writer"]["hermetic"]
    assert set(writer["mounts"]) == {"/data", "/out"}
    assert writer["job"]["hermetic"]["seed"] == writer["seed"]
    assert "hermetic" not in started["t/plain"]
    [out] = finished["writer"]["outputs"]
    assert out["added"] == {"r.txt": "file:" + hashlib.sha256(b"new").hexdigest()}
    assert out["changed"] == {} and out["removed"] == []
    assert "outputs" not in finished["plain"]


def _replay(root: Path, *args: str) -> object:
    return sandrun("audit", "replay", "so", *args, cwd=root)


@pytest.fixture
def copy(ran: Path, tmp_path: Path) -> Path:
    target = tmp_path / "p"
    shutil.copytree(ran, target, symlinks=True)
    return target


def test_replay_of_an_untouched_run_is_identical_and_is_logged(copy: Path) -> None:
    result = _replay(copy, "--job", "writer")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "t/writer: identical\n"
    replayed = [r for r in records(copy) if r["kind"] == "replay.job"]
    cited = [r for r in records(copy) if r["kind"] == "job.finished" and r["data"]["name"] == "writer"][0]
    assert replayed[-1]["data"]["verdict"] == "identical"
    assert replayed[-1]["data"]["cites"]["finished"]["hash"] == cited["hash"]
    assert replayed[-1]["run"] != cited["run"]
    assert sandrun("audit", "verify", "so", cwd=copy).returncode == 0
    assert (copy / "out" / "r.txt").read_text() == "new"  # the replay wrote to a scratch copy


def test_replay_names_a_tampered_input(copy: Path) -> None:
    (copy / "data" / "a.txt").write_text("other\n")
    result = _replay(copy, "--job", "t/writer")
    assert result.returncode == 4
    assert "differs: input /data: recorded" in result.stdout and "[replay.differs]" in result.stderr


def test_replay_names_a_swapped_module(copy: Path) -> None:
    modules = copy / "mods"
    modules.mkdir()
    shutil.copyfile(TIMELY, modules / "probe.wasm")  # the probe's name, other bytes
    result = _replay(copy, "--job", "writer", "--modules", str(modules))
    assert result.returncode == 4
    assert "differs: module: recorded " + _sha(PROBE) in result.stdout
    shutil.copyfile(PROBE, modules / "renamed.wasm")  # found by digest, whatever its name
    assert _replay(copy, "--job", "writer", "--modules", str(modules)).returncode == 0


def test_replay_names_a_changed_seed(copy: Path) -> None:
    result = _replay(copy, "--job", "clock", "--seed", "12345")
    assert result.returncode == 4 and "t/clock: differs: stdout: recorded" in result.stdout


def test_replay_names_an_edited_output_artifact(copy: Path) -> None:
    (copy / "out" / "r.txt").write_text("forged")
    result = _replay(copy, "--job", "writer")
    assert result.returncode == 4
    assert "differs: output /out/r.txt: recorded file:" + hashlib.sha256(b"new").hexdigest() in result.stdout


def test_replay_refuses_a_job_that_was_not_hermetic(copy: Path) -> None:
    result = _replay(copy, "--job", "plain")
    assert result.returncode == 4
    assert "t/plain: refused: the job did not run hermetic" in result.stdout
    assert "[replay.not-hermetic]" in result.stderr


@pytest.mark.parametrize(
    "edit",
    [{"network": {"allow": ["https://exfil.example"], "block": []}}, {"hermetic": None}],
    ids=["network", "not-hermetic"],
)
def test_replay_refuses_a_recording_edited_into_what_no_hermetic_job_is(copy: Path, edit: dict) -> None:
    """Whoever can write the log (not the signing key) rehashes it: without --pub it verifies. The
    replay runs the recorded job, so a grant the compiler never gives a hermetic job (network: the
    module could send its mounts away) or a job that is not hermetic at all is refused, not run."""
    from tests.unit.test_audit_verify import _rechain

    log = copy / "so" / "audit.jsonl"
    lines = log.read_bytes().splitlines()
    index = next(i for i, line in enumerate(lines) if b'"job.started"' in line and b'"seed"' in line)
    hermetic = json.loads(lines[index])["data"]["hermetic"]
    hermetic["job"].update(edit)
    log.write_bytes(b"\n".join(_rechain(lines, index, {"hermetic": hermetic}, fix_notes=True)) + b"\n")
    assert sandrun("audit", "verify", "so", cwd=copy).returncode == 0  # rehashed: intact without a key
    result = _replay(copy, "--job", json.loads(lines[index])["data"]["id"])
    assert result.returncode == 4, result.stderr
    assert "refused: the recorded job is not hermetic or asks for network" in result.stdout
    assert "[replay.not-hermetic]" in result.stderr


def test_replay_all_and_bad_arguments(copy: Path) -> None:
    result = _replay(copy, "--all")
    assert result.returncode == 4  # t/plain is refused, the rest identical
    lines = sorted(result.stdout.splitlines())
    assert lines == [
        "t/clock: identical",
        "t/plain: refused: the job did not run hermetic: its clock, random bytes and inputs were not fixed",
        "t/twin2: identical",
        "t/twin: identical",
        "t/writer: identical",
    ]
    assert _replay(copy, "--job", "nope").returncode == 2
    assert _replay(copy).returncode == 2


def test_replay_refuses_a_damaged_log(copy: Path) -> None:
    log = copy / "so" / "audit.jsonl"
    log.write_text(log.read_text().replace('"name":"writer"', '"name":"writes"', 1))
    result = _replay(copy, "--job", "writer")
    assert result.returncode == 4 and "[audit." in result.stderr


def test_replay_with_pub_refuses_an_unsigned_log(copy: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert sandrun("keys", "generate", "--id", "runner", "--out", str(keys)).returncode == 0
    result = _replay(copy, "--job", "writer", "--pub", str(keys / "runner.pub"))
    assert result.returncode == 4 and "[audit.unsigned]" in result.stderr


def test_replay_names_a_removed_input_mount(copy: Path) -> None:
    shutil.rmtree(copy / "data")
    result = _replay(copy, "--job", "writer")
    assert result.returncode == 4 and "differs: mount /data: recorded" in result.stdout


def test_a_replay_seals_with_the_runner_key_so_a_signed_log_stays_verifiable(tmp_path: Path) -> None:
    """A replay appends a run to the log: sealed unsigned, it made a signed log fail
    ``audit verify --pub`` (``audit.unsigned``) for good, and every ``report --pub`` with it."""
    root = make(tmp_path / "p")
    keys = tmp_path / "keys"
    assert sandrun("keys", "generate", "--id", "runner", "--out", str(keys)).returncode == 0
    env = {"SANDRUN_SIGNING_KEY": (keys / "runner.key").read_text()}
    assert run(root, env=env).returncode == 0
    pub = ("--pub", str(keys / "runner.pub"))
    replayed = sandrun("audit", "replay", "so", "--job", "writer", *pub, cwd=root, env=env)
    assert replayed.returncode == 0, replayed.stderr
    verified = sandrun("audit", "verify", "so", *pub, cwd=root)
    assert verified.returncode == 0 and "2 seal signature(s) verified" in verified.stdout, verified.stderr
