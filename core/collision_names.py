"""Names for a received file whose own name is taken: ``stem (suffix).ext``, then ``-2``...

One rule for ``recv`` (a folder on disk) and the mount (``inbox/<sender>/``).

Caveats first:

* A name may use all 255 bytes a file name has (SPEC 6), leaving no room for a
  suffix. The stem is then shortened, on a UTF-8 character boundary, until the
  whole name fits; the extension and the suffix are kept, because they are what
  tells the user which file it is. An extension so long that nothing of the
  stem would remain is treated as part of the stem.
* Shortening only removes whole characters from a name that passed
  ``check_filename``, so every name produced is still a safe file name. A cut
  may separate a combining mark from its base character; that is ugly, never
  unsafe.
"""

from __future__ import annotations

from collections.abc import Iterator

from dockercomms.core._internal.limits import DEFAULT_LIMITS


def suffixed_names(
    filename: str, suffix: str, *, count: int, max_bytes: int = DEFAULT_LIMITS.max_filename_bytes
) -> Iterator[str]:
    """``filename``, then ``stem (suffix).ext``, then ``stem (suffix-2).ext``...

    ``count`` names in all, each at most ``max_bytes`` bytes of UTF-8.
    """
    yield filename
    for n in range(1, count):
        yield suffixed_name(filename, suffix if n == 1 else f"{suffix}-{n}", max_bytes=max_bytes)


def suffixed_name(
    filename: str, suffix: str, *, max_bytes: int = DEFAULT_LIMITS.max_filename_bytes
) -> str:
    """``stem (suffix).ext``, the stem shortened until the name fits ``max_bytes``."""
    stem, dot, ext = filename.rpartition(".")
    if not stem:
        stem, dot, ext = filename, "", ""
    tail = f" ({suffix}){dot}{ext}"
    kept = _cut(stem, max_bytes - len(tail.encode()))
    if not kept:  # the extension leaves no room: keep the start of the whole name
        tail = f" ({suffix})"
        kept = _cut(filename, max_bytes - len(tail.encode()))
    return kept + tail


def _cut(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` that is at most ``max_bytes`` of UTF-8."""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    # A cut inside a character leaves a partial sequence at the end; drop just that.
    return encoded[: max(max_bytes, 0)].decode("utf-8", errors="ignore")
