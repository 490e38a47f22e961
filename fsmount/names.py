"""Names shown in ``inbox/`` and ``sent/``: safe folder names and readable collision suffixes.

Names are given once and then kept for the life of the mount, so a file never
changes its name under a reader; only a later arrival gets a suffix.
"""

from __future__ import annotations

from collections.abc import Container

from dockercomms.core.collision_names import suffixed_names

# A sender's or recipient's folder: the name itself when valid, an escaped form
# that no valid name has otherwise (core.names says how).
from dockercomms.core.names import folder_name

__all__ = ["RESERVED", "folder_name", "free_name"]

#: Names the mount itself uses inside ``inbox/`` and ``sent/``.
RESERVED = frozenset({".rejected", ".refresh", ".status.json"})
#: Names tried for one file before giving up.
MAX_CANDIDATES = 100_000


def free_name(filename: str, suffix: str, taken: Container[str]) -> str:
    """The first name by :mod:`~dockercomms.core.collision_names`' rule not ``taken``.

    Every candidate fits 255 bytes (a long name's stem is shortened), so a second
    message with a long name always gets one.
    """
    for name in suffixed_names(filename, suffix, count=MAX_CANDIDATES):
        if name not in taken and name not in RESERVED:
            return name
    raise RuntimeError(f"no free name for {filename!r}")
