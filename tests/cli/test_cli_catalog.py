"""The built-in tools, run through `sandrun exec`, against the host's own tools on the same inputs.

Each guest sees the test's data folder at /d; the host tool runs inside that folder with the same
names, so after dropping the "/d/" prefix their outputs and exit codes must be equal.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from cli_process import sandrun

from runner.catalog import CATALOG


def _host(*args: str, cwd: Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which(args[0]) is None:
        pytest.skip(f"no host {args[0]}")
    env = {**os.environ, "LC_ALL": "C"}
    return subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, timeout=60, check=False, env=env, input=input
    )


def _guest(tool: str, *args: str, data: Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    out = data.parent / "out"
    return sandrun(
        "exec",
        "--out",
        str(out),
        "--map-dir",
        "data::/d",
        f"builtin:{tool}",
        *args,
        cwd=data.parent,
        input=input,
    )


def _paths(args: tuple[str, ...], prefix: str) -> list[str]:
    """ "@/NAME" arguments as the guest ("/d/NAME") or the host ("NAME", inside the data folder) sees them."""
    return [prefix + a[2:] if a.startswith("@/") else a for a in args]


def _same(tool: str, *args: str, data: Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run TOOL ARGS as a built-in and on the host; assert equal exit codes and stdout."""
    guest = _guest(tool, *_paths(args, "/d/"), data=data, input=input)
    host = _host(tool, *_paths(args, ""), cwd=data, input=input)
    assert "Traceback" not in guest.stderr
    assert (guest.returncode, guest.stdout.replace("/d/", "")) == (host.returncode, host.stdout), guest.stderr
    return guest


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "empty").write_bytes(b"")
    (folder / "text.txt").write_text("hello world\nTODO: fix\n  two  words \n\nlast line no newline")
    (folder / "random.bin").write_bytes(hashlib.sha256(b"seed").digest() * 40_000)  # 1.28 MB
    (folder / "with space.txt").write_text("a b\tc\n")
    (folder / "copy.txt").write_text("hello world\nTODO: fix\n  two  words \n\nlast line no newline")
    (folder / "prefix.txt").write_text("hello world\nTODO")
    # bytes that are neither space nor printable: GNU wc counts no word made only of them
    (folder / "bytes.bin").write_bytes(b" \x01 a\x80b \xff\x00\t\x7f\n\x85 c" + bytes(range(256)) * 3)
    return folder


FILES = ("@/empty", "@/text.txt", "@/random.bin", "@/with space.txt", "@/bytes.bin")


def test_sha256sum_prints_what_the_host_and_hashlib_print(data: Path) -> None:
    guest = _same("sha256sum", *FILES, data=data)
    for line, name in zip(guest.stdout.splitlines(), FILES, strict=True):
        assert line == f"{hashlib.sha256((data / name[2:]).read_bytes()).hexdigest()}  /d/{name[2:]}"


def test_sha256sum_check_agrees_with_the_host_on_good_and_tampered_lists(data: Path) -> None:
    sums = _host("sha256sum", *(f[2:] for f in FILES), cwd=data).stdout
    (data / "SUMS").write_text(sums)  # names relative to data/, where the host runs
    (data / "GUEST").write_text(sums.replace("  ", "  /d/"))  # the same list as the guest sees it
    for expected in (0, 1, 1):
        guest = _guest("sha256sum", "-c", "/d/GUEST", data=data)
        host = _host("sha256sum", "-c", "SUMS", cwd=data)
        assert guest.returncode == host.returncode == expected
        assert guest.stdout.replace("/d/", "") == host.stdout
        assert guest.stderr.replace("/d/", "").replace("sha256sum: ", "") in host.stderr.replace(
            "sha256sum: ", ""
        )
        if expected == 0:
            (data / "text.txt").write_text("changed")
        elif (data / "empty").exists():
            (data / "empty").unlink()  # then one cannot be read either


def test_sha256sum_check_refuses_a_malformed_line(data: Path) -> None:
    (data / "BAD").write_text("not a checksum line\n")
    guest = _guest("sha256sum", "-c", "/d/BAD", data=data)
    assert guest.returncode == 1 and "improperly formatted" in guest.stderr


@pytest.mark.parametrize(
    "args", [FILES, ("-l", "@/text.txt"), ("-w", "-c", "@/text.txt", "@/random.bin"), ("-lwc", "@/empty")]
)
def test_wc_prints_what_the_host_prints(data: Path, args: tuple[str, ...]) -> None:
    _same("wc", *args, data=data)


@pytest.mark.parametrize(
    ("tool", "args", "says"),
    [
        ("wc", ("-lx", "@/text.txt"), "wc: unknown option -x (only -l, -w, -c)"),
        ("diff", ("-qu", "@/text.txt", "@/text.txt"), "diff: unknown option -u (only -q and -r"),
        ("json-check", ("-v", "@/text.txt"), "json-check: no options; usage: json-check [FILE...]"),
        ("yaml-check", ("--strict",), "yaml-check: no options; usage: yaml-check [FILE...]"),
    ],
)
def test_an_unknown_option_is_trouble_named_on_stderr(
    data: Path, tool: str, args: tuple[str, ...], says: str
) -> None:
    guest = _guest(tool, *_paths(args, "/d/"), data=data)
    assert (guest.returncode, guest.stdout) == (2, "") and says in guest.stderr


def test_double_dash_ends_the_options_of_wc(data: Path) -> None:
    (data / "-l").write_text("one two\n")
    _same("wc", "--", "@/-l", data=data)


def test_wc_on_piped_stdin_uses_the_host_width(data: Path) -> None:
    _same("wc", data=data, input="one two\nthree\n")


@pytest.mark.parametrize(
    "args",
    [
        ("@/text.txt", "@/copy.txt"),
        ("@/text.txt", "@/with space.txt"),
        ("@/text.txt", "@/prefix.txt"),
        ("@/prefix.txt", "@/text.txt"),
        ("-s", "@/text.txt", "@/random.bin"),
        ("@/empty", "@/text.txt"),
    ],
)
def test_cmp_agrees_with_the_host(data: Path, args: tuple[str, ...]) -> None:
    guest = _same("cmp", *args, data=data)
    host = _host("cmp", *_paths(args, ""), cwd=data)
    assert guest.stderr.replace("/d/", "") == host.stderr  # the EOF messages too


def test_cmp_on_a_missing_file_is_trouble(data: Path) -> None:
    assert _guest("cmp", "/d/text.txt", "/d/nope", data=data).returncode == 2


def test_diff_reports_like_diff_qr(data: Path) -> None:
    for side, files in (
        ("a", {"same": "1", "changed": "x", "only-a": "", "sub/deep": "1", "kind": "f"}),
        ("b", {"same": "1", "changed": "y", "only-b": "", "sub/deep": "2"}),
    ):
        for name, text in files.items():
            (data / side / name).parent.mkdir(parents=True, exist_ok=True)
            (data / side / name).write_text(text)
    (data / "b" / "kind").mkdir()
    _same("diff", "-q", "-r", "@/a", "@/b", data=data)
    _same("diff", "@/a/same", "@/b/same", data=data)
    guest = _same("diff", "-q", "@/text.txt", "@/copy.txt", data=data)
    assert guest.returncode == 0


@pytest.mark.parametrize(
    "args",
    [
        ("-n", "TODO", "@/text.txt"),
        ("-i", "-c", "HELLO", "@/text.txt", "@/copy.txt"),
        ("-v", "-n", "o", "@/text.txt"),
        ("-E", "tw(o|x) +words", "@/text.txt"),
        ("-F", "a.b", "@/text.txt"),
        ("-l", "-e", "TODO", "-e", "a b", "@/text.txt", "@/with space.txt", "@/empty"),
        ("-q", "TODO", "@/text.txt"),
        ("-n", "nothing matches", "@/text.txt"),
        ("-E", "(", "@/text.txt"),
        ("TODO", "@/missing"),
    ],
)
def test_grep_agrees_with_the_host(data: Path, args: tuple[str, ...]) -> None:
    guest = _guest("grep", *_paths(args, "/d/"), data=data)
    host = _host("grep", *_paths(args, ""), cwd=data)
    assert guest.returncode == host.returncode
    if host.returncode != 2:
        assert guest.stdout.replace("/d/", "") == host.stdout


def test_grep_recursive_gate_reads_folders_in_sorted_order(data: Path) -> None:
    guest = _guest("grep", "-r", "-n", "TODO", "/d", data=data)
    assert guest.returncode == 0
    assert guest.stdout.splitlines() == [
        "/d/copy.txt:2:TODO: fix",
        "/d/prefix.txt:2:TODO",
        "/d/text.txt:2:TODO: fix",
    ]


def test_cat_echo_true_false_agree_with_the_host(data: Path) -> None:
    guest = _guest("cat", "/d/text.txt", "/d/empty", "/d/with space.txt", data=data)
    assert guest.returncode == 0
    assert guest.stdout == (data / "text.txt").read_text() + (data / "with space.txt").read_text()
    assert _guest("cat", data=data, input="from stdin").stdout == "from stdin"
    assert _guest("cat", "/d/missing", data=data).returncode == _host("cat", "missing", cwd=data).returncode
    _same("echo", "a", " b ", "-x", data=data)
    _same("echo", "-n", "no newline", data=data)
    _same("true", "ignored", data=data)
    _same("false", data=data)


JSON_CASES = {
    '{"a": [1, 2.5e3, -0, true, null, "x\\u00e9\\ud83d\\ude00"], "b": {}}': True,
    "[]": True,
    ' "string" ': True,
    '{"a": 1, "\\u0061": 2}': False,  # the same key, escaped
    "[1,]": False,
    "01": False,
    "NaN": False,
    "[Infinity]": False,
    '"\\ud800"': False,
    '{"a": 1} x': False,
    "": False,
    '"tab\there"': False,
    "[" * 600 + "]" * 600: False,
    "[" * 500 + "]" * 500: True,
    '{"a":' * 512 + "1" + "}" * 512: True,
    '{"a":' * 513 + "1" + "}" * 513: False,
}


def test_json_check_accepts_strict_json_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for index, (text, valid) in enumerate(JSON_CASES.items()):
        (data / f"{index}.json").write_text(text)
        guest = _guest("json-check", f"/d/{index}.json", data=data)
        assert guest.returncode == (0 if valid else 1), (text[:40], guest.stdout)
        if valid:  # and Python agrees
            json.loads(text, object_pairs_hook=dict)
        else:
            assert guest.stdout.startswith(f"/d/{index}.json:1:")
    (data / "bad.json").write_bytes(b'["\xc0\xaf"]')
    assert _guest("json-check", "/d/bad.json", data=data).stdout == "/d/bad.json:1:3: invalid UTF-8\n"
    assert _guest("json-check", "/d/missing.json", data=data).returncode == 2


YAML_ACCEPTED = [
    'a: 1\nb:\n  - x\n  - y: 2\n    z: 3\nc: |\n  text\n   more\nd: "q\\n"\n',
    "---\nk:\n- a\n- b\nm: 'it''s'\n",
    "- - a\n  - b\n- c\n",
    "plain scalar\n",
    'a: [1, {b: 2}, "c"]  # comment\n',
    "# only a comment\n",
    "url: http://example.org/x\nempty:\nwin: 1\r\n",
    "a: |\n  x\n  \ty\nb: >-\n\n  folded\n",
    "- |\n x\n- [a, 'b', {c: d}]\n",
]
YAML_REFUSED = {
    "a: 1\na: 2\n": "2:1: duplicate key",
    "a: &x 1\n": "anchors are refused",
    "a: *x\n": "aliases are refused",
    "a: !!str 1\n": "tags are refused",
    "<<: {}\n": "merge keys are refused",
    "a:\n\tb: 1\n": "tab in indentation",
    "a: b: c\n": "a mapping inside a plain scalar",
    'a: "open\n  close"\n': "not closed on its line",
    "a: 1\n---\nb: 2\n": "one document only",
    "a: 1\n  b: 2\n": "bad indentation",
    "? a\n: b\n": '"?" keys are refused',
    "a: [1, 2\n": "multi-line flow is refused",
    "x: 1\n- y\n": 'expected "key: value"',
    "%YAML 1.2\n---\na: 1\n": "directives are refused",
    "a: \x01\n": "control character",
    "a: - b\n": "a block indicator inside a value",
    "a: |2\n  x\n": "indentation indicators are refused",
    'a: ["x"y]\n': "expected ',' or a closing bracket",
    "a: |\n    x\n  y\n": "3:3: bad indentation",
    "a: |\n  x\n\tb: 1\n": "3:1: tab in indentation",
    "a: 1\n: x\n": "2:1: empty key",
}


def test_yaml_check_accepts_only_what_pyyaml_loads(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for index, text in enumerate(YAML_ACCEPTED):
        (data / f"ok{index}.yaml").write_bytes(text.encode())
        guest = _guest("yaml-check", f"/d/ok{index}.yaml", data=data)
        assert guest.returncode == 0, (text, guest.stdout)
        yaml.safe_load(text)  # the subset is YAML: what the tool accepts, PyYAML loads
    for index, (text, reason) in enumerate(YAML_REFUSED.items()):
        (data / f"bad{index}.yaml").write_bytes(text.encode())
        guest = _guest("yaml-check", f"/d/bad{index}.yaml", data=data)
        assert guest.returncode == 1 and reason in guest.stdout, (text, guest.stdout)


def test_yaml_check_accepts_the_repository_policies_and_manifests(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    data = tmp_path / "data"
    data.mkdir()
    for path in [*repo.glob("policies/*.yaml"), *repo.glob("manifests/examples/*.yaml")]:
        shutil.copy(path, data / path.name)
    guest = _guest("yaml-check", *(f"/d/{p.name}" for p in sorted(data.iterdir())), data=data)
    assert guest.returncode == 0, guest.stdout


def test_fs_analyze_matches_a_walk_of_the_tree(data: Path) -> None:
    (data / "sub" / "deeper").mkdir(parents=True)
    (data / "sub" / "deeper" / "big").write_bytes(b"x" * 5000)
    (data / "sub" / "ünïcode\x01.txt").write_bytes(b"12")
    (data / "link").symlink_to("text.txt")
    guest = _guest("fs-analyze", "--top", "3", "/d", data=data)
    assert guest.returncode == 0, guest.stderr
    report = json.loads(guest.stdout)
    files = [p for p in data.rglob("*") if p.is_file() and not p.is_symlink()]
    sizes = sorted(
        ((p.stat().st_size, p.relative_to(data).as_posix()) for p in files), key=lambda s: (-s[0], s[1])
    )
    assert report == {
        "path": "/d",
        "files": len(files),
        "directories": 2,
        "symlinks": 1,
        "other": 0,
        "bytes": sum(s for s, _ in sizes),
        "max_depth": 3,
        "largest": [{"path": p, "bytes": s} for s, p in sizes[:3]],
    }


def test_sandrun_catalog_lists_every_builtin_as_text_and_json() -> None:
    listed = json.loads(sandrun("catalog", "--format", "json").stdout)
    assert [(b["name"], b["sha256"], b["module"]) for b in listed["builtins"]] == [
        (b.name, b.sha256, b.module) for b in CATALOG.values()
    ]
    assert listed["builtins"][3]["actions"] == ["tool.fs.read"] and listed["builtins"][3]["effects"] == {
        "privacy": 0.1
    }
    text = sandrun("catalog").stdout
    assert all(b.sha256 in text and b.doc in text for b in CATALOG.values())
