"""Reading and showing what nobody vouched for: bounded JSON and escaped text.

Caveats first:

* Everything a registry returns, and everything a message claims before its
  signature verified, is untrusted. Its JSON goes through :func:`parse_json`
  (size checked before parsing, nesting depth after; the stdlib parser's own
  recursion guard turns a 100,000-deep array into an error, never a crash), and
  its strings go through :func:`shown` before a terminal, log line, file,
  notification or extended attribute carries them.
* The depth walk is iterative and linear in the number of JSON values, which the
  size cap bounds (a 4 MiB manifest has at most ~2 million values).
* :func:`shown` keeps printable text as it is (names in any script stay
  readable) and escapes only what can change how text is displayed: control
  characters (newlines, ESC sequences, NUL), Unicode format characters (bidi
  overrides that reorder a line), line and paragraph separators, and the
  backslash itself, so an escaped form never collides with a real one.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any, Final

from dockercomms.core.errors import LimitExceededError, ManifestError

#: Deepest nesting any document of ours needs (a manifest is 4 levels deep).
MAX_JSON_DEPTH = 32
#: Longest untrusted string shown in one place; the rest is cut with an ellipsis.
MAX_SHOWN_CHARS = 200


def parse_json(
    raw: bytes | str, what: str, *, max_bytes: int, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """Parse untrusted JSON of at most ``max_bytes`` and ``max_depth`` levels.

    Raises :class:`LimitExceededError` for input that is too large or too deep,
    :class:`ManifestError` for anything that is not JSON. Never anything else.
    """
    if len(raw) > max_bytes:
        raise LimitExceededError(f"{what} is larger than {max_bytes} bytes")
    try:
        value = json.loads(raw)
    except RecursionError as exc:
        raise LimitExceededError(f"{what} is nested too deeply") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"{what} is not valid JSON: {exc}") from exc
    if _depth_exceeds(value, max_depth):
        raise LimitExceededError(f"{what} is nested deeper than {max_depth} levels")
    return value


def parse_json_object(
    raw: bytes | str, what: str, *, max_bytes: int, max_depth: int = MAX_JSON_DEPTH
) -> dict[str, Any]:
    """:func:`parse_json` for documents that must be a JSON object."""
    value = parse_json(raw, what, max_bytes=max_bytes, max_depth=max_depth)
    if not isinstance(value, dict):
        raise ManifestError(f"{what} is not a JSON object")
    return value


def _depth_exceeds(value: Any, max_depth: int) -> bool:
    """Whether containers nest deeper than ``max_depth``: one level at a time.

    A level is a list of containers; scalars are never queued. For a 7 MB
    ``index.json`` this is about half the cost of walking node by node, which
    the embedded store paid on every tag push.
    """
    level = [value] if type(value) in _CONTAINERS else []
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            return True
        below: list[Any] = []
        for node in level:
            children = node.values() if type(node) is dict else node
            below += [child for child in children if type(child) in _CONTAINERS]
        level = below
    return False


_CONTAINERS: Final = (dict, list)


def shown(text: object, limit: int = MAX_SHOWN_CHARS) -> str:
    """``text`` made safe to show: display-changing characters escaped, length capped.

    ``shown("bob\\n2026 alice verified")`` is ``bob\\\\n2026 alice verified``
    on one line; ``shown("\\x1b[2J")`` cannot clear a terminal.
    """
    value = text if isinstance(text, str) else str(text)
    cut = len(value) > limit
    pieces = [_escaped(ch) for ch in value[:limit]]
    if cut:
        pieces.append("…")
    return "".join(pieces)


def _escaped(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch.isprintable() and unicodedata.category(ch) not in ("Cf", "Zl", "Zp"):
        return ch
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
