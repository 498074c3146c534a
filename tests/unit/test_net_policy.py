"""Network grants in the compiler: methods/paths coverage, secrets allowed by the policy (names
in the plan, never values), and the warning for an allow entry the blocks make unreachable."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from nettree import write_tree

from runner.api import compile_manifests
from runner.egress import Bounds, parse_url
from runner.egress.job import egress_for
from runner.egress.rules import AllowEntry
from runner.errors import InputError, PolicyDenied
from runner.plan import HttpRule, Plan

GITHUB = {"host": "https://api.github.com", "methods": ["GET", "HEAD"], "paths": ["/repos/"]}
SECRET = {
    "origin": "https://api.github.com",
    "header": "Authorization",
    "value_from": {"env": "GITHUB_TOKEN"},
    "format": "Bearer {}",
}


def _compile(tmp_path: Path, policy: dict[str, Any], network: dict[str, Any]) -> Plan:
    manifest, policy_file = write_tree(
        tmp_path, policy_network=policy, jobs=[{"name": "j", "args": ["GET", "0", "x"], "network": network}]
    )
    return compile_manifests([manifest], policy_file, root=tmp_path)


def _denied(tmp_path: Path, policy: dict[str, Any], network: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(PolicyDenied) as caught:
        _compile(tmp_path, policy, network)
    return [(v.rule_id, v.location.pointer if v.location else "") for v in caught.value.violations]


@pytest.mark.parametrize(
    "entry",
    [
        {"host": "https://api.github.com", "methods": ["GET"], "paths": ["/repos/sandrun/"]},
        {"host": "https://api.github.com", "methods": ["HEAD", "GET"], "paths": ["/repos/"]},
    ],
)
def test_a_narrower_entry_is_covered(tmp_path: Path, entry: dict[str, Any]) -> None:
    plan = _compile(tmp_path, {"allow": [GITHUB]}, {"allow": [entry]})
    (rule,) = plan.jobs[0].network.allow  # type: ignore[union-attr]
    assert isinstance(rule, HttpRule) and rule.paths == tuple(entry["paths"])
    assert Plan.from_dict(plan.to_dict()) == plan


@pytest.mark.parametrize(
    "entry",
    [
        "https://api.github.com",  # every method and path
        {"host": "https://api.github.com", "methods": ["POST"], "paths": ["/repos/"]},
        {"host": "https://api.github.com", "methods": ["GET"]},  # every path
        {"host": "https://api.github.com", "paths": ["/repos/"]},  # every method
        {"host": "https://api.github.com", "methods": ["GET"], "paths": ["/"]},
        {"host": "https://api.github.com", "methods": ["GET"], "paths": ["/repo"]},
        {"host": "https://*.github.com", "methods": ["GET"], "paths": ["/repos/"]},
    ],
)
def test_a_job_cannot_widen_methods_or_paths(tmp_path: Path, entry: Any) -> None:
    assert _denied(tmp_path, {"allow": [GITHUB]}, {"allow": [entry]}) == [
        ("network.uncovered", "/jobs/0/network/allow/0")
    ]


def test_entry_coverage_is_sound_on_a_small_universe() -> None:
    entries = [
        AllowEntry.parse(e)
        for e in (
            "https://a.org",
            {"host": "https://a.org", "methods": ["GET"]},
            {"host": "https://a.org", "paths": ["/x/"]},
            {"host": "https://a.org", "methods": ["GET", "POST"], "paths": ["/x/", "/y"]},
            {"host": "https://a.org", "methods": ["GET"], "paths": ["/x/z"]},
        )
    ]
    requests = [
        (parse_url(f"https://a.org{p}"), m)
        for p in ("/", "/x/", "/x/z/1", "/y", "/yy")
        for m in ("GET", "POST", "PUT")
    ]
    for outer in entries:
        for inner in entries:
            if inner.covered_by(outer):
                for url, method in requests:
                    if inner.why_not(url, method) is None:
                        assert outer.why_not(url, method) is None, (outer, inner, url, method)


def test_secrets_need_the_policy_and_only_their_names_reach_the_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_value_never_in_the_plan")
    plan = _compile(
        tmp_path, {"allow": [GITHUB], "secrets": [SECRET]}, {"allow": [GITHUB], "secrets": [SECRET]}
    )
    (secret,) = plan.jobs[0].network.secrets  # type: ignore[union-attr]
    assert (secret.env, secret.header, secret.origin) == (
        "GITHUB_TOKEN",
        "Authorization",
        "https://api.github.com:443",
    )
    assert b"ghp_value" not in plan.to_json()


def test_a_secret_for_an_ipv6_origin_reaches_the_running_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the plan wrote "https://2001:db8::1:443", which the runner read as host "2001", port "db8::1:443"
    host = {"host": "https://[2001:db8::1]"}
    secret = {**SECRET, "origin": "https://[2001:db8::1]"}
    monkeypatch.setenv("GITHUB_TOKEN", "t")
    plan = _compile(tmp_path, {"allow": [host], "secrets": [secret]}, {"allow": [host], "secrets": [secret]})
    (ref,) = plan.jobs[0].network.secrets  # type: ignore[union-attr]
    assert ref.origin == "https://[2001:db8::1]:443"
    (sent,) = egress_for(plan.jobs[0], None, deadline=0.0).secrets
    assert sent.origin == ("https", "2001:db8::1", 443) and sent.value == "Bearer t"


@pytest.mark.parametrize(
    "change",
    [
        {"origin": "https://api.github.com:8443"},
        {"origin": "http://api.github.com"},
        {"header": "X-Token"},
        {"value_from": {"env": "AWS_SECRET_ACCESS_KEY"}},
    ],
)
def test_a_secret_the_policy_does_not_name_is_denied(tmp_path: Path, change: dict[str, Any]) -> None:
    wanted = {**SECRET, **change}
    assert _denied(
        tmp_path, {"allow": [GITHUB], "secrets": [SECRET]}, {"allow": [GITHUB], "secrets": [wanted]}
    ) == [("network.secret", "/jobs/0/network/secrets/0")]


@pytest.mark.parametrize(
    "bad",
    [
        {"format": "Bearer"},  # no {}
        {"format": "Bearer {}\r\nX: y"},
        {"header": "Bad Header"},
        {"value_from": {"env": "1X"}},
        {"value": "inline-secret"},  # values never go in manifests
    ],
)
def test_malformed_secrets_are_invalid_input(tmp_path: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        _compile(
            tmp_path,
            {"allow": [GITHUB], "secrets": [SECRET]},
            {"allow": [GITHUB], "secrets": [{**SECRET, **bad}]},
        )


def test_an_entry_the_blocks_cover_entirely_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    policy = {"allow": ["http://*:*"], "block": ["private"]}
    with caplog.at_level(logging.WARNING, logger="sandrun.compile"):
        _compile(
            tmp_path,
            policy,
            {"allow": ["http://10.1.0.1:8080", "http://example.org", "http://93.184.216.34"]},
        )
    warned = [r.getMessage() for r in caplog.records]
    assert (
        len(warned) == 1 and "[network.unreachable]" in warned[0] and "/jobs/0/network/allow/0" in warned[0]
    )


def test_network_limits_default_to_the_policy_and_cannot_exceed_it(tmp_path: Path) -> None:
    policy = {
        "allow": ["http://*:*"],
        "limits": {"timeout": "5s", "body": "1MiB", "requests": 10, "handles": 2},
    }
    plan = _compile(tmp_path / "a", policy, {"allow": ["http://example.org"]})
    limits = plan.jobs[0].network.limits  # type: ignore[union-attr]
    assert (limits.timeout_ms, limits.body, limits.requests, limits.handles) == (5000, 1 << 20, 10, 2)
    lowered = _compile(tmp_path / "b", policy, {"allow": ["http://example.org"], "limits": {"requests": 3}})
    assert lowered.jobs[0].network.limits.requests == 3  # type: ignore[union-attr]
    assert Plan.from_dict(lowered.to_dict()) == lowered
    denied = _denied(
        tmp_path / "c", policy, {"allow": ["http://example.org"], "limits": {"body": "2MiB", "requests": 11}}
    )
    assert denied == [
        ("network.limits", "/jobs/0/network/limits/body"),
        ("network.limits", "/jobs/0/network/limits/requests"),
    ]


def test_without_network_limits_the_built_in_bounds_apply(tmp_path: Path) -> None:
    plan = _compile(tmp_path, {"allow": ["http://*:*"]}, {"allow": ["http://example.org"]})
    bounds = egress_for(plan.jobs[0], None, deadline=0.0).bounds
    assert (bounds.timeout_s, bounds.max_body, bounds.max_requests, bounds.max_handles) == (
        Bounds().timeout_s,
        Bounds().max_body,
        Bounds().max_requests,
        Bounds().max_handles,
    )


def test_the_cli_prints_the_warning_and_still_allows_the_job(tmp_path: Path) -> None:
    manifest, policy = write_tree(
        tmp_path,
        policy_network={"allow": ["http://*:*"], "block": ["private"]},
        jobs=[{"name": "j", "args": ["GET", "0", "x"], "network": {"allow": ["http://10.0.0.1"]}}],
    )
    done = subprocess.run(
        [sys.executable, "-m", "runner", "check", str(manifest), "--policy", str(policy)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0
    (line,) = done.stderr.splitlines()
    assert line.endswith(
        "/jobs/0/network/allow/0 [network.unreachable] http://10.0.0.1 can never succeed: "
        "every address it admits is blocked by 'private'"
    )
    assert line.startswith(f"{manifest}:")
