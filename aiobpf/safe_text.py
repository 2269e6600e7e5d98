"""Text that a traced process chose, made safe for where aiobpf shows it.

Every name a target controls (its process name and command line, task names, the
qualnames and file names of its code, a version string read from its binary) is
hostile input: it may hold bytes that are not UTF-8, lone surrogates (how Python
keeps such bytes: ``os.readlink``, psutil), terminal escapes, newlines that forge log
or output lines, and any length.  This module is the one place that turns such text
into something safe, and has no other import than the standard library, so that
every layer (collector, exporters, daemon, cli) can use it.

The rule, the same for labels, logs and terminals (as ``ls -b`` and ``git`` quote):

- bytes that are not UTF-8 and lone surrogates become U+FFFD;
- what Python's ``str.isprintable`` rejects (control characters C0, DEL and C1,
  format characters such as bidi overrides and zero-width marks, separators other
  than the space, private-use and unassigned code points) and the backslash are
  written as escapes, as ``repr`` writes them: ``\\n``, ``\\r``, ``\\t``, ``\\\\``,
  ``\\xNN`` below U+0100, ``\\uNNNN`` or ``\\UNNNNNNNN`` above;
- labels are at most ``NAME_MAX`` (names) or ``SITE_MAX`` (await sites) characters,
  longer ones cut with a final ``…``.

JSON output keeps names exact instead: ``json_exact`` only turns the characters a
terminal could act on into ``\\uNNNN`` escapes, which JSON decoders read back as the
original characters.
"""

from __future__ import annotations

import logging
import re

NAME_MAX = 128    # process names, versions, container ids
SITE_MAX = 256    # await sites: "qualname file:line"
LOG_MAX = 2048    # a log message (names, paths and exception texts in it)
ELLIPSIS = "…"

_SURROGATE = re.compile("[\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
# Characters json.dumps(ensure_ascii=False) leaves raw that a terminal may act on.
_JSON_RAW = re.compile("[\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff"
                       "\ufff9-\ufffb\ud800-\udfff]")


def from_bytes(data: bytes) -> str:
    """Text of a target's file (/proc/PID/status, cmdline, cgroup): never fails."""
    return data.decode("utf-8", "replace")


def valid(text: str) -> str:
    """``text`` as valid Unicode: the bytes Python kept as lone surrogates
    (surrogateescape, as psutil and ``os`` return undecodable names) are decoded
    again, with U+FFFD for what is not UTF-8; other lone surrogates become U+FFFD."""
    if not _SURROGATE.search(text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)


def _escape_char(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    cp = ord(char)
    return f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}"


def escape(text: str) -> str:
    """``text`` valid and printable: nothing in it moves a cursor, ends a line or
    changes how the rest is shown (see the module's rule)."""
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text      # the common case, without valid()'s search for surrogates
    text = valid(text)
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else _escape_char(c) for c in text)


def escape_all(texts: list[str]) -> list[str]:
    """``escape`` of each of ``texts`` (a new list), in one scan of them all when none
    needs it: printable ASCII without a backslash, as most names are."""
    joined = "".join(texts)
    if joined.isascii() and joined.isprintable() and "\\" not in joined:
        return list(texts)
    return [escape(text) for text in texts]


def bound(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the last one ``…`` when it was longer."""
    return text if len(text) <= limit else text[:limit - 1] + ELLIPSIS


def label(text: str, limit: int = NAME_MAX) -> str:
    """A Prometheus label value (or log field) from target-controlled ``text``: valid
    UTF-8, no control characters, at most ``limit`` characters."""
    return bound(escape(text), limit)


def terminal_lines(text: str) -> str:
    """``text`` whose own line breaks are kept and everything else escaped: for
    messages aiobpf writes over several lines, built from target strings."""
    return "\n".join(escape(line) for line in text.split("\n"))


def json_exact(document: str) -> str:
    """A JSON text with the characters a terminal could act on (and lone surrogates,
    which cannot be written as UTF-8) as ``\\uNNNN`` escapes: still the same JSON
    values.  ``document`` must come from ``json.dumps`` (those characters only occur
    inside its strings)."""
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", document)


class SafeLogRecords(logging.Filter):
    """Escapes each record's message (target names, paths and exception texts in it)
    so that a log line is one line of at most ``LOG_MAX`` characters and holds no
    terminal escapes; the record is then logged as is."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        safe = bound(escape(message), LOG_MAX)
        if safe != message:
            record.msg, record.args = safe, None
        return True
