"""Text that came from input, made safe to print: one neutraliser for every line Sandrun writes.

Names, keys, file names, trap messages and reasons can come from a hostile manifest, plan, log or
guest. Before any of them reaches a terminal, a CI log, a report or an error line it goes through
:func:`sanitize_text` (a piece of a line) or :func:`safe_line` (a whole line): no control
character, no terminal escape sequence, no bidi override, and no ``::``/``##`` that could start a
CI workflow command. The only exceptions are a guest's own streams passed through by ``sandrun
exec`` and the captured log files, which hold the bytes as written (docs/reports.md).
"""

from __future__ import annotations

import re

__all__ = ["sanitize_text", "safe_line", "LINE_LIMIT"]

LINE_LIMIT = 4000  # a whole printed line: long enough for any message of ours, bounded for a guest's

# Terminal escape sequences (ECMA-48): CSI, OSC, DCS/SOS/PM/APC strings, two-byte escapes, 8-bit CSI.
_ANSI = re.compile(
    r"""
      \x1b\[[0-?]*[ -/]*[@-~]?                 # CSI ... final byte
    | \x1b\][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?  # OSC ... BEL or ST (hyperlinks, titles)
    | \x1b[PX^_][^\x1b\x9c]*(?:\x1b\\|\x9c)?   # DCS, SOS, PM, APC ... ST
    | \x1b[ -/]*[0-~]?                         # nF and Fe/Fp/Fs escapes (ESC c, ESC 7, ...)
    | \x9b[0-?]*[ -/]*[@-~]?                   # 8-bit CSI
    """,
    re.VERBOSE,
)
# Line breaks of any kind (incl. U+2028/U+2029, which some renderers treat as newlines).
_BREAKS = re.compile(r"[\t\n\v\f\r\x85\u2028\u2029]+")
# Left after the above: other C0/C1 controls, DEL, lone surrogates and the XML 1.0 non-characters.
_ILLEGAL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
# Bidirectional overrides and isolates ("Trojan Source"): they make shown text differ from stored.
_BIDI = re.compile(r"[\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Workflow commands: GitHub's ``::cmd::`` and the ``##[cmd]`` / Azure ``##vso[`` forms.
_COMMAND = re.compile(r"(?<=:)(?=:)|(?<=#)(?=#)")
_ZWSP = "\u200b"


def sanitize_text(text: str, *, limit: int = 500) -> str:
    """Guest-controlled text made safe for one line of a log, a report cell or an XML attribute.

    Removes terminal escape sequences and bidi controls, turns line breaks into spaces, replaces
    other control characters (and anything XML 1.0 cannot carry, even escaped) with U+FFFD, splits
    every ``::`` and ``##`` with a zero-width space so no line can start a workflow command, and
    truncates to ``limit`` characters (ending in ``…``). Format-specific escaping (XML, HTML,
    Markdown) is still the renderer's job.
    """
    if len(text) <= limit and text.isascii() and text.isprintable() and "::" not in text and "##" not in text:
        return text.strip()  # nothing to remove or split: most names and reasons (it is per job)
    return _scrub(text, limit)


def _scrub(text: str, limit: int) -> str:
    text = _ANSI.sub("", text[: limit * 16 + 256])  # bounded work, whatever a guest printed
    text = _BIDI.sub("", text)
    text = _BREAKS.sub(" ", text)
    text = _ILLEGAL.sub("\ufffd", text)
    text = text.strip()
    text = _COMMAND.sub(_ZWSP, text)
    if len(text) > limit:
        text = text[: max(limit - 1, 0)].rstrip(_ZWSP) + "…"
    return text


def safe_line(text: str) -> str:
    """A whole printed line (an error, a status line) built from input: :func:`sanitize_text` with
    the line's own, larger bound. A real workflow command (``--format github``) is built after."""
    return sanitize_text(text, limit=LINE_LIMIT)
