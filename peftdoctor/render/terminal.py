"""Text for a terminal: a value from an adapter, a base, a Hub answer or a log is shown, never obeyed.

A config key, tensor name, repo id, path or quoted log line may hold ESC (an OSC sequence sets the
window title, a CSI one clears the screen), BEL, a carriage return or newline (a forged finding line),
DEL, C1 controls, line separators, or Unicode bidi controls (U+202E turns what follows around, so a
finding reads as something else). Every text line peftdoctor prints goes through `line`: those
characters come out as the Python escapes that name them (\\x1b, \\n, \\u202e), everything else as is.
JSON and SARIF need nothing: json.dumps escapes every control and non-ASCII character (ensure_ascii).
"""
from __future__ import annotations

import unicodedata
from collections.abc import Iterable

# Unicode general categories shown as escapes: Cc (C0 with ESC, BEL, CR, LF, TAB; DEL; C1 with CSI
# U+009B), Cf (bidi embeddings, overrides and isolates U+202A-U+202E and U+2066-U+2069, marks, zero-width
# characters), Zl and Zp (U+2028, U+2029: line breaks to a terminal or an editor), Cs (a lone surrogate).
ESCAPED = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class _Escapes(dict):  # type: ignore[type-arg]
    """str.translate's table, filled as characters are met: code point -> its escape, or itself. A lookup
    in C per character, so a hostile key of megabytes is escaped in a fraction of a second."""

    def __missing__(self, code: int) -> object:
        ch = chr(code)
        self[code] = _escape(ch) if unicodedata.category(ch) in ESCAPED else code
        return self[code]


_TABLE = _Escapes()


def line(text: str) -> str:
    """`text` as one inert line: every character of an ESCAPED category written as its escape."""
    if text.isprintable():  # the common case, decided in C: nothing to escape
        return text
    return text.translate(_TABLE)


def lines(rows: Iterable[str]) -> str:
    """The text of a renderer: each row made inert by `line`, each ended by a newline of ours."""
    return "".join(line(row) + "\n" for row in rows)


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
