"""Bounded JSON and escaped display of untrusted strings (core.untrusted)."""

from __future__ import annotations

import pytest

from dockercomms.core.errors import LimitExceededError, ManifestError
from dockercomms.core.untrusted import parse_json, parse_json_object, shown


def test_deep_nesting_is_a_limit_error_not_a_crash() -> None:
    for depth in (33, 5_000, 200_000):
        raw = b"[" * depth + b"]" * depth
        with pytest.raises(LimitExceededError):
            parse_json(raw, "manifest", max_bytes=1 << 20)


def test_depth_within_the_limit_parses() -> None:
    raw = b'{"a":' * 31 + b"1" + b"}" * 31
    assert isinstance(parse_json(raw, "doc", max_bytes=1 << 20), dict)


def test_size_is_checked_before_parsing() -> None:
    with pytest.raises(LimitExceededError):
        parse_json(b" " * 101 + b"{}", "doc", max_bytes=100)


def test_not_json_and_not_an_object() -> None:
    with pytest.raises(ManifestError):
        parse_json(b"\xff{", "doc", max_bytes=100)
    with pytest.raises(ManifestError):
        parse_json_object(b"[1]", "doc", max_bytes=100)


def test_shown_escapes_what_changes_the_display() -> None:
    assert shown("bob\nalice verified") == "bob\\x0aalice verified"
    assert shown("\x1b[2J") == "\\x1b[2J"
    assert shown("evil\u202etxt.exe") == "evil\\u202etxt.exe"
    assert shown("a\\x0a") == "a\\\\x0a"
    assert shown("Zoë 山田 bob@example.com") == "Zoë 山田 bob@example.com"
    assert shown("x" * 500, limit=10) == "x" * 10 + "…"


def test_the_depth_limit_counts_dicts_and_lists_alike_at_the_boundary() -> None:
    limit = 32
    for opener, closer in ((b'{"a":', b"}"), (b"[", b"]"), (b'[{"a":', b"}]")):
        levels = len(opener.replace(b'"a":', b""))
        inner = limit // levels
        ok = opener * inner + b"1" + closer * inner
        assert parse_json(ok, "doc", max_bytes=10_000) is not None
        deep = opener * (inner + 1) + b"1" + closer * (inner + 1)
        with pytest.raises(LimitExceededError):
            parse_json(deep, "doc", max_bytes=10_000)
    # Scalars beside a deep branch do not hide it; a wide flat document is fine.
    wide = b"[" + b",".join([b"1", b'"x"', b"null"] * 10_000) + b"]"
    assert len(parse_json(wide, "doc", max_bytes=1_000_000)) == 30_000
    mixed = b'{"a": 1, "b": ' + b"[" * 40 + b"]" * 40 + b"}"
    with pytest.raises(LimitExceededError):
        parse_json(mixed, "doc", max_bytes=10_000)
