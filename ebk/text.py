"""Untrusted text made safe for a terminal.

Anything read from the repository (backup ids, object names, database names,
versions, times) is attacker-controlled until it authenticates, and a
terminal obeys control sequences: OSC (`ESC ] ... BEL`) can set the window
title or write hyperlinks and, on some terminals, the clipboard; CSI can move
the cursor and overwrite earlier lines; bidi overrides reorder what is shown.
``printable`` escapes every such character visibly (``\\x1b``, ``\\u202e``),
so the operator sees that something odd is there.  JSON output needs none of
this: ``json.dumps`` escapes every non-ASCII and control character.
"""

from __future__ import annotations

import unicodedata

# Control (C0, DEL, C1), format (bidi overrides and isolates, zero-width
# characters, BOM), line/paragraph separators, lone surrogates.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(value: object, *, newlines: bool = False) -> str:
    """``str(value)`` with every terminal-unsafe character escaped; ``\\`` doubled.

    ``newlines``: keep line feeds (multi-line error messages); everything else
    that could steer a terminal is still escaped.
    """
    text = str(value)
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text  # the common case: nothing to do
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n" and newlines:
            out.append(ch)
        elif unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            out.append(_escape(ch))
        else:
            out.append(ch)
    return "".join(out)
