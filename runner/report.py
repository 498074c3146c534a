"""Reports of a run: ``report.json``, JUnit XML, a Markdown summary and a self-contained HTML page.

Pure functions over the report dict (DESIGN.md, "Run outputs"), so a report can be rendered again
later from ``report.json`` or from the audit log alone. Text that a guest controls (a trap message
inside a ``reason``; tool and job names too, when a plan was crafted by hand) reaches CI logs and
step summaries, so every renderer passes it through :func:`sanitize_text` first and then escapes it
for its own format: it can never forge a GitHub workflow command, break the XML, move the terminal
cursor or inject Markdown/HTML.
"""

from __future__ import annotations

import html
import json
import re
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import orjson

from runner.results import JobResult
from runner.textsafe import LINE_LIMIT, sanitize_text

__all__ = [
    "sanitize_text",
    "CapturedLog",
    "RunInfo",
    "JobPlace",
    "build_report",
    "render_json",
    "render_junit",
    "render_markdown",
    "render_html",
    "render_github",
    "github_escape",
    "github_annotation",
]

STREAM_TEXT_LIMIT = 64 << 10  # characters of a job's stream shown in JUnit: CI test tabs choke on more


class CapturedLog(NamedTuple):
    """One stream of a job as written under ``logs/``: ``path`` is the link to it (relative, POSIX),
    ``text`` its first bytes as text. Only logs that exist and hold that job's bytes are given."""

    path: str
    text: str


Logs = Mapping[str, Mapping[str, CapturedLog]]  # job id -> stream ("stdout"/"stderr") -> its log


class RunInfo(NamedTuple):
    """Facts of a run that ``report.json`` leaves out: when its plan was made, and the policy file."""

    date: str
    policy_name: str
    policy_path: str
    policy_sha256: str


class JobPlace(NamedTuple):
    """Where a job is written: its manifest file and, when known, the line of its entry."""

    file: str
    line: int | None


# -- the report dict ---------------------------------------------------------------------------


def build_report(
    *, run_id: str, plan_sha256: str, policy: str, results: Sequence[JobResult]
) -> dict[str, Any]:
    """DESIGN.md's ``report.json``: ``ok`` only when every job passed."""
    return {
        "run": run_id,
        "plan_sha256": plan_sha256,
        "policy": policy,
        "ok": all(r.status == "passed" for r in results),
        "jobs": [r.to_dict() for r in results],
    }


_JSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE | orjson.OPT_PASSTHROUGH_SUBCLASS


# JSON escapes C0 controls but lets these through raw: C1 controls (8-bit CSI among them), DEL,
# the Unicode line separators, the bidi controls and lone surrogates. Escaped, they decode to the
# same strings.
_JSON_INVISIBLE = re.compile(r"[\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def render_json(report: Mapping[str, Any]) -> str:
    """Pretty and stable (key order as built), newline-terminated: exactly
    ``json.dumps(report, indent=2, ensure_ascii=False)``, made by orjson (about 8x faster: it is
    per job) unless orjson refuses the value (a lone surrogate, a ``str`` subclass, a huge int),
    with every control or invisible character JSON leaves raw written as a ``\\u`` escape: the
    same data, but no terminal or CI log that shows the file sees a control character."""
    try:
        text = orjson.dumps(report, option=_JSON_OPTIONS).decode()
    except orjson.JSONEncodeError:
        text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    if text.isascii() and "\x7f" not in text:
        return text
    return _JSON_INVISIBLE.sub(_json_escape, text)


# -- shared formatting -------------------------------------------------------------------------

_ICONS = {"passed": "✅", "failed": "❌", "denied": "⛔", "skipped": "⏭️"}


def _counts(jobs: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts = {status: 0 for status in _ICONS}
    for job in jobs:
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    return counts


def _job_id(job: Mapping[str, Any]) -> str:
    return f"{job['manifest']}/{job['name']}"


def _outcome(job: Mapping[str, Any]) -> str:
    if job.get("trap"):
        return sanitize_text(str(job["trap"]), limit=40)
    if job.get("exit_code") is not None:
        return f"exit {job['exit_code']}"
    return "—"


def _bytes(n: int | None) -> str:
    if n is None:
        return "—"
    if n < 1024:
        return f"{n} B"
    value, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def _duration(ms: int | None) -> str:
    if ms is None:
        return "—"
    return f"{ms} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def _number(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


# -- JUnit XML ---------------------------------------------------------------------------------


def _seconds(ms: int | None) -> str:
    return f"{(ms or 0) / 1000:.3f}"


def _details(job: Mapping[str, Any], logs: Mapping[str, CapturedLog]) -> str:
    """The body of a <failure>/<error>: the facts a person needs, one per line, all sanitised; the
    log files only when they were written (a skipped or denied job, an empty stream, has none)."""
    lines = [
        f"reason: {job.get('reason') or '—'}",
        f"tool: {job['tool']} (sha256 {job['module_sha256']})",
        f"outcome: {_outcome(job)}",
        f"fuel used: {_number(job.get('fuel_used'))}",
        f"memory peak: {_bytes(job.get('memory_peak'))}",
        f"wall time: {_duration(job.get('wall_ms'))}",
    ]
    for stream, log in logs.items():
        cut = " (truncated)" if job.get(f"{stream}_truncated") else ""
        lines.append(f"{stream}: {log.path}{cut}")
    return "\n".join(sanitize_text(line, limit=2000) for line in lines) + "\n"


def _stream_text(text: str) -> str:
    """A job's output as element text: neutralised line by line (its line breaks kept), capped."""
    if len(text) > STREAM_TEXT_LIMIT:
        text = text[:STREAM_TEXT_LIMIT] + "\n… (cut; the whole stream is in the log file)"
    return "\n".join(sanitize_text(line, limit=STREAM_TEXT_LIMIT) for line in text.splitlines()) + "\n"


def render_junit(report: Mapping[str, Any], *, logs: Logs | None = None) -> str:
    """One ``<testsuite>`` per manifest, one ``<testcase>`` per job (classname = manifest, name = job).

    ``logs`` (by job id) puts each job's captured output in ``<system-out>``/``<system-err>``
    (neutralised, capped at :data:`STREAM_TEXT_LIMIT` characters) and names its log files.

    ``failed`` → ``<failure type="exit|<trap kind>">``; ``denied`` → ``<error type="denied">`` (the
    job never ran: a problem of the setup, not of the tool); ``skipped`` → ``<skipped>``. This is the
    subset GitHub test reporters, GitLab and Jenkins all read.
    """
    jobs: list[Mapping[str, Any]] = report["jobs"]
    logs = logs or {}
    suites: dict[str, list[Mapping[str, Any]]] = {}
    for job in jobs:
        suites.setdefault(job["manifest"], []).append(job)

    def totals(element: ET.Element, members: Sequence[Mapping[str, Any]]) -> None:
        counts = _counts(members)
        element.set("tests", str(len(members)))
        element.set("failures", str(counts["failed"]))
        element.set("errors", str(counts["denied"]))
        element.set("skipped", str(counts["skipped"]))
        element.set("time", _seconds(sum(j.get("wall_ms") or 0 for j in members)))

    root = ET.Element("testsuites", name=sanitize_text(f"sandrun {report['run']}", limit=200))
    totals(root, jobs)
    for manifest, members in suites.items():
        suite = ET.SubElement(root, "testsuite", name=sanitize_text(manifest, limit=200))
        totals(suite, members)
        properties = ET.SubElement(suite, "properties")
        for key in ("run", "plan_sha256", "policy"):
            ET.SubElement(properties, "property", name=key, value=sanitize_text(str(report[key]), limit=200))
        for job in members:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=sanitize_text(manifest, limit=200),
                name=sanitize_text(job["name"], limit=200),
                time=_seconds(job.get("wall_ms")),
            )
            message = sanitize_text(job.get("reason") or job["status"])
            captured = logs.get(_job_id(job), {})
            if job["status"] == "failed":
                failure = ET.SubElement(
                    case, "failure", message=message, type=_outcome(job).partition(" ")[0]
                )
                failure.text = _details(job, captured)
            elif job["status"] == "denied":
                error = ET.SubElement(case, "error", message=message, type="denied")
                error.text = _details(job, captured)
            elif job["status"] == "skipped":
                ET.SubElement(case, "skipped", message=message)
            for stream, tag in (("stdout", "system-out"), ("stderr", "system-err")):
                if stream in captured:
                    ET.SubElement(case, tag).text = _stream_text(captured[stream].text)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# -- Markdown ----------------------------------------------------------------------------------

# Backslash-escaped in a GFM table cell: the cell separator, emphasis, code, links/images, HTML,
# and what GitHub turns into links or pictures without any markup: ``https://`` and ``www.``
# autolinks, ``@`` mentions and e-mail, ``:emoji:`` shortcodes (a guest's ``:white_check_mark:``
# passed). An escaped ASCII punctuation character renders as itself.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~!:@])|(?<=[wW]{3})(\.)")


def _md(text: str, *, limit: int = 500) -> str:
    """One GFM table cell: sanitised, HTML-escaped, Markdown punctuation escaped."""
    text = html.escape(sanitize_text(text, limit=limit), quote=False)
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(), text)


def _headline(report: Mapping[str, Any]) -> tuple[str, str]:
    jobs = report["jobs"]
    counts = _counts(jobs)
    title = f"{counts['passed']} of {len(jobs)} jobs passed"
    tally = " · ".join(f"{_ICONS[s]} {counts[s]} {s}" for s in _ICONS)
    return title, tally


def render_markdown(report: Mapping[str, Any]) -> str:
    """``summary.md``: a headline, the tally and one table row per job, for a CI step summary."""
    title, tally = _headline(report)
    lines = [
        f"### {'✅' if report['ok'] else '❌'} Sandrun: {_md(title)}",
        "",
        f"{tally}  ",
        f"run {_md(str(report['run']))} · policy {_md(str(report['policy']))} · "
        f"plan {_md(str(report['plan_sha256'])[:12])}",
        "",
    ]
    if not report["jobs"]:
        return "\n".join([*lines, "No jobs.", ""])
    lines += [
        "| | job | tool | exit / trap | fuel | memory | time | reason |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for job in report["jobs"]:
        cells = [
            _ICONS.get(job["status"], "?"),
            _md(_job_id(job), limit=200),
            _md(job["tool"], limit=200),
            _outcome(job),
            _number(job.get("fuel_used")),
            _bytes(job.get("memory_peak")),
            _duration(job.get("wall_ms")),
            _md(job.get("reason") or ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -- HTML --------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#1b1f24}
h1{font-size:1.3em}table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #d0d7de;padding:.35em .6em;text-align:left;vertical-align:top}
td.n{text-align:right;white-space:nowrap}.reason{max-width:32em;overflow-wrap:anywhere}
.passed{color:#1a7f37}.failed{color:#cf222e}.denied{color:#9a6700}.skipped{color:#57606a}
.bar{background:#eaeef2;height:.5em;width:8em;border-radius:.25em;overflow:hidden;margin-top:.2em}
.bar span{display:block;height:100%;background:#0969da}.bar span.hot{background:#cf222e}
.meta,.verification{color:#57606a}
"""


_CSP = "default-src 'none'; style-src 'unsafe-inline'"


def _h(text: str, *, limit: int = 500) -> str:
    return html.escape(sanitize_text(text, limit=limit), quote=True)


def _usage(used: int | None, granted: int | None, shown: str) -> str:
    """A cell with the used value and, when a limit was granted, a bar of used/granted."""
    if granted is None or used is None or granted <= 0:
        return shown
    share = min(used / granted, 1.0)
    hot = ' class="hot"' if share >= 0.9 else ""
    bar = f'<span{hot} style="width:{share * 100:.1f}%"></span>'
    return f'{shown}<div class="bar" title="{share:.0%} of the limit">{bar}</div>'


def _log_links(captured: Mapping[str, CapturedLog]) -> str:
    """Links to a job's log files (relative paths, percent-encoded then HTML-escaped)."""
    links = [
        f'<a href="{html.escape(urllib.parse.quote(log.path), quote=True)}">{stream}</a>'
        for stream, log in captured.items()
    ]
    return " ".join(links) if links else "—"


def _run_facts(report: Mapping[str, Any], info: RunInfo | None) -> str:
    if info is None:
        return f"policy {_h(str(report['policy']))}"
    return (
        f"date {_h(info.date)} · policy {_h(info.policy_name)} ({_h(info.policy_path)}, "
        f"sha256 {_h(info.policy_sha256)})"
    )


def render_html(
    report: Mapping[str, Any],
    *,
    limits: Mapping[str, Mapping[str, Any]] | None = None,
    verification: str | None = None,
    run_info: RunInfo | None = None,
    logs: Logs | None = None,
) -> str:
    """One self-contained page (inline CSS, no script, no external URL, a CSP that forbids loading any).

    ``limits`` (by job id: ``{"fuel", "memory", "timeout_ms"}``) adds bars of used vs granted;
    ``verification`` is the audit chain's status line, shown as given (escaped); ``run_info`` adds
    the run's date and its policy's path and sha256; ``logs`` (by job id) links each job's log
    files, relative to the page (only logs that exist are given).
    """
    limits = limits or {}
    logs = logs or {}
    title, tally = _headline(report)
    rows = []
    for job in report["jobs"]:
        granted = limits.get(_job_id(job), {})
        status = job["status"]
        fuel = _usage(job.get("fuel_used"), granted.get("fuel"), _number(job.get("fuel_used")))
        memory = _usage(job.get("memory_peak"), granted.get("memory"), _bytes(job.get("memory_peak")))
        wall = _usage(job.get("wall_ms"), granted.get("timeout_ms"), _duration(job.get("wall_ms")))
        rows.append(
            "<tr>"
            f'<td class="{_h(status)}">{_ICONS.get(status, "?")} {_h(status)}</td>'
            f"<td>{_h(_job_id(job), limit=200)}</td><td>{_h(job['tool'], limit=200)}</td>"
            f"<td>{_h(_outcome(job))}</td>"
            f'<td class="n">{fuel}</td><td class="n">{memory}</td><td class="n">{wall}</td>'
            f'<td class="reason">{_h(job.get("reason") or "")}</td>'
            f"<td>{_log_links(logs.get(_job_id(job), {}))}</td>"
            "</tr>"
        )
    body = "\n".join(rows) if rows else '<tr><td colspan="9">No jobs.</td></tr>'
    check = f'<p class="verification">{_h(verification)}</p>\n' if verification is not None else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        f"<title>Sandrun run {_h(str(report['run']))}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{'✅' if report['ok'] else '❌'} Sandrun: {_h(title)}</h1>\n"
        f'<p class="meta">{_h(tally)} · run {_h(str(report["run"]))} · {_run_facts(report, run_info)}'
        f" · plan {_h(str(report['plan_sha256']))}</p>\n{check}"
        "<table>\n<thead><tr><th>status</th><th>job</th><th>tool</th><th>exit / trap</th><th>fuel</th>"
        "<th>memory</th><th>time</th><th>reason</th><th>logs</th></tr></thead>\n"
        f"<tbody>\n{body}\n</tbody>\n</table>\n</body>\n</html>\n"
    )


# -- GitHub workflow annotations -----------------------------------------------------------------


def github_escape(text: str, *, property_value: bool = False) -> str:
    """GitHub's escaping of a workflow command's data (``%``, CR, LF) and, for a property's value,
    also of ``:`` and ``,``, which would end it."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if property_value:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def github_annotation(
    message: str,
    *,
    title: str,
    file: str | None = None,
    line: int | None = None,
    column: int | None = None,
    level: Literal["error", "warning", "notice"] = "error",
) -> str:
    """One ``::error`` (or ``level``) line: every part neutralised (so none holds a ``::`` or a
    line break of its own), then escaped as GitHub requires; the annotation's own ``::`` are the
    only ones."""
    props = []
    if file is not None:
        props.append(f"file={github_escape(sanitize_text(file), property_value=True)}")
        if line is not None:
            props.append(f"line={int(line)}")
            if column is not None:
                props.append(f"col={int(column)}")
    props.append(f"title={github_escape(sanitize_text(title), property_value=True)}")
    return f"::{level} {','.join(props)}::{github_escape(sanitize_text(message, limit=LINE_LIMIT))}"


def render_github(report: Mapping[str, Any], *, places: Mapping[str, JobPlace] | None = None) -> str:
    """One ``::error`` annotation per failed or denied job (title = job id, message = reason), on
    its manifest file and, when known, the line of its entry (``places``, by job id)."""
    places = places or {}
    lines = []
    for job in report["jobs"]:
        if job["status"] not in ("failed", "denied"):
            continue
        place = places.get(_job_id(job))
        lines.append(
            github_annotation(
                f"{job['status']}: {job.get('reason') or job['status']}",
                title=_job_id(job),
                file=None if place is None else place.file,
                line=None if place is None else place.line,
            )
        )
    return "".join(line + "\n" for line in lines)
