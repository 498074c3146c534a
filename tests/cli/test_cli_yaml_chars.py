"""Files mean what they visibly say, through the CLI: refused characters and one line per problem."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_process import sandrun
from cli_project import make_project

HOSTILE = Path(__file__).resolve().parents[1] / "hostile" / "yaml"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


def test_a_nel_inside_a_policy_comment_is_refused(project: Path) -> None:
    shutil.copyfile(HOSTILE / "nel-in-comment.yaml", project / "policies" / "nel.yaml")
    result = sandrun("check", "manifests", "--policy", "policies/nel.yaml", cwd=project)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("policies/nel.yaml:6:") and "[yaml.invisible-char]" in line and "U+0085" in line


@pytest.mark.parametrize("char", ["\u2028", "\u202e", "\u2066"], ids=["LS", "RLO", "LRI"])
def test_refused_characters_in_a_manifest(project: Path, char: str) -> None:
    manifest = project / "manifests" / "hello.yaml"
    manifest.write_text(manifest.read_text().replace("name: greet", f"name: greet  # {char}"))
    result = sandrun("check", "manifests", "--policy", "policies/lenient.yaml", cwd=project)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("manifests/hello.yaml:7:") and f"U+{ord(char):04X}" in line and char not in line


@pytest.mark.parametrize(
    "hidden", ["\u200b", "\u2060", "\U000e0020\U000e0072\U000e006d"], ids=["ZWSP", "WJ", "tags"]
)
def test_an_argument_hiding_invisible_characters_is_refused(project: Path, hidden: str) -> None:
    # the reviewer reads --dry-run; the tool got "--dry-run" plus invisible text (tag characters
    # spell " rm"), an argument it does not know and may ignore
    manifest = project / "manifests" / "hello.yaml"
    manifest.write_text(
        manifest.read_text().replace("name: greet,", f'name: greet, args: ["--dry-run{hidden}"],')
    )
    result = sandrun("check", "manifests", "--policy", "policies/lenient.yaml", cwd=project)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == len(hidden) and all("[yaml.invisible-char]" in line for line in lines), lines
    assert (
        lines[0].startswith("manifests/hello.yaml:7:") and f"U+{ord(hidden[0]):04X} is invisible" in lines[0]
    )
    assert not any(char in result.stderr for char in hidden)


def test_line_breaks_and_controls_in_keys_never_split_or_hide_an_error(project: Path) -> None:
    manifest = project / "manifests" / "hello.yaml"
    text = manifest.read_text().replace("name: greet,", 'name: greet, env: {"A\\nB": 1, "C\\rD": 2},')
    manifest.write_text(text + '"x\\u2028y\\u202ez": 1\n')
    result = sandrun("check", "manifests", "--policy", "policies/lenient.yaml", cwd=project)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 3 and all(line.startswith("manifests/hello.yaml:") for line in lines), lines
    assert "/env/A\\nB " in result.stderr and "/env/C\\rD " in result.stderr and "\r" not in result.stderr
    assert "/x\\u2028y\\u202ez " in result.stderr and "\u202e" not in result.stderr
