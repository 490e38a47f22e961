"""Typed statistics of every part, and the one renderer of the tree they make.

Each part's ``statistics()`` returns one of these frozen dataclasses, as trio's
and httpx's objects do: the push queue, worker and watcher, the syncer, the chunk
cache, the downloads, the mount's inbox and receipts, and the mount as a whole
(:class:`MountStatus`). ``dockercomms status`` makes a :class:`StatusSummary`
from a mount's tree or, with no mount, from the files at rest. One renderer:

* :func:`to_json`: ``.status`` and the root's ``user.dockercomms.status``,
  ``sent/.status.json``, ``sync --status-file``, ``dockercomms status --json``;
* :func:`status_text`: ``dockercomms status``;
* :func:`status_line`: sd_notify ``STATUS=``, which ``service status`` shows.

Caveats first:

* JSON names are the field names (what users and scripts read); timestamps are
  RFC 3339 UTC; a field marked :data:`HIDDEN` is not shown, one marked
  :data:`OMITTED_IF_NONE` only when it has a value.
* :func:`from_json` reads a tree back (``status`` reads a running mount's
  ``.status``): every field has a default, so a document from an older mount
  still reads; a value of the wrong type is a :class:`StatusFormatError`.
  The document is the user's own mount's, size-bounded by its reader; strings in
  it were escaped by the mount, and :func:`status_text` escapes them again.
* Only the standard library and ``core`` leaves: ``dockercomms status`` renders
  without loading the engine, FUSE or trio.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePath
from typing import Any, TypeVar, Union

from dockercomms.core import protocol
from dockercomms.core.untrusted import shown

#: Field metadata: never shown (an internal counter).
HIDDEN: Mapping[str, bool] = {"hidden": True}
#: Field metadata: shown only when it has a value.
OMITTED_IF_NONE: Mapping[str, bool] = {"omitted_if_none": True}

T = TypeVar("T")


class StatusFormatError(ValueError):
    """A status document that does not have the shape of the tree it claims to be."""


# --- the push side (syncer) -----------------------------------------------------------------


@dataclass(frozen=True)
class QueueStatistics:
    """The push queue at a glance.

    Attributes:
        counts: items per state (every state present, zero included).
        bytes_queued: bytes still to send (queued + uploading).
        oldest_queued: enqueue time of the oldest item not yet sent.
        last_error: the most recent error of an item that is not sent.
        last_error_at: when that error was recorded.
    """

    counts: dict[str, int] = field(default_factory=dict)
    bytes_queued: int = 0
    oldest_queued: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None


@dataclass(frozen=True)
class WorkerStatistics:
    """What the push worker is doing.

    Attributes:
        in_flight: id of the item being uploaded, if any.
        in_flight_filename: its file name.
        bytes_done: bytes of it uploaded (or skipped as already there) so far.
        bytes_total: its size.
        last_success_at: when the last item was sent.
        last_failure_at: when the last attempt failed (temporarily or not).
        registry_reachable: False from a temporary failure until the next success.
        consecutive_failures: temporary failures in a row (drives the backoff).
        paused_until: no attempt starts before this (registry backoff).
        last_error: the last failure, as text.
    """

    in_flight: str | None = None
    in_flight_filename: str | None = None
    bytes_done: int = 0
    bytes_total: int = 0
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    registry_reachable: bool = True
    consecutive_failures: int = 0
    paused_until: datetime | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class Refusal:
    """A file the outbox did not take, and why.

    Attributes:
        path: below the outbox (``bob/report.pdf``), escaped for showing.
        reason: why, escaped for showing.
        at: when it was last refused.
        times: how often it was refused (a rescan finds a refused file again).
        seq: its number in this process; the same file refused again for the same
            reason keeps it (so it is announced once).
    """

    path: str = ""
    reason: str = ""
    at: datetime | None = None
    times: int = 1
    seq: int = field(default=0, metadata=HIDDEN)


@dataclass(frozen=True)
class WatcherStatistics:
    """What the outbox watcher is waiting on.

    Attributes:
        pending: files seen but not yet settled (being written, or just closed).
        unroutable: files directly in the outbox with no default recipient, and why.
        last_scan_at: when the last full scan finished.
        last_error: the last intake failure (e.g. permission denied), if any.
        refused: the latest refusals, oldest first.
    """

    pending: int = 0
    unroutable: dict[str, str] = field(default_factory=dict)
    last_scan_at: datetime | None = None
    last_error: str | None = None
    refused: list[Refusal] = field(default_factory=list)


@dataclass(frozen=True)
class Upload:
    """The upload in flight."""

    id: str = ""
    filename: str = ""
    bytes_done: int = 0
    bytes_total: int = 0
    percent: float = 0.0
    direction: str = "upload"


@dataclass(frozen=True)
class PollerStatistics:
    """The syncer's inbox poller.

    Attributes:
        inbox: the folder it receives into (None: it only looks for receipts).
        recent_rejections: the last few messages rejected, why (escaped).
        watching: it also polls when the store changes (embedded store only).
    """

    inbox: str | None = None
    last_poll_at: datetime | None = None
    last_error: str | None = None
    received: int = 0
    recent_rejections: list[str] = field(default_factory=list)
    watching: bool = False


@dataclass(frozen=True)
class SyncerStatistics:
    """Everything a user asks "is it working?" about the push side.

    Attributes:
        state: ``idle``, ``queued``, ``uploading``, ``waiting for registry`` or ``stopped``.
        summary: one line of the same.
        errors: what needs attention, escaped, each once.
    """

    identity: str = ""
    repository: str = ""
    spool: str = ""
    state: str = "stopped"
    summary: str = ""
    registry_reachable: bool = True
    in_flight: Upload | None = None
    queue: QueueStatistics = field(default_factory=QueueStatistics)
    worker: WorkerStatistics = field(default_factory=WorkerStatistics)
    watcher: WatcherStatistics = field(default_factory=WatcherStatistics)
    inbox: PollerStatistics = field(default_factory=PollerStatistics)
    errors: list[str] = field(default_factory=list)


# --- the mount ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheStatistics:
    """The verified chunk cache at a glance."""

    entries: int = 0
    bytes: int = 0
    cap_bytes: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    corruptions: int = 0


@dataclass(frozen=True)
class Download:
    """A chunk being fetched.

    Attributes:
        message: the message's manifest digest.
        bytes_done: compressed bytes received so far.
        bytes_total: compressed size of the layer.
    """

    filename: str = ""
    message: str = ""
    chunk: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    percent: float = 0.0
    seconds: float = 0.0
    direction: str = "download"


@dataclass(frozen=True)
class PollStatistics:
    """The mount's last inbox poll.

    Attributes:
        at: when it started.
        transient_errors: the latest tags not checked for registry trouble, why.
    """

    polls: int = 0
    at: datetime | None = None
    seconds: float | None = None
    added: int = 0
    removed: int = 0
    rejected: int = 0
    error: str | None = None
    transient_errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class InboxStatistics:
    """The mount's ``inbox/``.

    Attributes:
        open_errors: ``folder/file`` -> why its latest ``open()``/``read()`` failed.
        watching: new messages are seen by watching the store (the embedded
            layout's index); otherwise only every ``poll_seconds``.
    """

    messages: int = 0
    rejected: int = 0
    poll_seconds: float = 0.0
    last_poll: PollStatistics = field(default_factory=PollStatistics)
    open_errors: dict[str, str] = field(default_factory=dict)
    watching: bool = False


@dataclass(frozen=True)
class ReceiptStatistics:
    """Receipts the mount sends.

    Attributes:
        answered: messages this identity has answered (by any of its tools).
        failed: receipts this mount could not send.
    """

    enabled: bool = True
    answered: int = 0
    failed: int = 0


@dataclass(frozen=True)
class MountStatus:
    """The whole running mount: ``.status``.

    Attributes:
        state_dir: whose mount this is (``status`` finds it by this).
        outbox: the syncer behind ``outbox/``.
        transfers: the upload in flight and the chunks being downloaded.
        errors: what needs attention, escaped.
        refusals: the latest drops into ``outbox/`` that were refused.
    """

    mountpoint: str = ""
    pid: int = 0
    identity: str = ""
    state_dir: str = ""
    repository: str = ""
    started_at: datetime | None = None
    now: datetime | None = None
    inbox: InboxStatistics | None = None
    outbox: SyncerStatistics | None = None
    transfers: list[Upload | Download] = field(default_factory=list)
    cache: CacheStatistics = field(default_factory=CacheStatistics)
    receipts: ReceiptStatistics = field(default_factory=ReceiptStatistics)
    errors: list[str] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)


# --- what dockercomms status says --------------------------------------------------------


@dataclass(frozen=True)
class InterruptedUpload:
    """An upload the queue on disk says was under way (no running mount to ask)."""

    filename: str = ""
    recipient: str = ""
    bytes_total: int = 0
    chunks_uploaded: int = 0
    state: str = ""
    direction: str = "upload"


@dataclass(frozen=True)
class Daemon:
    """Whether a daemon serves this identity, and where."""

    running: bool = False
    pid: int | None = None
    mountpoint: str | None = None
    started_at: datetime | None = field(default=None, metadata=OMITTED_IF_NONE)


@dataclass(frozen=True)
class InboxCounts:
    """Messages listed and rejected in a mount's ``inbox/``."""

    messages: int = 0
    rejected: int = 0


@dataclass(frozen=True)
class CacheUsage:
    """The chunk cache: where, how full, and (from a mount) its counters."""

    path: str = ""
    entries: int = 0
    bytes: int = 0
    cap_bytes: int | None = None
    hits: int | None = field(default=None, metadata=OMITTED_IF_NONE)
    misses: int | None = field(default=None, metadata=OMITTED_IF_NONE)
    evictions: int | None = field(default=None, metadata=OMITTED_IF_NONE)
    corruptions: int | None = field(default=None, metadata=OMITTED_IF_NONE)


@dataclass(frozen=True)
class CardStatus:
    """My card in the repository (SPEC 9.1): what ``status`` says of it.

    Attributes:
        state: ``current``, ``outdated`` (names an older age key), ``missing``
            or ``unknown`` (the repository could not be read).
        tag: the newest card that verified as me.
        created_at: its date.
        detail: what to do, or why the state is unknown.
    """

    state: str = "unknown"
    tag: str | None = field(default=None, metadata=OMITTED_IF_NONE)
    created_at: datetime | None = field(default=None, metadata=OMITTED_IF_NONE)
    detail: str = ""


@dataclass(frozen=True)
class StatusSummary:
    """``dockercomms status``: from the running mount, or from the files at rest.

    Attributes:
        source: ``mount`` or ``queue`` (the queue database, no mount answered).
        mount: the mount's whole tree, when it answered.
    """

    source: str = "queue"
    identity: str = ""
    repository: str = ""
    daemon: Daemon = field(default_factory=Daemon)
    queue: QueueStatistics | None = None
    transfers: list[Upload | Download | InterruptedUpload] = field(default_factory=list)
    last_poll: PollStatistics | None = None
    inbox: InboxCounts | None = None
    errors: list[str] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    cache: CacheUsage = field(default_factory=CacheUsage)
    mount: MountStatus | None = field(default=None, metadata=OMITTED_IF_NONE)
    notes: list[str] = field(default_factory=list)
    card: CardStatus | None = field(default=None, metadata=OMITTED_IF_NONE)
    sealing: str | None = field(default=None, metadata=OMITTED_IF_NONE)


def sealing_engine() -> str:
    """What seals this process's sends: the stock ``age`` binary, or pyrage in process."""
    from dockercomms.core._internal.age_process import AGE_BINARY_ENV, find_age_binary

    binary = find_age_binary()
    if binary is not None:
        return f"age binary {binary.path} ({binary.version})"
    return (
        "in process (pyrage, about 500 MiB/s on one core); the stock age binary "
        f"(Debian's age) seals faster, unless {AGE_BINARY_ENV}=none"
    )


def summary_of_mount(status: MountStatus, cache_path: str) -> StatusSummary:
    """What ``dockercomms status`` says of a mount that answered with ``status``."""
    outbox = status.outbox
    inbox = status.inbox
    return StatusSummary(
        source="mount",
        identity=status.identity,
        repository=status.repository,
        daemon=Daemon(True, status.pid, status.mountpoint, status.started_at),
        queue=outbox.queue if outbox is not None else None,
        transfers=list(status.transfers),
        last_poll=inbox.last_poll if inbox is not None else None,
        inbox=InboxCounts(inbox.messages, inbox.rejected) if inbox is not None else None,
        errors=list(status.errors),
        refusals=list(status.refusals),
        cache=CacheUsage(cache_path, **dataclasses.asdict(status.cache)),
        mount=status,
    )


# --- the renderer ---------------------------------------------------------------------------


def to_json(value: object) -> Any:
    """A statistics tree (or part of one) as JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.metadata.get("hidden") or (item is None and f.metadata.get("omitted_if_none")):
                continue
            out[f.name] = to_json(item)
        return out
    if isinstance(value, datetime):
        return protocol.format_timestamp(value)
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    return value


def from_json(kind: type[T], document: object) -> T:
    """``document`` read back as a tree of ``kind`` (see the module notes)."""
    value: T = _decode(kind, document, kind.__name__)
    return value


def _decode(kind: Any, value: object, where: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        members = typing.get_args(kind)
        if value is None and type(None) in members:
            return None
        choices = [m for m in members if m is not type(None)]
        return _decode(_best_member(choices, value), value, where)
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise StatusFormatError(f"{where}: not an object")
        hints = typing.get_type_hints(kind)
        names = [f.name for f in dataclasses.fields(kind) if f.init]
        given = {
            name: _decode(hints[name], value[name], f"{where}.{name}")
            for name in names
            if name in value
        }
        return kind(**given)
    if origin is list:
        if not isinstance(value, list):
            raise StatusFormatError(f"{where}: not a list")
        (item,) = typing.get_args(kind)
        return [_decode(item, v, f"{where}[]") for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise StatusFormatError(f"{where}: not an object")
        _, item = typing.get_args(kind)
        return {str(k): _decode(item, v, f"{where}.{k}") for k, v in value.items()}
    if kind is datetime:
        return _timestamp(value, where)
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool):
        raise StatusFormatError(f"{where}: not a number")
    if isinstance(kind, type) and isinstance(value, kind):
        return value
    raise StatusFormatError(f"{where}: not a {getattr(kind, '__name__', kind)}")


def _best_member(choices: list[Any], value: object) -> Any:
    """The union member a JSON object is: the dataclass that names most of its keys."""
    if not isinstance(value, dict) or not all(dataclasses.is_dataclass(c) for c in choices):
        return choices[0]
    keys = set(value)
    return max(choices, key=lambda c: len(keys & {f.name for f in dataclasses.fields(c)}))


def _timestamp(value: object, where: str) -> datetime:
    if not isinstance(value, str):
        raise StatusFormatError(f"{where}: not a timestamp")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise StatusFormatError(f"{where}: not a timestamp") from None
    if moment.tzinfo is None:
        raise StatusFormatError(f"{where}: a timestamp without a time zone")
    return moment


def status_line(status: MountStatus) -> str:
    """One line of a mount's status: queue length, upload, last poll, first error.

    Example: ``2 to send, 14 sent; uploading report.pdf 41%; inbox 3, polled 09:00:05Z``.
    """
    parts: list[str] = []
    outbox = status.outbox
    counts = outbox.queue.counts if outbox is not None else {}
    if counts:
        waiting = counts.get("queued", 0) + counts.get("uploading", 0)
        text = f"{waiting} to send, {counts.get('sent', 0)} sent"
        if counts.get("failed"):
            text += f", {counts['failed']} failed"
        parts.append(text)
    if outbox is not None and outbox.in_flight is not None:
        parts.append(f"uploading {outbox.in_flight.filename} {outbox.in_flight.percent:.0f}%")
    inbox = status.inbox
    if inbox is not None:
        text = f"inbox {inbox.messages}"
        if inbox.rejected:
            text += f" ({inbox.rejected} rejected)"
        at = inbox.last_poll.at
        text += f", polled {protocol.format_timestamp(at)[11:] if at else 'not yet'}"
        parts.append(text)
    if status.errors:
        parts.append(f"error: {status.errors[0]}")
    return "; ".join(parts) or "running"


def status_text(summary: StatusSummary, default_cache_cap: int) -> str:
    """``dockercomms status`` for people: one line per part, every claim escaped."""
    daemon = summary.daemon
    if summary.source == "mount":
        lines = [f"daemon: running (pid {daemon.pid}), mounted at {shown(daemon.mountpoint)}"]
    elif daemon.running:
        lines = [f"daemon: pid {daemon.pid} holds the queue; no mount answers for it"]
    else:
        lines = ["daemon: not running (read from the queue database)"]
    lines.append(f"identity: {shown(summary.identity)} on {shown(summary.repository)}")
    lines.append(_queue_line(summary.queue))
    lines += [_transfer_line(t) for t in summary.transfers]
    poll = summary.last_poll
    if poll is not None:
        inbox = summary.inbox or InboxCounts()
        at = protocol.format_timestamp(poll.at) if poll.at else "not yet"
        line = f"last poll: {at}"
        if poll.seconds is not None:
            line += f" ({poll.seconds:.2f}s)"
        line += f"; inbox {inbox.messages} messages, {inbox.rejected} rejected"
        lines.append(line)
    else:
        lines.append("last poll: unknown (only a running mount knows)")
    cache = summary.cache
    cap = _size(cache.cap_bytes or default_cache_cap)
    lines.append(f"cache: {cache.entries} chunks, {_size(cache.bytes)} of {cap}")
    if summary.card is not None:
        lines.append(_card_line(summary.card))
    if summary.sealing is not None:
        lines.append(f"sealing: {shown(summary.sealing)}")
    lines += [f"error: {shown(error)}" for error in summary.errors]
    for refusal in summary.refusals:
        at = protocol.format_timestamp(refusal.at) if refusal.at else "?"
        lines.append(f"refused: {shown(refusal.path)} ({at}): {shown(refusal.reason)}")
    lines += [f"note: {note}" for note in summary.notes]
    return "\n".join(lines)


def _card_line(card: CardStatus) -> str:
    line = f"card: {card.state}"
    if card.created_at is not None:
        line += f" ({protocol.format_timestamp(card.created_at)}, {shown(card.tag or '')})"
    if card.detail:
        line += f"; {shown(card.detail)}"
    return line


def _queue_line(queue: QueueStatistics | None) -> str:
    if queue is None:
        return "queue: empty (nothing was ever queued)"
    counts = queue.counts
    waiting = counts.get("queued", 0) + counts.get("uploading", 0)
    line = (
        f"queue: {waiting} to send ({counts.get('queued', 0)} queued, "
        f"{counts.get('uploading', 0)} uploading), {counts.get('sent', 0)} sent, "
        f"{counts.get('failed', 0)} failed"
    )
    if waiting:
        line += f"; {_size(queue.bytes_queued)} waiting"
        if queue.oldest_queued is not None:
            line += f" since {protocol.format_timestamp(queue.oldest_queued)}"
    return line


def _transfer_line(transfer: Upload | Download | InterruptedUpload) -> str:
    if isinstance(transfer, InterruptedUpload):
        return (
            f"{transfer.direction}: {shown(transfer.filename)} to {shown(transfer.recipient)}, "
            f"{transfer.chunks_uploaded} chunks uploaded, {transfer.state}"
        )
    what = f"{transfer.direction}: {shown(transfer.filename)} {transfer.percent:.1f}%"
    return f"{what} ({_size(transfer.bytes_done)} of {_size(transfer.bytes_total)})"


def _size(n: int | float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
