"""Caps on everything we read from a registry, and file-name sanitising (SPEC 6).

A registry is untrusted input: every count and size an artifact claims is checked
against these limits before we allocate, download or decompress anything.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from dockercomms.core.errors import FilenameError

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB


@dataclass(frozen=True)
class Limits:
    """Receive-side limits; the defaults are SPEC section 6.

    Attributes:
        max_chunks: most layers a message may have.
        max_total_bytes: largest file we accept.
        max_manifest_bytes: largest manifest we download (bigger is refused unread).
        max_bundle_bytes: largest signature bundle blob.
        max_tag_page_bytes: largest tags/list page.
        max_filename_bytes: longest file name, UTF-8 encoded.
    """

    max_chunks: int = 10_000
    max_total_bytes: int = 10 * TIB
    max_manifest_bytes: int = 4 * MIB
    max_bundle_bytes: int = 1 * MIB
    max_tag_page_bytes: int = 4 * MIB
    max_filename_bytes: int = 255


DEFAULT_LIMITS = Limits()


def check_filename(name: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """Return ``name`` if it is a safe single path component, else raise.

    Used on receive: a name that needs changing is an attack or a broken sender,
    so it is refused rather than silently repaired.
    """
    reason = _filename_problem(name, limits)
    if reason:
        raise FilenameError(f"unsafe file name {name[:80]!r}: {reason}")
    return name


def sanitize_filename(name: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """Make a local file name safe to announce (send side).

    Takes the basename, drops control characters, replaces separators, and trims
    to the byte limit on a character boundary. Raises if nothing usable remains.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if not _is_control(ch))
    encoded = base.encode("utf-8")
    if len(encoded) > limits.max_filename_bytes:
        base = encoded[: limits.max_filename_bytes].decode("utf-8", errors="ignore")
    return check_filename(base, limits)


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") or ch == "\x7f"


def _filename_problem(name: str, limits: Limits) -> str | None:
    if name in ("", ".", ".."):
        return "empty or a directory reference"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if "\x00" in name:
        return "contains NUL"
    if any(_is_control(ch) for ch in name):
        return "contains control characters"
    if len(name.encode("utf-8")) > limits.max_filename_bytes:
        return f"longer than {limits.max_filename_bytes} bytes"
    return None
