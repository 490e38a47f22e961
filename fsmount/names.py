"""Names shown in ``inbox/`` and ``sent/``: safe folder names and readable collision suffixes.

Names are given once and then kept for the life of the mount, so a file never
changes its name under a reader; only a later arrival gets a suffix.
"""

from __future__ import annotations

from collections.abc import Container, Iterator

# A sender's or recipient's folder: the name itself when valid, an escaped form
# that no valid name has otherwise (core.names says how).
from dockercomms.core.names import folder_name

__all__ = ["RESERVED", "folder_name", "free_name", "suffixed_names"]

#: Names the mount itself uses inside ``inbox/`` and ``sent/``.
RESERVED = frozenset({".rejected", ".refresh", ".status.json"})


def suffixed_names(filename: str, suffix: str) -> Iterator[str]:
    """``filename``, then ``stem (suffix).ext``, then ``stem (suffix-2).ext``..."""
    yield filename
    stem, dot, ext = filename.rpartition(".")
    if not stem:
        stem, dot, ext = filename, "", ""
    yield f"{stem} ({suffix}){dot}{ext}"
    for n in range(2, 100_000):
        yield f"{stem} ({suffix}-{n}){dot}{ext}"


def free_name(filename: str, suffix: str, taken: Container[str]) -> str:
    """The first of :func:`suffixed_names` not in ``taken`` (and not too long)."""
    for name in suffixed_names(filename, suffix):
        if name not in taken and name not in RESERVED and len(name.encode()) <= 255:
            return name
    raise RuntimeError(f"no free name for {filename!r}")
