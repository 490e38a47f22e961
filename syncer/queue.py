"""The durable push queue: SQLite rows plus a private copy of each file's bytes.

Caveats first:

* One process at a time owns a queue (``Syncer`` takes a file lock); several
  threads of that process may share one ``PushQueue`` (one connection, one lock).
* A file is owned by the queue once enqueued: it is *moved* out of the spool, so
  the same file can never be queued twice, and editing it afterwards in place
  changes nothing that is being sent.
* The spool may be writable by other local users (a shared outbox), who can swap
  a file for a symlink or a hard link to one of the owner's private files between
  any check and the move. So a file is opened once, without following links,
  in a folder opened the same way from the spool down (:class:`SourceFile`),
  checked on that descriptor (a regular file, owned by this user, one link), and
  what is queued is exactly that file: copied from the descriptor, or renamed
  through the folder's descriptor and then confirmed to be the same inode (a
  different one is put back and the intake fails).
* ``message_id``, ``session_id`` and ``created_at`` are fixed at enqueue and the
  send options are pinned at the first upload, so every retry builds the same
  manifest and tag: a retry after a crash is the same message, never a second one.
* Sealing (SPEC 9) is random, so a sealed send keeps more: the recipient plan
  (names after group expansion, and the age recipients) is pinned at the first
  upload, each uploaded chunk is recorded with its plaintext sha256, the
  ``sealed`` annotation value is stored before the first manifest is pushed, and
  each recipient's tag once pushed (``deliveries``). A retry reuses all of them,
  so it rebuilds byte for byte the manifests of the first try: every recipient
  gets the message exactly once. Chunks are only ever reused under the plan that
  sealed them (the plan never changes once pinned).
* ``created_at`` is the enqueue time. An item that waited out most of its TTL
  (a long registry outage) gets a new one from the worker, but only once the
  registry confirms its old inbox tag is not there (:meth:`PushQueue.restamp`),
  so no recipient can have seen the old date.
* Sent items keep their row (digest, tag, receipt) but not their bytes.
* Receipts are per recipient (``delivery_receipts``): a send to a group has one
  manifest per member, each answered by that member alone. The item's
  ``receipt`` is their summary (:func:`receipt_summary`), the one rule for what
  ``sent/`` and ``status`` show.

The on-disk protocol of ``enqueue`` (each step is durable before the next)::

    0. Open the source with O_NOFOLLOW and check the descriptor (SourceFile).
    1. INSERT the row in state ``intake`` with the source path and its identity
       (device, inode, size, mtime, from the descriptor), COMMIT.
    2. Move the bytes to ``queue_dir/<id>.data``:
       same filesystem:  rename(source, data)                   <- commit point
                         (if data is not the opened inode: rename it back, undo)
       across them:      copy from the descriptor to <id>.data.tmp, fsync,
                         rename to data <- commit point, fsync queue_dir, unlink
                         source if it is still the file we copied
       then fsync queue_dir and the source's folder.
    3. UPDATE the row to ``queued``, COMMIT.

``recover()`` finishes or undoes any ``intake`` row by one rule: if
``<id>.data`` exists the move happened (roll forward: drop the source if it is
still the copied file, mark ``queued``); if not, it did not (roll back: drop the
row and any ``.tmp``; the file is still in the spool and the next scan queues it
again). Either way a crash at any point leaves exactly one queued item or one
file in the spool, never both and never neither. ``<id>.data`` appears only by
rename, so it is never a torn copy.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import stat
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from dockercomms.core import protocol
from dockercomms.core.config import DEFAULT_CHUNK_BYTES
from dockercomms.core.outbox import Delivery, Descriptor, RecipientPlan
from dockercomms.core.paths import Paths
from dockercomms.core.status import InterruptedUpload, QueueStatistics

log = logging.getLogger(__name__)

_INTAKE = "intake"
_DATA_SUFFIX = ".data"
_TMP_SUFFIX = ".data.tmp"
_SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    recipient TEXT NOT NULL,
    filename TEXT NOT NULL,
    size INTEGER NOT NULL,
    state TEXT NOT NULL,
    message_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at TEXT,
    digest TEXT,
    tag TEXT,
    enqueued_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    sent_at TEXT,
    receipt TEXT,
    source_path TEXT,
    source_key TEXT,
    chunk_bytes INTEGER,
    compression TEXT,
    ttl_seconds INTEGER,
    recipients TEXT,
    seal_to TEXT,
    sealed TEXT
);
CREATE INDEX IF NOT EXISTS items_due ON items (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS chunks (
    item_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    plain_sha256 TEXT,
    PRIMARY KEY (item_id, idx)
);
CREATE TABLE IF NOT EXISTS deliveries (
    item_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    digest TEXT NOT NULL,
    tag TEXT NOT NULL,
    bundle_digest TEXT NOT NULL,
    PRIMARY KEY (item_id, recipient)
);
CREATE TABLE IF NOT EXISTS delivery_receipts (
    item_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (item_id, recipient)
);
"""

#: Version 1 -> 2: what a sealed send pins (see the module caveats).
_MIGRATE_1_TO_2 = (
    "ALTER TABLE items ADD COLUMN recipients TEXT",
    "ALTER TABLE items ADD COLUMN seal_to TEXT",
    "ALTER TABLE items ADD COLUMN sealed TEXT",
    "ALTER TABLE chunks ADD COLUMN plain_sha256 TEXT",
)

_COLUMNS = (
    "id, recipient, filename, size, state, message_id, session_id, created_at, attempts, "
    "last_error, next_attempt_at, digest, tag, enqueued_at, sent_at, receipt"
)


class ItemState(StrEnum):
    """Where an item is in its life: queued -> uploading -> sent, or failed."""

    QUEUED = "queued"
    UPLOADING = "uploading"
    SENT = "sent"
    FAILED = "failed"


def receipt_summary(recipients: Iterable[str], answers: dict[str, str]) -> str | None:
    """What a sent item's ``receipt`` says, from each recipient's answer.

    One recipient: its status. Several who all gave the same answer: that
    status. Otherwise ``name: status`` per recipient, ``no answer`` where none
    came (names are trusted contacts, checked when the group was made). None
    until someone answers.
    """
    names = sorted(set(recipients) | set(answers))
    if not answers:
        return None
    statuses = {answers.get(name) for name in names}
    if len(statuses) == 1:
        return answers[names[0]]
    return "; ".join(f"{name}: {answers.get(name) or 'no answer'}" for name in names)


@dataclass(frozen=True)
class QueueItem:
    """One file in the queue.

    Attributes:
        id: the queue's own id (also names the data file).
        filename: the name announced to the recipient.
        size: bytes of the queued copy.
        message_id: fixed at enqueue, so retries are the same message.
        session_id: fixed at enqueue (the tag's sid8).
        created_at: fixed at enqueue (whole seconds, UTC; part of the tag).
        data_path: our private copy of the bytes; gone once sent.
        attempts: upload attempts started so far.
        last_error: why the last attempt failed (kept until the item is sent).
        next_attempt_at: a queued item is not due before this (backoff).
        digest: the manifest digest, once sent.
        tag: the inbox tag, once sent.
        receipt: latest verified receipt status from the recipient, if any; for
            several recipients their summary (:func:`receipt_summary`).
    """

    id: str
    recipient: str
    filename: str
    size: int
    state: ItemState
    message_id: str
    session_id: str
    created_at: datetime
    data_path: Path
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    digest: str | None
    tag: str | None
    enqueued_at: datetime
    sent_at: datetime | None
    receipt: str | None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (timestamps RFC 3339)."""
        return {
            "id": self.id,
            "recipient": self.recipient,
            "filename": self.filename,
            "size": self.size,
            "state": str(self.state),
            "message_id": self.message_id,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "next_attempt_at": _rfc3339(self.next_attempt_at),
            "digest": self.digest,
            "tag": self.tag,
            "enqueued_at": _rfc3339(self.enqueued_at),
            "sent_at": _rfc3339(self.sent_at),
            "receipt": self.receipt,
        }


@dataclass(frozen=True)
class SendOptions:
    """The settings that shape a manifest, pinned per item at its first upload.

    Pinned because a config change between a crashed attempt and its retry would
    otherwise give the retry another digest.
    """

    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    compression: str = "zstd"
    ttl_seconds: int = protocol.DEFAULT_TTL_SECONDS


class RefusedFile(ValueError):
    """A file the queue will not take: a link, not a regular file, or someone else's.

    Attributes:
        reason: why, without the path (for ``status`` and notifications).
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} {reason}")
        self.reason = reason


#: How a source is opened: never through a symlink, never blocking on a FIFO, never
#: becoming our controlling terminal.
_SOURCE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class SourceFile:
    """A spool file opened once for intake; every check is made on the descriptors.

    Below ``root`` (the spool) no component of the path may be a symlink: each
    folder is opened with ``O_NOFOLLOW`` relative to the one before, so swapping
    ``outbox/bob`` for a link to ``~/.ssh`` does not make ``outbox/bob/id_rsa``
    the private key. The move into the queue then works on the folder's
    descriptor too (``rename``/``unlink`` with ``dir_fd``), never on the path.

    Attributes:
        path: where it was opened (the name may point elsewhere a moment later).
        name: its name in ``dir_fd``.
        dir_fd: the folder it was opened in.
        fd: the file: what is sent is this file, whatever the path says now.
        stat: ``fstat`` of the descriptor at open.
    """

    def __init__(self, path: Path, *, root: Path | None = None) -> None:
        self.path = path
        self.name = path.name
        self.fd = -1
        self.dir_fd = _open_folder(path, root)
        try:
            try:
                self.fd = os.open(self.name, _SOURCE_FLAGS, dir_fd=self.dir_fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise RefusedFile(
                        path, "is a symbolic link; only regular files are sent"
                    ) from exc
                raise
            self.stat = os.fstat(self.fd)
            _check_source(path, self.stat)
        except BaseException:
            self.close()
            raise

    def lstat_name(self) -> os.stat_result:
        """What the name in the folder is now (it may have been swapped)."""
        return os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)

    def close(self) -> None:
        """Close the descriptors (idempotent)."""
        for fd in (self.fd, self.dir_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.dir_fd = -1

    def __enter__(self) -> SourceFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_folder(path: Path, root: Path | None) -> int:
    """The folder holding ``path``, opened without following a link below ``root``."""
    if root is None:
        return os.open(path.parent, _DIR_FLAGS)
    try:
        parts = path.parent.relative_to(root).parts
    except ValueError as exc:
        raise RefusedFile(path, f"is not inside {root}") from exc
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts:
            try:
                below = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise RefusedFile(
                    path, f"is in a folder reached through a symbolic link ({part}); not sent"
                ) from exc
            os.close(fd)
            fd = below
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_source(path: Path, st: os.stat_result) -> None:
    """Refuse what could leak a file its owner never dropped into the outbox."""
    if not stat.S_ISREG(st.st_mode):
        raise RefusedFile(path, "is not a regular file; only regular files are sent")
    if st.st_uid != os.geteuid():
        raise RefusedFile(
            path, f"belongs to uid {st.st_uid}, not to me (uid {os.geteuid()}); not sent"
        )
    if st.st_nlink > 1:
        raise RefusedFile(
            path, f"has {st.st_nlink} hard links (another name may be a private file); not sent"
        )


class PushQueue:
    """Durable FIFO of files to send; see the module docstring for the protocol."""

    def __init__(self, db_path: Path, queue_dir: Path) -> None:
        self.db_path = db_path
        self.queue_dir = queue_dir
        queue_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        db_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        # Held for a whole intake and for recover(), which must never see an
        # intake half done by a live thread (it would undo it under its feet).
        self._intake = threading.Lock()
        # One connection shared by the watcher, worker and chunk-upload threads,
        # serialised by the lock; autocommit mode so transactions are explicit.
        self._conn = sqlite3.connect(
            db_path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        with self._transaction():
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise RuntimeError(f"{db_path} is from a newer dockercomms (v{version})")
            if version == 1:
                for statement in _MIGRATE_1_TO_2:
                    self._conn.execute(statement)
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> PushQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- intake ---------------------------------------------------------------------

    def enqueue(self, path: Path, recipient: str, filename: str | None = None) -> QueueItem:
        """Take ownership of ``path`` (moved into the queue) and queue it for ``recipient``.

        Raises ``FileNotFoundError`` when the file is gone (someone else took it),
        :class:`RefusedFile` (a ``ValueError``) for a link, a non-regular file or
        someone else's file; the row is undone either way.
        """
        if not recipient:
            raise ValueError("recipient must not be empty")
        with SourceFile(path) as source:
            return self.enqueue_source(source, recipient, filename)

    def enqueue_source(
        self, source: SourceFile, recipient: str, filename: str | None = None
    ) -> QueueItem:
        """:meth:`enqueue` of a file the caller already opened and checked."""
        if not recipient:
            raise ValueError("recipient must not be empty")
        with self._intake:
            return self._enqueue(source.path, source, recipient, filename)

    def _enqueue(
        self, path: Path, opened: SourceFile, recipient: str, filename: str | None
    ) -> QueueItem:
        """Steps 1-3 of the protocol in the module docstring."""
        source = opened.stat
        item_id = uuid.uuid4().hex
        now = datetime.now(UTC)
        data = self._data_path(item_id)
        with self._lock, self._transaction():
            self._conn.execute(
                "INSERT INTO items (id, recipient, filename, size, state, message_id, "
                "session_id, created_at, enqueued_at, updated_at, source_path, source_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    item_id,
                    recipient,
                    filename or path.name,
                    source.st_size,
                    _INTAKE,
                    protocol.new_message_id(),
                    protocol.new_message_id(),
                    _ts(now.replace(microsecond=0)),
                    _ts(now),
                    _ts(now),
                    str(path.absolute()),
                    _identity_key(source),
                ),
            )
        committed = False
        try:
            try:
                os.rename(opened.name, data, src_dir_fd=opened.dir_fd)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                self._copy_in(path, data, opened)
            else:
                _confirm_moved(opened, data)
            committed = True
            _fsync_dir(self.queue_dir)
            os.fsync(opened.dir_fd)
        except BaseException:
            if not committed:
                with self._lock:
                    self._undo_intake(item_id)
                raise
            # Past the commit point (only a directory fsync failed): the bytes are
            # ours now, so finishing is the only way not to lose the file.
            log.warning("queued %s although syncing its folder failed", path, exc_info=True)
        with self._lock:
            with self._transaction():
                self._conn.execute(
                    "UPDATE items SET state = ?, size = ?, source_path = NULL, "
                    "source_key = NULL, updated_at = ? WHERE id = ?",
                    (ItemState.QUEUED, data.stat().st_size, _ts(datetime.now(UTC)), item_id),
                )
            self._changed.notify_all()
            item = self._get(item_id)
        assert item is not None
        log.info("queued %s for %s as %s", item.filename, recipient, item_id)
        return item

    def _copy_in(self, path: Path, data: Path, opened: SourceFile) -> None:
        """The cross-filesystem move: copy from the descriptor, fsync, rename, unlink."""
        source = opened.stat
        tmp = data.with_name(data.name[: -len(_DATA_SUFFIX)] + _TMP_SUFFIX)
        with open(tmp, "wb") as dst:
            offset = 0
            while piece := os.pread(opened.fd, 1024 * 1024, offset):
                dst.write(piece)
                offset += len(piece)
            dst.flush()
            os.fsync(dst.fileno())
        if _identity_key(os.fstat(opened.fd)) != _identity_key(source):
            tmp.unlink()
            raise OSError(errno.EBUSY, "file changed while being queued", str(path))
        os.rename(tmp, data)
        try:
            _fsync_dir(self.queue_dir)
            if _identity_key(opened.lstat_name()) != _identity_key(source):
                raise OSError(errno.EBUSY, "file replaced while being queued", str(path))
            os.unlink(opened.name, dir_fd=opened.dir_fd)
        except BaseException:
            # Both copies exist: give the file back to the spool rather than risk
            # sending it twice.
            data.unlink(missing_ok=True)
            raise

    def _undo_intake(self, item_id: str) -> None:
        for leftover in (self._data_path(item_id), self._tmp_path(item_id)):
            leftover.unlink(missing_ok=True)
        with self._transaction():
            self._conn.execute("DELETE FROM items WHERE id = ?", (item_id,))

    def recover(self) -> None:
        """Repair what a crash left: finish or undo intakes, requeue uploads, drop orphans.

        Uploading items go back to queued with their ids unchanged, so the push
        that follows is the same message as the interrupted one.
        """
        with self._intake, self._lock:
            rows = self._conn.execute(
                "SELECT id, source_path, source_key FROM items WHERE state = ?", (_INTAKE,)
            ).fetchall()
            for item_id, source_path, source_key in rows:
                self._recover_intake(item_id, Path(source_path), source_key)
            with self._transaction():
                moved = self._conn.execute(
                    "UPDATE items SET state = ?, next_attempt_at = NULL, updated_at = ? "
                    "WHERE state = ?",
                    (ItemState.QUEUED, _ts(datetime.now(UTC)), ItemState.UPLOADING),
                ).rowcount
            if moved:
                log.info("requeued %d interrupted upload(s)", moved)
            self._remove_orphans()
            self._changed.notify_all()

    def _recover_intake(self, item_id: str, source: Path, source_key: str) -> None:
        data = self._data_path(item_id)
        try:
            moved = os.lstat(data)
        except FileNotFoundError:
            self._undo_intake(item_id)
            log.info("undid interrupted intake of %s (still in the spool)", source)
            return
        try:
            _check_source(data, moved)
        except RefusedFile as refused:
            # A crash between the rename and its check, with the name swapped for a
            # link or someone else's file: never queue that.
            _give_back(data, source)
            self._undo_intake(item_id)
            log.warning(
                "interrupted intake of %s took a file that %s; put back", source, refused.reason
            )
            return
        with contextlib.suppress(FileNotFoundError):
            if _identity_key(os.lstat(source)) == source_key:
                source.unlink()
                _fsync_dir(source.parent)
        self._tmp_path(item_id).unlink(missing_ok=True)
        with self._transaction():
            self._conn.execute(
                "UPDATE items SET state = ?, size = ?, source_path = NULL, source_key = NULL, "
                "updated_at = ? WHERE id = ?",
                (ItemState.QUEUED, data.stat().st_size, _ts(datetime.now(UTC)), item_id),
            )
        log.info("finished interrupted intake of %s", source)

    def _remove_orphans(self) -> None:
        """Data files of sent or vanished items (a crash between commit and unlink)."""
        live = {
            row[0]
            for row in self._conn.execute(
                "SELECT id FROM items WHERE state != ?", (ItemState.SENT,)
            )
        }
        for entry in self.queue_dir.iterdir():
            item_id = entry.name.split(".", 1)[0]
            if entry.name.endswith(_DATA_SUFFIX) and item_id in live:
                continue
            if entry.name.endswith((_DATA_SUFFIX, _TMP_SUFFIX)):
                entry.unlink(missing_ok=True)

    # --- the worker's transitions ---------------------------------------------------

    def next_due(self, now: datetime) -> QueueItem | None:
        """The oldest queued item whose backoff has passed, if any."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM items WHERE state = ? "
                "AND (next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY seq LIMIT 1",
                (ItemState.QUEUED, _ts(now)),
            ).fetchone()
            return self._item(row) if row else None

    def next_attempt_at(self) -> datetime | None:
        """When the earliest queued item becomes due (None: nothing queued)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*), MIN(COALESCE(next_attempt_at, '')) FROM items WHERE state = ?",
                (ItemState.QUEUED,),
            ).fetchone()
        if not row[0]:
            return None
        return _parse(row[1]) if row[1] else datetime.min.replace(tzinfo=UTC)

    def wait_for_change(self, timeout: float) -> None:
        """Block until an item is enqueued or requeued here, or ``timeout`` passes."""
        with self._changed:
            self._changed.wait(timeout)

    def notify(self) -> None:
        """Wake every ``wait_for_change`` (used to stop a worker promptly)."""
        with self._changed:
            self._changed.notify_all()

    def mark_uploading(self, item_id: str) -> QueueItem:
        """An upload attempt starts: counted in ``attempts``. Only a queued item can start."""
        return self._update(
            item_id,
            "state = ?, attempts = attempts + 1, next_attempt_at = NULL",
            (ItemState.UPLOADING,),
            only_states=(ItemState.QUEUED,),
        )

    def pin_send_options(self, item_id: str, options: SendOptions) -> SendOptions:
        """The item's send options: pinned to ``options`` on first use, then fixed."""
        with self._lock, self._transaction():
            self._conn.execute(
                "UPDATE items SET chunk_bytes = ?, compression = ?, ttl_seconds = ? "
                "WHERE id = ? AND chunk_bytes IS NULL",
                (options.chunk_bytes, options.compression, options.ttl_seconds, item_id),
            )
            row = self._conn.execute(
                "SELECT chunk_bytes, compression, ttl_seconds FROM items WHERE id = ?",
                (item_id,),
            ).fetchone()
        if row is None:
            raise KeyError(item_id)
        return SendOptions(*row)

    def record_chunk(
        self, item_id: str, index: int, descriptor: Descriptor, plain_sha256: str = ""
    ) -> None:
        """Remember an uploaded chunk so a retry skips it (after a HEAD).

        ``plain_sha256``: a sealed chunk's plaintext digest, which a retry needs
        for the ``sealed`` annotation without reading the chunk again.
        """
        with self._lock, self._transaction():
            self._conn.execute(
                "INSERT OR REPLACE INTO chunks (item_id, idx, media_type, digest, size, "
                "plain_sha256) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    item_id,
                    index,
                    descriptor.media_type,
                    descriptor.digest,
                    descriptor.size,
                    plain_sha256 or None,
                ),
            )

    def known_sha256(self, item_id: str) -> dict[int, str]:
        """Plaintext digests of the sealed chunks recorded for ``item_id``."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT idx, plain_sha256 FROM chunks WHERE item_id = ? "
                "AND plain_sha256 IS NOT NULL",
                (item_id,),
            ).fetchall()
        return dict(rows)

    def pin_recipient_plan(self, item_id: str, plan: RecipientPlan) -> RecipientPlan:
        """The item's recipient plan: ``plan`` on first use, then the pinned one.

        Chunks recorded before a plan was pinned (an older version's plaintext
        try) are dropped when a sealed plan is pinned: they cannot be reused.
        """
        with self._lock, self._transaction():
            changed = self._conn.execute(
                "UPDATE items SET recipients = ?, seal_to = ? WHERE id = ? AND recipients IS NULL",
                (json.dumps(list(plan.names)), json.dumps(list(plan.seal_to)), item_id),
            ).rowcount
            if changed and plan.sealed:
                self._conn.execute("DELETE FROM chunks WHERE item_id = ?", (item_id,))
            pinned = self._recipient_plan(item_id)
        if pinned is None:
            raise KeyError(item_id)
        return pinned

    def recipient_plan(self, item_id: str) -> RecipientPlan | None:
        """The recipient plan pinned for ``item_id``; None before its first upload."""
        with self._lock:
            return self._recipient_plan(item_id)

    def _recipient_plan(self, item_id: str) -> RecipientPlan | None:
        row = self._conn.execute(
            "SELECT recipients, seal_to FROM items WHERE id = ?", (item_id,)
        ).fetchone()
        if row is None or row[0] is None:
            return None
        return RecipientPlan(tuple(json.loads(row[0])), tuple(json.loads(row[1] or "[]")))

    def pin_sealed(self, item_id: str, value: str) -> str:
        """The ``sealed`` annotation value: ``value`` the first time, then the stored one."""
        with self._lock, self._transaction():
            self._conn.execute(
                "UPDATE items SET sealed = ? WHERE id = ? AND sealed IS NULL", (value, item_id)
            )
            row = self._conn.execute("SELECT sealed FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise KeyError(item_id)
        stored: str = row[0]
        return stored

    def sealed_value(self, item_id: str) -> str | None:
        """The ``sealed`` value an earlier try stored, if any."""
        with self._lock:
            row = self._conn.execute("SELECT sealed FROM items WHERE id = ?", (item_id,)).fetchone()
        return row[0] if row else None

    def record_delivery(self, item_id: str, delivery: Delivery) -> None:
        """One recipient's manifest is tagged: a retry does not push it again."""
        with self._lock, self._transaction():
            self._conn.execute(
                "INSERT OR REPLACE INTO deliveries VALUES (?, ?, ?, ?, ?)",
                (
                    item_id,
                    delivery.recipient,
                    delivery.digest,
                    delivery.tag,
                    delivery.bundle_digest,
                ),
            )

    def deliveries(self, item_id: str) -> dict[str, Delivery]:
        """Recipients already tagged for ``item_id``, by name."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT recipient, digest, tag, bundle_digest FROM deliveries WHERE item_id = ?",
                (item_id,),
            ).fetchall()
        return {row[0]: Delivery(*row) for row in rows}

    def known_chunks(self, item_id: str) -> dict[int, Descriptor]:
        """Chunks recorded for ``item_id`` by earlier attempts."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT idx, media_type, digest, size FROM chunks WHERE item_id = ?", (item_id,)
            ).fetchall()
        return {idx: Descriptor(media_type, digest, size) for idx, media_type, digest, size in rows}

    def mark_sent(self, item_id: str, digest: str, tag: str) -> QueueItem:
        """The tag is pushed: the item is done; its bytes are deleted."""
        now = _ts(datetime.now(UTC))
        with self._lock:
            with self._transaction():
                self._conn.execute("DELETE FROM chunks WHERE item_id = ?", (item_id,))
                item = self._update_locked(
                    item_id,
                    "state = ?, digest = ?, tag = ?, sent_at = ?, last_error = NULL, "
                    "next_attempt_at = NULL",
                    (ItemState.SENT, digest, tag, now),
                )
            # After the commit: a crash before the unlink leaves an orphan that
            # recover() removes, never a sent row without its proof of sending.
            item.data_path.unlink(missing_ok=True)
        return item

    def mark_retry(self, item_id: str, error: str, delay: float) -> QueueItem:
        """A temporary failure: back to queued, not due for ``delay`` seconds."""
        due = datetime.now(UTC) + timedelta(seconds=max(delay, 0.0))
        with self._lock:
            item = self._update(
                item_id,
                "state = ?, last_error = ?, next_attempt_at = ?",
                (ItemState.QUEUED, error, _ts(due)),
            )
            self._changed.notify_all()
        return item

    def mark_failed(self, item_id: str, error: str) -> QueueItem:
        """A permanent failure: kept (with its bytes) until requeued or cancelled."""
        return self._update(
            item_id, "state = ?, last_error = ?, next_attempt_at = NULL", (ItemState.FAILED, error)
        )

    def set_receipt(self, item_id: str, recipient: str, status: str) -> QueueItem:
        """Remember ``recipient``'s latest verified receipt status for a sent item.

        The item's ``receipt`` becomes the summary over every recipient it went to
        (its deliveries; the item's own recipient for a send that recorded none).
        """
        with self._lock, self._transaction():
            self._conn.execute(
                "INSERT OR REPLACE INTO delivery_receipts VALUES (?, ?, ?)",
                (item_id, recipient, status),
            )
            names = [
                row[0]
                for row in self._conn.execute(
                    "SELECT recipient FROM deliveries WHERE item_id = ?", (item_id,)
                )
            ]
            answers = dict(
                self._conn.execute(
                    "SELECT recipient, status FROM delivery_receipts WHERE item_id = ?",
                    (item_id,),
                ).fetchall()
            )
            summary = receipt_summary(names or list(answers), answers)
            self._conn.execute("UPDATE items SET receipt = ? WHERE id = ?", (summary, item_id))
        item = self.get(item_id)
        if item is None:
            raise KeyError(f"{item_id} is not in the queue")
        return item

    def receipts(self, item_id: str) -> dict[str, str]:
        """Each recipient's latest verified receipt status for ``item_id``, by name."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT recipient, status FROM delivery_receipts WHERE item_id = ?", (item_id,)
            ).fetchall()
        return dict(rows)

    def rejections(self) -> list[tuple[QueueItem, str]]:
        """Sent items and the recipient who rejected each (one pair per rejection)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT item_id, recipient FROM delivery_receipts WHERE status = 'rejected' "
                "ORDER BY item_id, recipient"
            ).fetchall()
        found = []
        for item_id, recipient in rows:
            item = self.get(item_id)
            if item is not None:
                found.append((item, str(recipient)))
        return found

    def restamp(self, item_id: str, created_at: datetime) -> QueueItem:
        """A new ``created_at`` (so a fresh TTL) for an item whose message nobody has seen.

        The caller checks the registry first: the old inbox tag must be absent.
        Ids and pinned options stay, so retries after this are still one message.
        """
        stamp = _ts(created_at.astimezone(UTC).replace(microsecond=0))
        return self._update(
            item_id,
            "created_at = ?",
            (stamp,),
            only_states=(ItemState.QUEUED, ItemState.UPLOADING),
        )

    def requeue(self, item_id: str) -> QueueItem:
        """Give a failed item another go (same ids, so still the same message)."""
        with self._lock:
            item = self._update(
                item_id,
                "state = ?, next_attempt_at = NULL",
                (ItemState.QUEUED,),
                only_states=(ItemState.FAILED,),
            )
            self._changed.notify_all()
        return item

    def cancel(self, item_id: str) -> None:
        """Drop a queued or failed item and its bytes (never one being uploaded)."""
        with self._lock:
            with self._transaction():
                deleted = self._conn.execute(
                    "DELETE FROM items WHERE id = ? AND state IN (?, ?)",
                    (item_id, ItemState.QUEUED, ItemState.FAILED),
                ).rowcount
                if not deleted:
                    raise KeyError(f"{item_id} is not a queued or failed item")
                self._conn.execute("DELETE FROM chunks WHERE item_id = ?", (item_id,))
                self._conn.execute("DELETE FROM deliveries WHERE item_id = ?", (item_id,))
            self._data_path(item_id).unlink(missing_ok=True)

    # --- reading --------------------------------------------------------------------

    def items(self, states: Iterable[ItemState] | None = None) -> list[QueueItem]:
        """Items in enqueue order, optionally only those in ``states``."""
        wanted = [str(s) for s in states] if states is not None else [str(s) for s in ItemState]
        if not wanted:
            return []
        marks = ", ".join("?" * len(wanted))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM items WHERE state IN ({marks}) ORDER BY seq", wanted
            ).fetchall()
        return [self._item(row) for row in rows]

    def get(self, item_id: str) -> QueueItem | None:
        """One item by id (None while its intake is unfinished, or if unknown)."""
        with self._lock:
            return self._get(item_id)

    def statistics(self) -> QueueStatistics:
        """Counts per state, bytes left to send, oldest waiting item, last error."""
        with self._lock:
            counts = dict.fromkeys(map(str, ItemState), 0)
            for state, count in self._conn.execute(
                "SELECT state, COUNT(*) FROM items WHERE state != ? GROUP BY state", (_INTAKE,)
            ):
                counts[str(ItemState(state))] = count
            pending, oldest = self._conn.execute(
                "SELECT COALESCE(SUM(size), 0), MIN(enqueued_at) FROM items WHERE state IN (?, ?)",
                (ItemState.QUEUED, ItemState.UPLOADING),
            ).fetchone()
            failing = self._conn.execute(
                "SELECT last_error, updated_at FROM items WHERE last_error IS NOT NULL "
                "AND state != ? ORDER BY updated_at DESC LIMIT 1",
                (ItemState.SENT,),
            ).fetchone()
        return QueueStatistics(
            counts,
            pending,
            _parse(oldest) if oldest else None,
            failing[0] if failing else None,
            _parse(failing[1]) if failing else None,
        )

    # --- internals ------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _update(
        self,
        item_id: str,
        assignments: str,
        values: tuple[object, ...],
        *,
        only_states: tuple[ItemState, ...] | None = None,
    ) -> QueueItem:
        with self._lock, self._transaction():
            return self._update_locked(item_id, assignments, values, only_states=only_states)

    def _update_locked(
        self,
        item_id: str,
        assignments: str,
        values: tuple[object, ...],
        *,
        only_states: tuple[ItemState, ...] | None = None,
    ) -> QueueItem:
        states = only_states or tuple(ItemState)
        marks = ", ".join("?" * len(states))
        changed = self._conn.execute(
            f"UPDATE items SET {assignments}, updated_at = ? WHERE id = ? AND state IN ({marks})",
            (*values, _ts(datetime.now(UTC)), item_id, *states),
        ).rowcount
        if not changed:
            raise KeyError(f"no queue item {item_id} in state {', '.join(states)}")
        item = self._get(item_id)
        assert item is not None
        return item

    def _get(self, item_id: str) -> QueueItem | None:
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM items WHERE id = ? AND state != ?", (item_id, _INTAKE)
        ).fetchone()
        return self._item(row) if row else None

    def _item(self, row: tuple[Any, ...]) -> QueueItem:
        (
            item_id,
            recipient,
            filename,
            size,
            state,
            message_id,
            session_id,
            created_at,
            attempts,
            last_error,
            next_attempt_at,
            digest,
            tag,
            enqueued_at,
            sent_at,
            receipt,
        ) = row
        return QueueItem(
            id=item_id,
            recipient=recipient,
            filename=filename,
            size=size,
            state=ItemState(state),
            message_id=message_id,
            session_id=session_id,
            created_at=_parse(created_at),
            data_path=self._data_path(item_id),
            attempts=attempts,
            last_error=last_error,
            next_attempt_at=_parse(next_attempt_at) if next_attempt_at else None,
            digest=digest,
            tag=tag,
            enqueued_at=_parse(enqueued_at),
            sent_at=_parse(sent_at) if sent_at else None,
            receipt=receipt,
        )

    def _data_path(self, item_id: str) -> Path:
        return self.queue_dir / f"{item_id}{_DATA_SUFFIX}"

    def _tmp_path(self, item_id: str) -> Path:
        return self.queue_dir / f"{item_id}{_TMP_SUFFIX}"


def _confirm_moved(opened: SourceFile, data: Path) -> None:
    """After the rename into the queue: ``data`` must be the opened inode, else it goes back.

    Someone who can write into the spool may have swapped the name between the
    open and the rename (for a symlink to a private file, say); what the rename
    moved is then theirs, not what was checked, and it is returned to the spool.
    """
    moved = os.lstat(data)
    if (moved.st_dev, moved.st_ino) == (opened.stat.st_dev, opened.stat.st_ino):
        return
    _give_back(data, opened.path, opened.name, opened.dir_fd)
    raise OSError(errno.EBUSY, "file replaced while being queued", str(opened.path))


def _give_back(data: Path, path: Path, name: str | None = None, dir_fd: int | None = None) -> None:
    """Return what a rename wrongly took into the queue to the spool (``name`` in ``dir_fd``).

    If that fails, a link or special file is removed (which touches nothing it
    points to) and a regular file is kept next to the queue as ``<id>.replaced``.
    """
    try:
        os.rename(data, name if name is not None else path, dst_dir_fd=dir_fd)
        return
    except OSError as exc:
        log.warning("cannot put %s back after it was replaced during intake: %s", path, exc)
    if stat.S_ISREG(os.lstat(data).st_mode):
        os.rename(data, data.with_suffix(".replaced"))
    else:
        data.unlink()


def _identity_key(st: os.stat_result) -> str:
    """Which file, and which version of it: enough to know a source is untouched."""
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _fsync_dir(path: Path) -> None:
    """Make a rename into or out of ``path`` survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ts(moment: datetime) -> str:
    """Fixed-width UTC ISO text, so SQL compares timestamps as strings correctly."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _rfc3339(moment: datetime | None) -> str | None:
    return protocol.format_timestamp(moment) if moment is not None else None


def queue_at_rest(
    paths: Paths, *, held: bool
) -> tuple[QueueStatistics | None, list[InterruptedUpload]]:
    """The queue as its files say, for ``status`` with no mount to ask; None if never used.

    ``held``: a process holds the queue (its uploads are under way, not
    interrupted). Opening the queue this way changes nothing in it.
    """
    if not paths.queue_db.exists():
        return None, []
    with PushQueue(paths.queue_db, paths.queue_dir) as queue:
        statistics = queue.statistics()
        uploads = [
            InterruptedUpload(
                item.filename,
                item.recipient,
                item.size,
                len(queue.known_chunks(item.id)),
                "uploading" if held else "interrupted (resumes at next start)",
            )
            for item in queue.items([ItemState.UPLOADING])
        ]
    return statistics, uploads
