"""Names shown in ``inbox/`` and ``sent/``: safe folder names and readable collision suffixes.

Names are given once and then kept for the life of the mount, so a file never
changes its name under a reader; only a later arrival gets a suffix.
"""

from __future__ import annotations

from collections.abc import Container

from dockercomms.core.collision_names import suffixed_names
from dockercomms.core.errors import DockerCommsError
from dockercomms.core.limits import check_filename

#: Names the mount itself uses inside ``inbox/`` and ``sent/``.
RESERVED = frozenset({".rejected", ".refresh", ".status.json"})
#: Names tried for one file before giving up.
MAX_CANDIDATES = 100_000


def folder_name(identity: str) -> str:
    """A safe single path component for a sender or recipient name."""
    try:
        name = check_filename(identity)
    except DockerCommsError:
        name = "".join(ch if ch.isprintable() and ch not in "/\\" else "_" for ch in identity)
        name = name[:200] or "_"
    return f"_{name}" if name in RESERVED or name in (".", "..") else name


def free_name(filename: str, suffix: str, taken: Container[str]) -> str:
    """The first name by :mod:`~dockercomms.core.collision_names`' rule not ``taken``.

    Every candidate fits 255 bytes (a long name's stem is shortened), so a second
    message with a long name always gets one.
    """
    for name in suffixed_names(filename, suffix, count=MAX_CANDIDATES):
        if name not in taken and name not in RESERVED:
            return name
    raise RuntimeError(f"no free name for {filename!r}")
