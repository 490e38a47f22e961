"""``LogOnce``: a condition met at every poll is logged once, until it changes or ends."""

from __future__ import annotations

import logging

import pytest

from dockercomms.core.log_once import LogOnce

log = logging.getLogger("tests.log_once")


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == log.name]


def test_once_per_key_until_the_text_changes_or_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    notes = LogOnce(log)
    for _ in range(3):
        notes.log(logging.INFO, "tag-a", "tag %s: %s", "tag-a", "registry down")
    notes.log(logging.INFO, "tag-b", "tag %s: %s", "tag-b", "registry down")
    notes.log(logging.INFO, "tag-a", "tag %s: %s", "tag-a", "not found")
    assert notes.clear("tag-b") and not notes.clear("tag-c")
    notes.log(logging.INFO, "tag-b", "tag %s: %s", "tag-b", "registry down")

    assert lines(caplog) == [
        "tag tag-a: registry down",
        "tag tag-b: registry down",
        "tag tag-a: not found",
        "tag tag-b: registry down",
    ]


def test_memory_is_bounded_and_follows_the_items(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    notes = LogOnce(log, max_keys=2)
    for key in ("a", "b", "c"):
        notes.log(logging.INFO, key, "seen %s", key)
    notes.log(logging.INFO, "a", "seen %s", "a")  # forgotten first, so said again
    notes.keep_only({"a"})
    notes.log(logging.INFO, "c", "seen %s", "c")

    assert lines(caplog) == ["seen a", "seen b", "seen c", "seen a", "seen c"]


def test_a_traceback_goes_with_the_first_line_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    notes = LogOnce(log)
    for _ in range(2):
        try:
            raise RecursionError("too deep")
        except RecursionError:
            notes.log(logging.ERROR, "poll", "poll failed unexpectedly", exc_info=True)

    [record] = [r for r in caplog.records if r.name == log.name]
    assert record.exc_info is not None and record.exc_info[0] is RecursionError
