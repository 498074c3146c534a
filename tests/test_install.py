"""Installing Sandrun: our own distribution name, pinned installs in every file, bounded dependencies,
and CI templates that stop with a clear error instead of installing or running the wrong thing.

PyPI's ``sandrun`` is an unrelated project that also installs a ``sandrun`` command, so
``pip install sandrun`` (handed the signing key in a CI template) runs someone else's code.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; .ci/run's Python

REPO = Path(__file__).resolve().parents[1]
NAME = "sandrun-wasm"
FOREIGN = "sandrun"
INSTALL_STEP = "Install Sandrun, pinned to a vetted commit"
SHA = "0123456789abcdef0123456789abcdef01234567"

# An install command of a Python package manager, up to the end of the shell command.
_INSTALL = re.compile(
    r"\b(?:pip3?|pipx|uv(?: pip| tool)?|poetry|pdm)\s+(?:install|add)\b(?P<args>[^\n;&|#]*)"
)
_TOKEN = re.compile(r"\"[^\"]*\"|'[^']*'|\S+")
# A pinned source: git+URL@<full commit sha>, or @$SANDRUN_REF that the same file checks is one.
_GIT = re.compile(r"git\+\S+@(?P<ref>[0-9a-f]{40}|\$\{?SANDRUN_REF\}?)")
_REF_GUARD = re.compile(r'ref="\$\{SANDRUN_REF:-\}".*\n.*"\$\{#ref\}" -ne 40')


def install_problems(text: str) -> list[str]:
    """Every install of Sandrun in ``text`` that is foreign, unpinned or not Sandrun's own name."""
    problems = []
    joined = text.replace("\\\n", " ")
    for match in _INSTALL.finditer(joined):
        args = match["args"]
        hashed = "--require-hashes" in args
        for token in (t.strip("\"'") for t in _TOKEN.findall(args)):
            if "sandrun" in token.lower():
                problems += _token_problems(token, hashed, guarded=bool(_REF_GUARD.search(joined)))
    return problems


def _token_problems(token: str, hashed: bool, guarded: bool) -> list[str]:
    name, _, source = token.partition(" @ ") if " @ " in token else ("", "", token)
    if "git+" in token:
        git = _GIT.fullmatch(source.strip())
        if git is None:
            return [f"{token}: a git source must end in @<full commit sha>"]
        if git["ref"].startswith("$") and not guarded:
            return [f"{token}: SANDRUN_REF is not checked to be a full commit sha"]
        if name and canonicalize_name(name.strip()) != NAME:
            return [f"{token}: names {name.strip()!r}, not {NAME!r}"]
        return []
    try:
        requirement = Requirement(source)
    except InvalidRequirement:
        return [f"{token}: not a requirement this test understands"]
    if canonicalize_name(requirement.name) == FOREIGN:
        return [f"{token}: PyPI's {FOREIGN!r} is an unrelated project; Sandrun is {NAME!r}"]
    if canonicalize_name(requirement.name) != NAME:
        return []  # e.g. SANDRUN_REPO as a word in another package's name: not ours to judge
    pinned = any(spec.operator in ("==", "===") for spec in requirement.specifier)
    return [] if pinned and hashed else [f"{token}: pin Sandrun (==VERSION with --require-hashes)"]


def tracked_files() -> list[Path]:
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60
    ).stdout.decode()
    return [REPO / name for name in listing.split("\0") if name]


@pytest.mark.parametrize(
    "text",
    [
        "python -m pip install sandrun",
        "pip3 install --upgrade sandrun==0.1.2",
        "pip install sandrun-wasm",
        "pip install 'sandrun-wasm>=0.1'",
        "pip install sandrun-wasm==0.1.0",  # a version alone: anyone who can upload 0.1.0 elsewhere wins
        "pipx install sandrun",
        "uv tool install sandrun",
        "uv pip install \\\n  sandrun",
        'pip install "sandrun-wasm @ git+https://example.org/sandrun.git@main"',
        "pip install git+https://example.org/sandrun.git@v0.1.0",
        "pip install git+https://example.org/sandrun.git",
        f"pip install git+https://example.org/sandrun.git@{SHA[:12]}",
        'pip install "sandrun @ git+https://example.org/sandrun.git@' + SHA + '"',
        'pip install "sandrun-wasm @ git+${SANDRUN_REPO}@${SANDRUN_REF}"',  # no check that REF is a sha
    ],
)
def test_a_foreign_or_unpinned_install_is_caught(text: str) -> None:
    assert install_problems(text), text


@pytest.mark.parametrize(
    "text",
    [
        "python3 -m pip install -e . && python3 -m runner run manifests/examples",
        "python3 -m pip install --quiet -e '.[test]'",
        "pip install --require-hashes sandrun-wasm==0.1.0 --hash=sha256:00",
        f"pip install git+https://example.org/sandrun.git@{SHA}",
        f'pip install "sandrun-wasm @ git+https://example.org/sandrun.git@{SHA}"',
        'ref="${SANDRUN_REF:-}"\nif [ "${#ref}" -ne 40 ]; then exit 1; fi\n'
        'pip install "wasmtime==50.0.1" "sandrun-wasm @ git+${SANDRUN_REPO}@${SANDRUN_REF}"',
        "pip install check-jsonschema==0.39.0",
    ],
)
def test_a_pinned_install_of_sandrun_itself_passes(text: str) -> None:
    assert install_problems(text) == []


def test_no_tracked_file_installs_a_foreign_or_unpinned_sandrun() -> None:
    this = Path(__file__).resolve()
    problems = []
    for path in tracked_files():
        if path == this or not path.is_file():  # this file's examples are bad on purpose
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # .wasm and other binaries
        problems += [f"{path.relative_to(REPO)}: {p}" for p in install_problems(text)]
    assert problems == []


def test_every_ci_template_installs_sandrun_and_it_is_checked() -> None:
    templates = sorted((REPO / "ci").glob("*.yml"))
    assert len(templates) == 4  # one-machine and sharded (docs/shards.md), GitHub and GitLab
    for template in templates:
        text = template.read_text(encoding="utf-8")
        installs = [m["args"] for m in _INSTALL.finditer(text) if "sandrun" in m["args"].lower()]
        # one install per job (a sharded GitHub workflow's jobs run on fresh machines), all alike
        assert installs and all(i == installs[0] and f"{NAME} @ git+" in i for i in installs), template.name


def test_pyproject_names_the_distribution_and_keeps_the_command() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["name"] == NAME
    assert project["scripts"] == {"sandrun": "runner.cli:main"}
    dev = [Requirement(r) for r in project["optional-dependencies"]["dev"]]
    assert [canonicalize_name(r.name) for r in dev if r.extras] == [NAME]


def _requirements() -> list[Requirement]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    lines = list(pyproject["build-system"]["requires"]) + list(pyproject["project"]["dependencies"])
    for extra in pyproject["project"]["optional-dependencies"].values():
        lines += extra
    return [r for r in map(Requirement, lines) if canonicalize_name(r.name) != NAME]


@pytest.mark.parametrize("requirement", _requirements(), ids=str)
def test_every_dependency_has_a_lower_and_an_upper_bound(requirement: Requirement) -> None:
    """The newest release a fresh machine pulls must be one the suite has passed with."""
    operators = {spec.operator for spec in requirement.specifier}
    assert operators & {"==", ">=", ">", "~="}, f"{requirement}: no lower bound"
    assert operators & {"==", "<", "<=", "~="}, f"{requirement}: no upper bound"


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    command = readme.split("Run the tests", 1)[1].split("```\n", 2)[1].strip()
    assert command in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert "-e '.[test]'" in command


# --- the templates' guards, run as the CI system would run them --------------------------------


def _github_step(name: str) -> dict:
    workflow = yaml.safe_load((REPO / "ci" / "github-actions.yml").read_text(encoding="utf-8"))
    steps = workflow["jobs"]["sandrun"]["steps"]
    return next(step for step in steps if step.get("name") == name)


def _gitlab_script() -> list[str]:
    job = yaml.safe_load((REPO / "ci" / "gitlab-ci.yml").read_text(encoding="utf-8"))["sandrun"]
    return list(job["script"])


def _shell(script: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run a template's script with ``python``/``sandrun`` replaced by a stub that logs its arguments."""
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    for tool in ("python", "sandrun"):
        (stub / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "{tmp_path}/calls"\n')
        (stub / tool).chmod(0o755)
    path = f"{stub}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        ["bash", "-eo", "pipefail", "-c", script],  # as GitHub runs a run: step
        env={"PATH": path, "HOME": str(tmp_path), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _calls(tmp_path: Path) -> str:
    calls = tmp_path / "calls"
    return calls.read_text() if calls.exists() else ""


@pytest.mark.parametrize(
    "repo, ref",
    [
        ("", ""),
        ("https://example.org/sandrun.git", ""),
        ("https://example.org/sandrun.git", "main"),
        ("https://example.org/sandrun.git", SHA[:12]),
        ("", SHA),
        ("https://example.org/s.git", SHA + "\nx"),
    ],
)
def test_install_step_refuses_an_unset_or_moving_ref(repo: str, ref: str, tmp_path: Path) -> None:
    for script in (_github_step(INSTALL_STEP)["run"], "\n".join(_gitlab_script()[1:3])):
        env = {
            "SANDRUN_REPO": repo,
            "SANDRUN_REF": ref,
            "WASMTIME_VERSION": "50.0.1",
            "SANDRUN_SIGNING_KEY": "k",
        }
        result = _shell(script, env, tmp_path)
        assert result.returncode == 1
        assert (
            "SANDRUN_REPO" in result.stdout and "SANDRUN_REF" in result.stdout and "40-hex" in result.stdout
        )
        assert "pip" not in _calls(tmp_path)


def test_install_step_installs_exactly_the_vetted_commit(tmp_path: Path) -> None:
    env = {
        "SANDRUN_REPO": "https://example.org/sandrun.git",
        "SANDRUN_REF": SHA,
        "WASMTIME_VERSION": "50.0.1",
    }
    expected = f"python -m pip install wasmtime==50.0.1 {NAME} @ git+https://example.org/sandrun.git@{SHA}\n"
    for script in (_github_step(INSTALL_STEP)["run"], "\n".join(_gitlab_script()[1:3])):
        (tmp_path / "calls").unlink(missing_ok=True)
        result = _shell(script, env, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert _calls(tmp_path) == expected


def test_without_the_signing_key_the_run_stops_before_anything_runs(tmp_path: Path) -> None:
    """A fork's pull request gets no secrets: a clear error, not an unsigned audit log."""
    github = _github_step("Require the signing key")["run"]
    gitlab = "\n".join(_gitlab_script())
    for script in (github, gitlab):
        result = _shell(script, {"SANDRUN_SIGNING_KEY": ""}, tmp_path)
        assert result.returncode == 1
        assert "SANDRUN_SIGNING_KEY" in result.stdout and "unsigned" in result.stdout
        assert _calls(tmp_path) == ""
    assert _shell(github, {"SANDRUN_SIGNING_KEY": "PEM"}, tmp_path).returncode == 0
    workflow = yaml.safe_load((REPO / "ci" / "github-actions.yml").read_text(encoding="utf-8"))
    names = [step.get("name") for step in workflow["jobs"]["sandrun"]["steps"]]
    assert names.index("Require the signing key") < names.index("Run")


def test_module_cache_key_has_the_os_and_wasmtime_version() -> None:
    workflow = yaml.safe_load((REPO / "ci" / "github-actions.yml").read_text(encoding="utf-8"))
    cache = next(
        s for s in workflow["jobs"]["sandrun"]["steps"] if s.get("uses", "").startswith("actions/cache@")
    )
    for needed in ("runner.os", "runner.arch", "env.WASMTIME_VERSION"):
        assert needed in cache["with"]["key"] and needed in cache["with"]["restore-keys"]
    gitlab = yaml.safe_load((REPO / "ci" / "gitlab-ci.yml").read_text(encoding="utf-8"))["sandrun"]
    assert "$WASMTIME_VERSION" in gitlab["cache"]["key"] and "linux" in gitlab["cache"]["key"]
    assert gitlab["image"].endswith(gitlab["cache"]["key"].split("-linux-")[1].split("-")[0])  # same OS
    # the version pinned for the key is the version installed
    assert workflow["env"]["WASMTIME_VERSION"] == gitlab["variables"]["WASMTIME_VERSION"]
    assert "wasmtime==$WASMTIME_VERSION" in _github_step(INSTALL_STEP)["run"]


def test_github_template_publishes_the_checkpoint_and_the_summary() -> None:
    step = _github_step("Step summary and signed checkpoint")
    assert step["if"] == "always()"
    assert (
        "summary.md" in step["run"]
        and "checkpoint.txt" in step["run"]
        and "GITHUB_STEP_SUMMARY" in step["run"]
    )


def test_gitlab_template_prints_the_checkpoint_and_keeps_the_outputs() -> None:
    job = yaml.safe_load((REPO / "ci" / "gitlab-ci.yml").read_text(encoding="utf-8"))["sandrun"]
    assert any("checkpoint.txt" in line for line in job["after_script"])
    assert job["artifacts"]["when"] == "always" and job["artifacts"]["paths"] == ["sandrun-out/"]
