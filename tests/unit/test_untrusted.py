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
