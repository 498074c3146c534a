"""`sandrun policy prove` and `sandrun policy diff` as users meet them: exit codes, counterexamples,
Markdown and GitHub output that input cannot break."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from cli_process import REPO
from click.testing import CliRunner

from runner.api import load_policy
from runner.cli import cli
from runner.prove import outcome, prove

DEFAULT = str(REPO / "policies" / "default.yaml")
CI = str(REPO / "policies" / "ci-example.yaml")

BARE = """\
apiVersion: sandrun/v1
kind: Policy
metadata: {{name: bare}}
fs: {{roots: [], write: false}}
network: {{allow: [{hosts}]}}
governance: {{max_score: {score}}}
"""


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_a_policy_is_contained_in_itself() -> None:
    code, out, _ = _invoke("policy", "prove", DEFAULT, "--boundary", DEFAULT, "--root", str(REPO))
    assert code == 0 and out.strip().endswith(f"contained: {DEFAULT} within {DEFAULT}")


def test_not_contained_prints_each_capability_with_a_counterexample() -> None:
    code, out, _ = _invoke("policy", "prove", CI, "--boundary", DEFAULT, "--root", str(REPO))
    assert code == 1
    lines = out.splitlines()
    index = lines.index(
        "[network.allow] not-contained: 'https://api.github.com' is allowed by the candidate "
        "and covered by no ceiling entry"
    )
    example = json.loads(lines[index + 1].split(": ", 1)[1])
    assert example["jobs"][0]["network"] == {"allow": ["https://api.github.com"]}


def test_json_format() -> None:
    code, out, _ = _invoke(
        "policy", "prove", DEFAULT, "--boundary", CI, "--root", str(REPO), "--format", "json"
    )
    assert code == 1
    data = json.loads(out)
    assert data["result"] == "not-contained"
    # the default policy bounds CPU by the timeout and caps no fuel; ci-example caps fuel too
    areas = {f["area"] for f in data["findings"]}
    assert areas == {"limits.fuel", "signatures.required", "signatures.trusted_keys"}


def test_undecided_is_exit_3_never_contained(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(BARE.format(hosts="", score=1.0))
    (tmp_path / "b.yaml").write_text(BARE.format(hosts="", score=0.99))
    code, out, _ = _invoke(
        "policy", "prove", str(tmp_path / "a.yaml"), "--boundary", str(tmp_path / "b.yaml")
    )
    assert code == 3 and "[governance.max_score] unsupported" in out


def test_other_wildcards_in_action_patterns_are_undecided() -> None:
    policy = load_policy(Path(DEFAULT), REPO)
    odd = dataclasses.replace(policy, actions_allow=("tool.?s.read",))
    assert outcome(prove(odd, policy, REPO)) == "unsupported"


def test_invalid_input_is_exit_2_with_every_file_named(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: sandrun/v1\nkind: Policy\nmetadata: {name: x}\nlimits: 3\n"
    )
    code, _, err = _invoke(
        "policy", "prove", str(tmp_path / "bad.yaml"), "--boundary", str(tmp_path / "nope.yaml")
    )
    assert code == 2
    assert f"{tmp_path / 'bad.yaml'}:4:" in err and str(tmp_path / "nope.yaml") in err


def test_diff_markdown_lists_widened_and_narrowed() -> None:
    code, out, _ = _invoke("policy", "diff", DEFAULT, CI, "--root", str(REPO))
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("| **")]
    assert any(r.startswith("| **widened** | network.allow |") for r in rows)
    assert any(r.startswith("| **narrowed** | signatures.required |") for r in rows)
    assert all(line.count("|") >= 5 for line in rows)  # no cell split by a stray pipe


def test_diff_of_a_policy_with_itself_is_empty() -> None:
    code, out, _ = _invoke("policy", "diff", DEFAULT, DEFAULT, "--root", str(REPO))
    assert code == 0 and "No capability widened or narrowed." in out


def test_diff_github_annotations_cannot_be_forged(tmp_path: Path) -> None:
    (tmp_path / "old.yaml").write_text(BARE.format(hosts="", score=0.5))
    (tmp_path / "new.yaml").write_text(
        BARE.format(hosts='"https://[::1]:1..65535", "https://x.com"', score=0.5)
    )
    code, out, _ = _invoke(
        "policy", "diff", str(tmp_path / "old.yaml"), str(tmp_path / "new.yaml"), "--format", "github"
    )
    assert code == 0
    annotations = [line for line in out.splitlines() if line.startswith("::")]
    assert len(annotations) == 2 and all(line.startswith("::warning file=") for line in annotations)
    for line in annotations:
        message = line.split("::", 2)[2]
        assert "::" not in message  # the IPv6 '::' is split, so no second command can start
