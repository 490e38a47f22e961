"""The one status tree and its renderer: JSON out and back, text, and what is hidden."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from dockercomms.core.status import (
    Daemon,
    Download,
    InboxStatistics,
    MountStatus,
    QueueStatistics,
    Refusal,
    StatusFormatError,
    StatusSummary,
    SyncerStatistics,
    Upload,
    from_json,
    status_text,
    summary_of_mount,
    to_json,
)

AT = datetime(2026, 11, 23, 9, 0, 5, tzinfo=UTC)


def a_mount() -> MountStatus:
    queue = QueueStatistics({"queued": 1, "uploading": 1, "sent": 14, "failed": 0}, 2048, AT)
    upload = Upload("item-1", "report.pdf", 512, 1024, 50.0)
    return MountStatus(
        mountpoint="/home/me/Comms",
        pid=42,
        identity="me",
        state_dir="/home/me/.local/state/dockercomms",
        repository="oci-layout:/data/registry",
        started_at=AT,
        now=AT,
        inbox=InboxStatistics(3, 1, 5.0),
        outbox=SyncerStatistics(queue=queue, in_flight=upload, state="uploading"),
        transfers=[upload, Download("big.iso", "sha256:" + "a" * 64, 2, 10, 100, 10.0, 0.5)],
        refusals=[Refusal("outbox/stray.txt", "no default recipient", AT, 2, seq=7)],
    )


def test_a_tree_goes_to_json_and_back_unchanged_but_for_hidden_fields() -> None:
    status = a_mount()
    document = json.loads(json.dumps(to_json(status)))

    assert document["started_at"] == "2026-11-23T09:00:05Z"
    assert document["outbox"]["queue"]["counts"]["sent"] == 14
    assert [t["direction"] for t in document["transfers"]] == ["upload", "download"]
    assert document["refusals"] == [
        {
            "path": "outbox/stray.txt",
            "reason": "no default recipient",
            "at": "2026-11-23T09:00:05Z",
            "times": 2,
        }
    ]
    back = from_json(MountStatus, document)
    assert back.transfers == status.transfers
    assert back.refusals[0].seq == 0  # never shown, so never read back
    assert back.outbox == status.outbox and back.inbox == status.inbox


def test_an_older_document_reads_with_defaults_and_a_wrong_one_fails() -> None:
    assert from_json(MountStatus, {"pid": 7}).pid == 7
    assert from_json(MountStatus, {}).inbox is None
    for bad in ({"pid": "7"}, {"pid": True}, {"transfers": {}}, {"started_at": "yesterday"}):
        with pytest.raises(StatusFormatError):
            from_json(MountStatus, bad)


def test_a_field_without_a_value_is_left_out_where_marked() -> None:
    assert to_json(Daemon(True, 5, None)) == {"running": True, "pid": 5, "mountpoint": None}
    summary = to_json(StatusSummary())
    assert "mount" not in summary and summary["last_poll"] is None


def test_status_text_of_a_mount_escapes_what_it_quotes() -> None:
    status = a_mount()
    hostile = MountStatus(**{**status.__dict__, "errors": ["outbox: \x1b[2Jgone"]})
    text = status_text(summary_of_mount(hostile, "/cache/chunks"), 2 * 1024**3)

    assert "daemon: running (pid 42), mounted at /home/me/Comms" in text
    assert "queue: 2 to send (1 queued, 1 uploading), 14 sent, 0 failed" in text
    assert "upload: report.pdf 50.0% (512 B of 1.0 KiB)" in text
    assert "error: outbox: \\x1b[2Jgone" in text and "\x1b" not in text
    assert "refused: outbox/stray.txt (2026-11-23T09:00:05Z): no default recipient" in text
