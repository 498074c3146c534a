"""Reports: the report.json shape, JUnit XML, Markdown and HTML, and hostile text in all of them."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from runner.report import (
    CapturedLog,
    JobPlace,
    RunInfo,
    build_report,
    render_github,
    render_html,
    render_json,
    render_junit,
    render_markdown,
    sanitize_text,
)
from runner.results import JobResult
from runner.textsafe import _scrub

SHA = "a" * 64
HOSTILE = (
    "\x1b[31mred\x1b[0m\n::error file=x::forged\r\n::add-mask::secret ##[error]legacy ##vso[task.complete]"
    "\x00nul\x07bel\x0cff\ud800lone\ufffe <img src=x onerror=alert(1)> a|b ![t](http://evil.example/p.png) "
    "\u202eevil\u202c \x9b31m"
)


def result(name: str, status: str, manifest: str = "docs", **kw: Any) -> JobResult:
    fields: dict[str, Any] = {"manifest": manifest, "name": name, "tool": "mdlint", "module_sha256": SHA}
    if status in ("passed", "failed"):
        fields.update(exit_code=0, fuel_used=1234, memory_peak=2 << 20, wall_ms=1500,
                      stdout_sha256=SHA, stderr_sha256=SHA)  # fmt: skip
    return JobResult(**{**fields, "status": status, **kw})


def report(*results: JobResult) -> dict[str, Any]:
    return build_report(
        run_id="20260101T000000Z-deadbeef", plan_sha256="b" * 64, policy="ci", results=results
    )


SAMPLE = report(
    result("lint", "passed"),
    result("spell", "failed", exit_code=3, reason="exit code 3, expected 0"),
    result("loop", "failed", exit_code=None, trap="timeout", reason="trap: timeout (exceeded 30000 ms)"),
    result("escape", "denied", reason="[mount.changed] mount 'out/link' now leads through a symlink"),
    result("after", "skipped", reason="needs docs/spell (failed)"),
    result("other", "passed", manifest="data"),
)


# -- sanitize_text ----------------------------------------------------------------------------


def test_sanitize_strips_terminal_escapes() -> None:
    assert sanitize_text("\x1b[1;31mred\x1b[0m plain") == "red plain"
    assert sanitize_text("\x1b]8;;http://evil\x07link\x1b]8;;\x07") == "link"  # OSC 8 hyperlink
    assert sanitize_text("\x1b]0;title\x1b\\x") == "x"
    assert sanitize_text("a\x1bcb\x1b7c") == "abc"  # reset, save cursor
    assert sanitize_text("\x9b2Jcleared") == "cleared"  # 8-bit CSI
    assert sanitize_text("\x1bPdcs\x1b\\after") == "after"


def test_sanitize_neutralises_workflow_commands_anywhere() -> None:
    for command in (
        "::error::x",
        "::add-mask::s3cret",
        "::set-output name=a::b",
        "##[error]x",
        "##vso[task.x]",
    ):
        for text in (command, f"ok\n{command}", f"ok\r{command}", f"  {command}", f"\x1b[0m{command}"):
            clean = sanitize_text(text)
            assert "::" not in clean and "##" not in clean, (text, clean)
            assert "\n" not in clean and "\r" not in clean
    assert sanitize_text("a:\x1b[0m:b") == "a:\u200b:b"  # a command rebuilt by removing an escape


def test_sanitize_removes_what_xml_cannot_carry_and_bidi_controls() -> None:
    clean = sanitize_text("a\x00b\x08c\x7fd\x85e\ud800f\uffffg\u202eh\u2066i")
    assert clean == "a\ufffdb\ufffdc\ufffdd e\ufffdf\ufffdgh" + "i"
    assert sanitize_text("tab\tand\u2028line") == "tab and line"


def test_sanitize_keeps_ordinary_text_and_truncates() -> None:
    assert sanitize_text("exit code 3, expected 0") == "exit code 3, expected 0"
    assert sanitize_text("héllo wörld ✓ 日本") == "héllo wörld ✓ 日本"
    assert sanitize_text("x" * 600) == "x" * 499 + "…"
    assert len(sanitize_text("y" * 50, limit=10)) == 10


@given(st.text(), st.integers(min_value=1, max_value=300))
def test_sanitize_output_is_always_one_safe_line(text: str, limit: int) -> None:
    clean = sanitize_text(text, limit=limit)
    assert len(clean) <= limit
    assert "::" not in clean and "##" not in clean
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff\u202a-\u202e\u2066-\u2069]", clean)
    element = ET.Element("e", a=clean)
    element.text = clean
    ET.fromstring(ET.tostring(element, encoding="unicode"))  # well-formed XML either way


# -- report.json ------------------------------------------------------------------------------


def test_build_report_has_designs_shape() -> None:
    assert list(SAMPLE) == ["run", "plan_sha256", "policy", "ok", "jobs"]
    assert SAMPLE["ok"] is False
    assert list(SAMPLE["jobs"][0]) == [
        "manifest", "name", "tool", "module_sha256", "status", "exit_code", "trap", "fuel_used",
        "memory_peak", "rss_peak", "wall_ms", "stdout_sha256", "stderr_sha256", "stdout_truncated",
        "stderr_truncated", "reason", "invoke_results", "invoke",
    ]  # fmt: skip
    assert report(result("a", "passed"))["ok"] is True
    assert report()["ok"] is True  # nothing to fail


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
        max_leaves=8,
    ),
    st.sampled_from([HOSTILE.replace("\ud800", ""), HOSTILE]),  # a lone surrogate: orjson refuses
)
def test_render_json_is_the_standard_librarys_indented_json(value: Any, reason: str) -> None:
    """orjson makes the bytes; the stdlib's ``indent=2`` encoding defines them (incl. fallbacks),
    except that what JSON leaves raw but a terminal obeys (C1, DEL, line separators, bidi, lone
    surrogates) is written as a ``\\u`` escape: the same data, no control character on screen."""
    report = {"run": "r", "jobs": [value], "reason": reason}
    text = render_json(report)
    assert json.loads(text) == report
    invisible = re.compile(
        r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
    )
    assert not invisible.search(text)
    standard = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    if not invisible.search(standard):
        assert text == standard


def test_render_json_is_stable_and_round_trips() -> None:
    text = render_json(SAMPLE)
    assert text.endswith("}\n") and text == render_json(json.loads(text))
    assert json.loads(text) == SAMPLE
    assert [JobResult.from_dict(j) for j in json.loads(text)["jobs"]][1].reason == "exit code 3, expected 0"


# -- JUnit ------------------------------------------------------------------------------------


def test_junit_counts_and_mapping() -> None:
    root = ET.fromstring(render_junit(SAMPLE))
    assert root.tag == "testsuites"
    assert {k: root.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "6", "failures": "2", "errors": "1", "skipped": "1",
    }  # fmt: skip
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"docs", "data"}
    docs = suites["docs"]
    assert (docs.get("tests"), docs.get("failures"), docs.get("errors"), docs.get("skipped")) == (
        "5",
        "2",
        "1",
        "1",
    )
    cases = {c.get("name"): c for c in docs.findall("testcase")}
    assert {c.get("classname") for c in cases.values()} == {"docs"}
    assert cases["lint"].get("time") == "1.500" and list(cases["lint"]) == []
    failure = cases["spell"].find("failure")
    assert failure is not None
    assert (failure.get("type"), failure.get("message")) == ("exit", "exit code 3, expected 0")
    assert "logs/" not in (failure.text or "")  # no logs given: no file is named
    assert cases["loop"].find("failure").get("type") == "timeout"  # type: ignore[union-attr]
    assert cases["escape"].find("error").get("type") == "denied"  # type: ignore[union-attr]
    assert cases["after"].find("skipped").get("message") == "needs docs/spell (failed)"  # type: ignore[union-attr]
    props = {p.get("name"): p.get("value") for p in docs.iter("property")}
    assert props["policy"] == "ci" and props["run"] == "20260101T000000Z-deadbeef"


def test_junit_survives_hostile_reasons() -> None:
    xml = render_junit(report(result("evil", "failed", exit_code=1, reason=HOSTILE)))
    root = ET.fromstring(xml)  # parses: no illegal characters, no broken markup
    failure = root.find("testsuite/testcase/failure")
    assert failure is not None
    message = failure.get("message") or ""
    assert "\x1b" not in xml and "\x00" not in xml and "\x9b" not in xml
    assert "::" not in message and "##" not in message
    assert "<img" not in xml  # escaped as &lt;img
    assert "\n" not in message


def test_junit_of_no_jobs_is_valid() -> None:
    root = ET.fromstring(render_junit(report()))
    assert root.get("tests") == "0" and root.findall("testsuite") == []


# -- Markdown ---------------------------------------------------------------------------------


def _table_rows(markdown: str) -> list[list[str]]:
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    return [re.split(r"(?<!\\)\|", row)[1:-1] for row in rows]


def test_markdown_summary_table() -> None:
    text = render_markdown(SAMPLE)
    assert text.startswith("### ❌ Sandrun: 2 of 6 jobs passed")
    rows = _table_rows(text)
    assert len(rows) == 2 + 6  # header, delimiter, one per job
    assert {len(r) for r in rows} == {8}
    spell = next(r for r in rows if "docs/spell" in r[1])
    assert [c.strip() for c in spell] == [
        "❌", "docs/spell", "mdlint", "exit 3", "1,234", "2.0 MiB", "1.50 s", "exit code 3, expected 0",
    ]  # fmt: skip
    loop = next(r for r in rows if "docs/loop" in r[1])
    assert loop[3].strip() == "timeout"
    assert "⏭️" in next(r for r in rows if "docs/after" in r[1])[0]


def test_markdown_cells_cannot_break_the_table_or_inject() -> None:
    text = render_markdown(report(result("evil", "failed", exit_code=1, reason=HOSTILE)))
    rows = _table_rows(text)
    assert {len(r) for r in rows} == {8}  # the '|' in the reason did not add a column
    assert len(text.splitlines()) == 8  # the newlines in the reason did not add lines
    assert "<img" not in text and "&lt;img" in text
    assert "\\!\\[t\\]" in text  # no image, no tracking pixel
    assert "\x1b" not in text and "::" not in text


def test_markdown_cells_make_no_link_mention_or_emoji_without_markup() -> None:
    """GitHub links ``https://`` and ``www.`` and renders ``:emoji:`` and ``@mentions`` in a step
    summary with no Markdown markup at all: text from a log or a policy makes none of them (the
    escaped punctuation renders as itself)."""
    reason = "see https://evil.example/login or WWW.evil.example :white_check_mark: passed, ask @admin"
    text = render_markdown(report(result("evil", "failed", exit_code=1, reason=reason)))
    for raw in ("https://", "www.", "WWW.", ":white_check_mark:", " @admin"):
        assert raw not in text, raw
    assert "https\\://evil.example/login or WWW\\.evil.example \\:white\\_check\\_mark\\:" in text


def test_markdown_of_no_jobs() -> None:
    assert "No jobs." in render_markdown(report())


# -- HTML -------------------------------------------------------------------------------------


def test_html_is_self_contained_with_bars_and_verification() -> None:
    limits = {"docs/lint": {"fuel": 2468, "memory": 8 << 20, "timeout_ms": 3000}}
    page = render_html(SAMPLE, limits=limits, verification="audit chain verified: 42 records, sealed")
    assert page.startswith("<!DOCTYPE html>")
    assert "<style>" in page and "Content-Security-Policy" in page
    for forbidden in ("<script", "<link", "src=", "http://", "https://", "@import", "url("):
        assert forbidden not in page
    assert "width:50.0%" in page  # fuel 1234 of 2468
    assert "width:25.0%" in page  # memory 2 MiB of 8 MiB
    assert "audit chain verified: 42 records, sealed" in page
    assert page.count("<tr>") == 1 + 6
    assert 'class="bar"' not in render_html(SAMPLE)  # no limits given: no bars


def test_html_escapes_hostile_text() -> None:
    page = render_html(
        report(result("evil", "failed", exit_code=1, reason=HOSTILE)),
        verification="<script>alert(1)</script>",
    )
    assert "<img" not in page and "<script" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "\x1b" not in page and "\u202e" not in page


@given(
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=40), st.integers(min_value=0, max_value=50)
)
def test_sanitize_fast_path_changes_nothing(text: str, limit: int) -> None:
    """Plain ASCII skips the regular expressions: the result must be what they would give."""
    assert sanitize_text(text, limit=limit) == _scrub(text, limit)


# -- captured output in JUnit, the HTML page's run facts and log links, GitHub annotations ---------


def test_junit_carries_each_jobs_output_neutralised_and_names_only_given_logs() -> None:
    logs = {
        "docs/spell": {
            "stdout": CapturedLog("logs/docs/spell.stdout", "line one\n::add-mask::x\x1b[2J\x00\n" + HOSTILE),
            "stderr": CapturedLog("logs/docs/spell.stderr", "oops <&>\n"),
        },
        "docs/lint": {"stdout": CapturedLog("logs/docs/lint.stdout", "x" * 200_000)},
    }
    text = render_junit(SAMPLE, logs=logs)
    root = ET.fromstring(text)  # still well-formed XML, whatever the guest printed
    cases = {c.get("name"): c for c in root.iter("testcase")}
    out = cases["spell"].find("system-out").text or ""  # type: ignore[union-attr]
    assert out.startswith("line one\n") and "::add-mask::" not in out and "\x1b" not in out
    assert not any(line.startswith("::") for line in out.splitlines())
    assert cases["spell"].find("system-err").text == "oops <&>\n"  # type: ignore[union-attr]
    failure = cases["spell"].find("failure").text or ""  # type: ignore[union-attr]
    assert "stdout: logs/docs/spell.stdout" in failure and "stderr: logs/docs/spell.stderr" in failure
    long = cases["lint"].find("system-out").text or ""  # type: ignore[union-attr]
    assert len(long) < 70_000 and long.rstrip().endswith("the whole stream is in the log file)")
    # a denied or skipped job has no logs: no <system-out>, no file named
    for name in ("escape", "after", "loop"):
        assert cases[name].find("system-out") is None and "logs/" not in ET.tostring(cases[name], "unicode")


def test_html_shows_date_policy_and_links_to_existing_logs_escaped() -> None:
    info = RunInfo("2026-01-01T00:00:00.000Z", "ci<b>", "policies/ci.yaml", "c" * 64)
    logs = {"docs/spell": {"stdout": CapturedLog('../out/logs/docs/"x<y>.stdout', "")}}
    page = render_html(SAMPLE, run_info=info, logs=logs)
    assert "date 2026-01-01T00:00:00.000Z" in page
    assert "policy ci&lt;b&gt; (policies/ci.yaml, sha256 " + "c" * 64 + ")" in page
    assert '<a href="../out/logs/docs/%22x%3Cy%3E.stdout">stdout</a>' in page
    assert page.count("<a href=") == 1  # only the log that was given: none for skipped/denied jobs
    assert "<b>" not in page


def test_github_annotations_one_per_failed_or_denied_job_escaped() -> None:
    hostile = report(
        result("a", "failed", exit_code=1, reason="50% done\r\n::error::forged, x: y"),
        result("b", "denied", reason="[mount.changed] nope"),
        result("c", "skipped", reason="needs docs/a (failed)"),
        result("d", "passed"),
    )
    places = {"docs/a": JobPlace("ci/docs,x:1.yaml", 7)}
    lines = render_github(hostile, places=places).splitlines()
    assert len(lines) == 2 and all(line.startswith("::error ") for line in lines)
    first, second = lines
    assert first.startswith("::error file=ci/docs%2Cx%3A1.yaml,line=7,title=docs/a::failed: 50%25 done")
    assert first.count("::") == 2  # the annotation's own two, none forged from the reason
    assert "\r" not in first and "\n" not in first
    assert second == "::error title=docs/b::denied: [mount.changed] nope"
