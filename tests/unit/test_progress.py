"""Progress bars: only on a terminal, only after a second, gone when done."""

from __future__ import annotations

import io

import pytest

from dockercomms.cli import progress as progress_module
from dockercomms.cli.progress import TransferProgress


def test_no_bar_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with TransferProgress("send x", 100) as sink:
        sink(50)
        sink(50)
    assert capsys.readouterr().out == ""


def test_no_bar_for_short_transfers() -> None:
    with TransferProgress("send x", 100, enabled=True) as sink:
        sink(100)
        assert sink._progress is None


def test_bar_after_the_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "SHOW_AFTER_SECONDS", 0.0)
    buffer = io.StringIO()
    with TransferProgress("send x", 100, enabled=True) as sink:
        sink(10)
        assert sink._progress is not None
        sink._progress.console.file = buffer  # keep the test's own terminal clean
        sink(90)
        assert sink._progress.tasks[0].completed == 100
    assert sink._progress is None
