"""`sandrun attest`: DSSE envelopes of in-toto statements built from a verified audit log, checked by
Sandrun and by an independent verifier written here from the DSSE and in-toto specs."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from cli_project import HELLO
from click.testing import CliRunner
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from runner.cli import cli

POLICY = """\
apiVersion: sandrun/v1
kind: Policy
metadata: {name: lenient}
fs: {roots: [.], write: [./work]}
"""

MANIFEST = """\
apiVersion: sandrun/v1
kind: Manifest
metadata: {{name: demo}}
tools:
  hello: {{module: ../hello.wasm, sha256: {sha}}}
jobs:
  - name: reads
    tool: hello
    fs: [{{host: ../docs, guest: /docs, mode: ro}}]
  - name: writes
    tool: hello
    fs: [{{host: ../docs, guest: /docs, mode: ro}}, {{host: ../work, guest: /out, mode: rw}}]
"""


def _invoke(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project that ran two jobs (one with a rw mount) with a signed seal; runner keys in keys/."""
    import hashlib

    root = tmp_path_factory.mktemp("attest")
    for folder in ("docs", "work", "manifests"):
        (root / folder).mkdir()
    (root / "docs" / "a.md").write_text("# a\n")
    shutil.copyfile(HELLO, root / "hello.wasm")
    sha = hashlib.sha256(HELLO.read_bytes()).hexdigest()
    (root / "manifests" / "demo.yaml").write_text(MANIFEST.format(sha=sha))
    (root / "policy.yaml").write_text(POLICY)
    assert _invoke("keys", "generate", "--id", "runner", "--out", str(root / "keys"))[0] == 0
    code, out, err = _invoke(
        "run", str(root / "manifests"), "--policy", str(root / "policy.yaml"), "--root", str(root),
        "--out", str(root / "out"), "--signing-key", str(root / "keys" / "runner.key"),
    )  # fmt: skip
    assert code == 0, out + err
    return root


def _attest(root: Path, target: Path) -> tuple[int, str, str]:
    return _invoke(
        "attest", str(root / "out"), "--signing-key", str(root / "keys" / "runner.key"),
        "--pub", str(root / "keys" / "runner.pub"), "-o", str(target),
    )  # fmt: skip


def _independent_verify(bundle: Path, public_b64: str) -> list[dict]:  # type: ignore[type-arg]
    """DSSE v1 as its spec (secure-systems-lab/dsse, protocol.md) defines it, nothing of Sandrun's:
    PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, LEN as ASCII decimal."""
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64))
    statements = []
    for line in bundle.read_text().splitlines():
        envelope = json.loads(line)
        body = base64.b64decode(envelope["payload"])
        kind = envelope["payloadType"].encode()
        pae = (
            b"DSSEv1 " + str(len(kind)).encode() + b" " + kind + b" " + str(len(body)).encode() + b" " + body
        )
        key.verify(base64.b64decode(envelope["signatures"][0]["sig"]), pae)  # raises when it does not
        statement = json.loads(body)
        assert envelope["payloadType"] == "application/vnd.in-toto+json"
        assert statement["_type"] == "https://in-toto.io/Statement/v1"
        statements.append(statement)
    return statements


def test_attestations_verify_by_sandrun_and_independently(ran: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "a.intoto.jsonl"
    code, out, err = _attest(ran, bundle)
    assert code == 0, out + err
    pub = str(ran / "keys" / "runner.pub")
    code, out, err = _invoke("attest", "verify", str(bundle), "--pub", pub, "--log", str(ran / "out"))
    assert code == 0, out + err
    assert "verified: 5 statement(s) matching the audit log" in out

    statements = _independent_verify(bundle, (ran / "keys" / "runner.pub").read_text().strip())
    by_type: dict[str, list[dict]] = {}  # type: ignore[type-arg]
    for statement in statements:
        by_type.setdefault(statement["predicateType"], []).append(statement)
    test_result = by_type["https://in-toto.io/attestation/test-result/v0.1"][0]["predicate"]
    report = json.loads((ran / "out" / "report.json").read_text())
    assert test_result["result"] == "PASSED"
    assert sorted(test_result["passedTests"]) == sorted(
        f"{j['manifest']}/{j['name']}" for j in report["jobs"]
    )
    assert {c["name"] for c in test_result["configuration"]} >= {
        "policy.yaml",
        "manifests/demo.yaml",
        "plan.json",
    }
    plan = next(c for c in test_result["configuration"] if c["name"] == "plan.json")
    assert plan["digest"]["sha256"] == report["plan_sha256"]
    traces = by_type["https://in-toto.io/attestation/runtime-trace/v0.2"]
    mounts = {
        t["predicate"]["monitoredProcess"]["event"].split("/", 1)[1]: t["predicate"]["monitorLog"][
            "fileAccess"
        ]
        for t in traces
    }
    assert [(m["name"], m["annotations"]["mode"]) for m in mounts["demo/writes"]] == [
        ("docs", "ro"),
        ("work", "rw"),
    ]
    assert [m["name"] for m in mounts["demo/reads"]] == ["docs"]
    (provenance,) = by_type["https://slsa.dev/provenance/v1"]  # only the job with a rw mount
    writes = next(j for j in report["jobs"] if j["name"] == "writes")
    assert [s["digest"]["sha256"] for s in provenance["subject"]] == [
        writes["stdout_sha256"],
        writes["stderr_sha256"],
    ]
    assert provenance["predicate"]["runDetails"]["byproducts"][0]["annotations"]["contentsRecorded"] is False
    (summary,) = by_type["https://slsa.dev/verification_summary/v1"]
    assert summary["predicate"]["verificationResult"] == "PASSED"


def test_the_same_log_and_key_give_the_same_bytes(ran: Path, tmp_path: Path) -> None:
    assert _attest(ran, tmp_path / "one")[0] == 0 and _attest(ran, tmp_path / "two")[0] == 0
    assert (tmp_path / "one").read_bytes() == (tmp_path / "two").read_bytes()


def _rewrite(bundle: Path, index: int, edit: object) -> None:
    lines = bundle.read_text().splitlines()
    envelope = json.loads(lines[index])
    statement = json.loads(base64.b64decode(envelope["payload"]))
    edit(statement)  # type: ignore[operator]
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    lines[index] = json.dumps(envelope)
    bundle.write_text("\n".join(lines) + "\n")


def test_a_tampered_statement_is_refused_by_both_verifiers(ran: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    assert _attest(ran, bundle)[0] == 0

    def fail_a_job(statement: dict) -> None:  # type: ignore[type-arg]
        statement["predicate"]["failedTests"] = statement["predicate"]["passedTests"]

    _rewrite(bundle, 0, fail_a_job)
    code, _, err = _invoke("attest", "verify", str(bundle), "--pub", str(ran / "keys" / "runner.pub"))
    assert code == 4 and f"{bundle}:1: [attest.signature]" in err
    with pytest.raises(InvalidSignature):
        _independent_verify(bundle, (ran / "keys" / "runner.pub").read_text().strip())


def test_a_statement_signed_by_another_key_is_refused(ran: Path, tmp_path: Path) -> None:
    assert _invoke("keys", "generate", "--id", "other", "--out", str(tmp_path / "k"))[0] == 0
    bundle = tmp_path / "c"
    other = str(tmp_path / "k" / "other.key")
    code, _, err = _invoke("attest", str(ran / "out"), "--signing-key", other, "-o", str(bundle))
    assert code == 4 and "[audit." in err  # by default the seals must be signed by the attesting key
    pub = str(ran / "keys" / "runner.pub")
    code, _, _ = _invoke("attest", str(ran / "out"), "--signing-key", other, "--pub", pub, "-o", str(bundle))
    assert code == 0
    code, _, err = _invoke("attest", "verify", str(bundle), "--pub", str(ran / "keys" / "runner.pub"))
    assert code == 4 and "[attest.signature]" in err


def test_reordered_or_dropped_statements_do_not_match_the_log(ran: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "d"
    assert _attest(ran, bundle)[0] == 0
    lines = bundle.read_text().splitlines()
    pub = str(ran / "keys" / "runner.pub")
    for changed in ([lines[1], lines[0], *lines[2:]], lines[:-1]):
        bundle.write_text("\n".join(changed) + "\n")
        assert _invoke("attest", "verify", str(bundle), "--pub", pub)[0] == 0  # each is validly signed
        code, _, err = _invoke("attest", "verify", str(bundle), "--pub", pub, "--log", str(ran / "out"))
        assert code == 4 and "[attest.mismatch]" in err


def test_a_rewritten_log_with_consistent_hashes_is_refused(ran: Path, tmp_path: Path) -> None:
    """The chain is unkeyed: whoever can write the folder can recompute every hash and seal it
    unsigned (here: a fresh run into a copy, without a signing key). attest must not sign that."""
    out = tmp_path / "out"
    code, _, _ = _invoke(
        "run",
        str(ran / "manifests"),
        "--policy",
        str(ran / "policy.yaml"),
        "--root",
        str(ran),
        "--out",
        str(out),
    )
    assert code == 0
    code, _, err = _invoke(
        "attest", str(out), "--signing-key", str(ran / "keys" / "runner.key"), "-o", str(tmp_path / "x")
    )
    assert code == 4 and not (tmp_path / "x").exists()


def test_a_tampered_log_is_refused_before_anything_is_attested(ran: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(ran / "out", out)
    log = out / "audit.jsonl"
    log.write_text(log.read_text().replace('"status":"passed"', '"status":"failed"', 1))
    code, _, err = _invoke(
        "attest", str(out), "--signing-key", str(ran / "keys" / "runner.key"), "-o", str(tmp_path / "e")
    )
    assert code == 4 and "[audit." in err
    assert not (tmp_path / "e").exists()


def test_without_a_runner_key_nothing_is_written(
    ran: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SANDRUN_SIGNING_KEY", raising=False)
    code, _, err = _invoke("attest", str(ran / "out"), "-o", str(tmp_path / "f"))
    assert code == 2 and "[attest.no-key]" in err and not (tmp_path / "f").exists()


def test_garbage_bundle_is_refused_with_its_line(ran: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "g"
    bundle.write_text('{"payloadType": "text/plain", "payload": "", "signatures": []}\n')
    code, _, err = _invoke("attest", "verify", str(bundle), "--pub", str(ran / "keys" / "runner.pub"))
    assert code == 4 and f"{bundle}:1: [attest.envelope]" in err
    bundle.write_text("[" * 100_000 + "]" * 100_000 + "\n")  # deeper than the parser recurses
    code, _, err = _invoke("attest", "verify", str(bundle), "--pub", str(ran / "keys" / "runner.pub"))
    assert code == 4 and f"{bundle}:1: [attest.envelope]" in err, err


def _signed_log(out: Path, key: Path, *runs: list[tuple[str, dict]]) -> list[str]:  # type: ignore[type-arg]
    """Runs written by the runner's own writer and key, holding whatever records are given: what a
    log signed by a trusted runner may hold, shapes no runner of ours writes included."""
    from runner.audit import AuditLog
    from runner.signing import load_private_key

    ids = []
    for number, records in enumerate(runs):
        with AuditLog.open(out, run_id=f"r{number}") as log:
            for kind, data in records:
                log.append(kind, data)
            log.seal(load_private_key(key))
        ids.append(f"r{number}")
    return ids


def _planned(jobs: list[str]) -> dict:  # type: ignore[type-arg]
    policy = {"name": "p", "path": "p.yaml", "sha256": "0" * 64, "git_commit": None}
    return {"plan_sha256": "1" * 64, "policy": policy, "inputs": [], "jobs": jobs}


def _passed(name: str, index: int) -> dict:  # type: ignore[type-arg]
    from runner.results import JobResult

    result = JobResult(
        manifest="m", name=name, tool="t", module_sha256="2" * 64, status="passed", exit_code=0
    )
    return {**result.to_dict(), "index": index}


def test_attest_never_signs_more_than_the_log_holds(ran: Path, tmp_path: Path) -> None:
    """A run whose results do not number its plan's jobs is refused as ``report`` refuses it (it
    was attested PASSED); a run that decided nothing (a replay, a merge) is no passed test result
    (it was attested PASSED with no tests); odd shapes are ``audit.bad-record``, not a crash."""
    key = ran / "keys" / "runner.key"
    started = ("run.started", {"sandrun": "0", "sources": []})
    cases = {
        "audit.bad-record": [
            started,
            ("plan.compiled", _planned(["m/a", "m/b"])),
            ("job.finished", _passed("a", 0)),
        ],
        "audit.no-plan": [started, ("replay.job", {"job": "m/a", "verdict": "identical"})],
        "audit.bad-record ": [
            started,
            ("plan.compiled", _planned(["m/a"])),
            ("job.started", {"id": "m/a", "module_sha256": "2" * 64, "mounts": "not a list"}),
            ("job.finished", _passed("a", 0)),
        ],
    }
    for rule, records in cases.items():
        out = tmp_path / rule.strip().replace(".", "-") / str(len(records))
        [run] = _signed_log(out, key, records)
        bundle = out / "bundle.jsonl"
        for extra in ((), ("--run", run)):
            code, _, err = _invoke("attest", str(out), "--signing-key", str(key), "-o", str(bundle), *extra)
            assert code == 4 and f"[{rule.strip()}]" in err, (rule, extra, err)
            assert "internal error" not in err and not bundle.exists()
    # by default the last sealed run that decided something is attested, not a replay after it
    out = tmp_path / "then-replayed"
    decided = [started, ("plan.compiled", _planned(["m/a"])), ("job.finished", _passed("a", 0))]
    first, _ = _signed_log(out, key, decided, cases["audit.no-plan"])
    code, _, err = _invoke("attest", str(out), "--signing-key", str(key), "-o", str(out / "b.jsonl"))
    assert code == 0, err
    payload = json.loads(
        base64.b64decode(json.loads((out / "b.jsonl").read_text().splitlines()[0])["payload"])
    )
    assert payload["predicate"]["url"] == f"sandrun:run/{first}"
