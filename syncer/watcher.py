"""Watching the spool: a file is queued once it is complete, and only then.

Caveats first:

* "Complete" means: a writer closed it or it was moved in (or a scan found it),
  its size and mtime have not changed for ``settle_seconds``, and nobody has it
  open for writing. The last check takes a Linux read lease, which the kernel
  refuses while any writer has the file open; where leases are not available
  (another owner without CAP_LEASE, some network filesystems) the settle time
  alone decides.
* Events only speed things up. A full scan at start picks up files left from
  before a crash, and a rescan every ``rescan_seconds`` catches anything an
  overflowing inotify queue dropped.
* Where a file goes is ``core.outbox.route``'s one rule (the mount's ``outbox/``
  asks it too): ``outbox/<recipient>/.../FILE`` goes to ``recipient`` under FILE's
  own name (``recipient`` may be a group: the worker expands it, and seals to
  every member once); a file directly in the outbox goes to the default recipient. Without
  one it stays where it is and is reported (``statistics().unroutable``), not sent.
* Editor and download temp files (``is_temporary_name``) and anything in a
  hidden folder are never sent; they are still there when the writer renames
  them to their final name, which is what gets queued.
* A settled file is opened once, without following links, and everything after
  that (the writers probe, the checks, the move into the queue) uses that
  descriptor (``queue.SourceFile``): in a shared outbox another user may swap the
  name for a symlink to a private file at any moment. Symlinks, special files,
  hard-linked files and files of other users are refused.
* Refusals (and why) are kept, the last :data:`REFUSALS_KEPT`, in
  :class:`Refusals` for ``status`` and desktop notifications, not only logged.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from watchdog.events import FileClosedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from dockercomms.core.outbox import is_temporary_name, route
from dockercomms.core.status import Refusal, WatcherStatistics
from dockercomms.core.untrusted import shown
from dockercomms.syncer.queue import PushQueue, QueueItem, RefusedFile, SourceFile

log = logging.getLogger(__name__)


class _StopRaceFilter(logging.Filter):
    """Drops watchdog's ERROR for an event that races ``Observer.stop()``.

    watchdog logs it when its emitter thread reads one last event while being
    stopped; nothing is lost (the next start scans the spool), so it is noise
    that would read like a failure in the daemon's log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in str(record.msg)


logging.getLogger("watchdog.observers.inotify").addFilter(_StopRaceFilter())

#: Refusals kept for ``status`` and notifications (older ones are only in the log).
REFUSALS_KEPT = 20


class Refusals:
    """The last :data:`REFUSALS_KEPT` refusals, newest last; thread-safe.

    Names and reasons may come from other users of a shared outbox: they are
    escaped (``core.untrusted.shown``) when recorded.
    """

    def __init__(self, kept: int = REFUSALS_KEPT) -> None:
        self.kept = kept
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], Refusal] = OrderedDict()
        self._seq = 0

    def add(self, path: str, reason: str) -> bool:
        """Record a refusal; False if the same one was already kept (it moves to the end)."""
        key = (shown(path), shown(reason))
        now = datetime.now(UTC).replace(microsecond=0)
        with self._lock:
            known = self._entries.pop(key, None)
            if known is not None:
                self._entries[key] = Refusal(*key, now, known.times + 1, known.seq)
                return False
            self._seq += 1
            self._entries[key] = Refusal(*key, now, seq=self._seq)
            while len(self._entries) > self.kept:
                self._entries.popitem(last=False)
            return True

    def recent(self) -> list[Refusal]:
        """Oldest first."""
        with self._lock:
            return list(self._entries.values())


@dataclass
class _Pending:
    """A candidate file: when it last changed, and what it looked like then."""

    changed_at: float
    signature: tuple[int, int] | None


class OutboxWatcher:
    """Feeds complete files from ``spool_dir`` into ``queue``.

    Two threads: watchdog's observer only records events; one settle thread
    decides completeness and enqueues, so intake is never concurrent with itself.
    """

    def __init__(
        self,
        spool_dir: Path,
        queue: PushQueue,
        *,
        default_recipient: str | None,
        settle_seconds: float = 0.5,
        rescan_seconds: float = 30.0,
    ) -> None:
        # Absolute, so event paths and scan paths compare equal however it was given.
        self.spool_dir = spool_dir.absolute()
        self.queue = queue
        self.refusals = Refusals()
        self.default_recipient = default_recipient
        self.settle_seconds = settle_seconds
        self.rescan_seconds = rescan_seconds
        self._lock = threading.Lock()
        self._intake = threading.Lock()
        self._pending: dict[Path, _Pending] = {}
        self._dirs: set[Path] = set()
        self._unroutable: dict[str, str] = {}
        self._last_scan_at: datetime | None = None
        self._last_error: str | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._observer: Any = None
        self._thread: threading.Thread | None = None

    # --- lifetime -------------------------------------------------------------------

    def start(self) -> None:
        """Start watching; the first full scan runs right away on the settle thread."""
        if self._thread is not None:
            raise RuntimeError("watcher already started")
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        observer = Observer()
        observer.schedule(_SpoolEvents(self), str(self.spool_dir), recursive=True)
        # Events first, then the scan: a file written in between is seen by one of them.
        observer.start()
        self._observer = observer
        self._thread = threading.Thread(target=self._run, name="outbox-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop both threads and wait for them (a scan in progress finishes its file)."""
        self._stopping.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
            self._observer = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        next_scan = 0.0
        while not self._stopping.is_set():
            try:
                if time.monotonic() >= next_scan:
                    self.scan()
                    next_scan = time.monotonic() + self.rescan_seconds
                self._settle()
            except Exception as exc:
                # Never let one bad file or a transient disk error end the watching.
                log.exception("outbox watcher: %s", exc)
                self._last_error = f"{type(exc).__name__}: {exc}"
            self._wake.wait(self._next_wait())
            self._wake.clear()

    def _next_wait(self) -> float:
        with self._lock:
            if not self._pending and not self._dirs:
                return min(self.rescan_seconds, 5.0)
        return max(self.settle_seconds / 4, 0.05)

    # --- events (observer thread) ---------------------------------------------------

    def note(self, path: Path) -> None:
        """Something happened to ``path``: (re)start its settle time."""
        try:
            st = os.lstat(path)
        except OSError:
            return
        if stat.S_ISDIR(st.st_mode):
            self.note_dir(path)
            return
        with self._lock:
            self._pending[path] = _Pending(time.monotonic(), _signature(st))
        self._wake.set()

    def note_dir(self, path: Path) -> None:
        """A folder appeared (moved in): scan it on the settle thread."""
        with self._lock:
            self._dirs.add(path)
        self._wake.set()

    def forget(self, path: Path) -> None:
        """``path`` was deleted or moved out of the spool."""
        with self._lock:
            self._pending.pop(path, None)
            self._unroutable.pop(str(path), None)

    # --- intake (settle thread, or a caller of scan) --------------------------------

    def scan(self) -> list[QueueItem]:
        """Walk the whole spool: queue every complete file, watch the rest."""
        queued: list[QueueItem] = []
        seen: set[str] = set()
        with self._intake:
            for path in self._walk(self.spool_dir):
                seen.add(str(path))
                queued += self._consider(path, found_by_scan=True)
            with self._lock:
                for gone in set(self._unroutable) - seen:
                    self._unroutable.pop(gone, None)
            self._last_scan_at = datetime.now(UTC)
        return queued

    def _settle(self) -> list[QueueItem]:
        queued: list[QueueItem] = []
        with self._lock:
            dirs, self._dirs = self._dirs, set()
            now = time.monotonic()
            due = [
                path
                for path, pending in self._pending.items()
                if now - pending.changed_at >= self.settle_seconds
            ]
        with self._intake:
            for directory in dirs:
                for path in self._walk(directory):
                    queued += self._consider(path, found_by_scan=True)
            for path in due:
                queued += self._consider(path, found_by_scan=False)
        return queued

    def _walk(self, top: Path) -> list[Path]:
        """Regular files under ``top``, skipping hidden folders."""
        found: list[Path] = []
        for root, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not is_temporary_name(d)]
            found += [Path(root) / name for name in files]
        return found

    def _consider(self, path: Path, *, found_by_scan: bool) -> list[QueueItem]:
        """Queue ``path`` if it is complete; otherwise keep (or stop) watching it."""
        route = self._route(path)
        if route is None:
            self._drop(path)
            return []
        recipient, filename = route
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._drop(path)
            return []
        if not stat.S_ISREG(st.st_mode):
            if not stat.S_ISDIR(st.st_mode):
                kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                self.refuse(path, f"is {kind}; only regular files are sent")
            self._drop(path)
            return []
        signature = _signature(st)
        now = time.monotonic()
        with self._lock:
            pending = self._pending.get(path)
            if pending is None:
                # A scan has no close event to go by: an old enough mtime must do.
                old_enough = time.time() - st.st_mtime >= self.settle_seconds
                if not (found_by_scan and old_enough):
                    self._pending[path] = _Pending(now, signature)
                    return []
            elif pending.signature != signature:
                self._pending[path] = _Pending(now, signature)
                return []
            elif now - pending.changed_at < self.settle_seconds:
                return []
        if recipient is None:
            self._report_unroutable(path)
            self._drop(path)
            return []
        try:
            source = SourceFile(path, root=self.spool_dir)
        except FileNotFoundError:
            self._drop(path)
            return []
        except RefusedFile as exc:
            self.refuse(path, exc.reason)
            self._drop(path)
            return []
        except OSError as exc:
            return self._failed(path, exc)
        with source:
            # From here on only the descriptor counts: the name may be swapped any time.
            if _signature(source.stat) != signature or _has_writers(source.fd):
                with self._lock:
                    self._pending[path] = _Pending(time.monotonic(), _signature(source.stat))
                return []
            self._drop(path)
            try:
                item = self.queue.enqueue_source(source, recipient, filename)
            except FileNotFoundError:
                return []
            except (OSError, ValueError) as exc:
                return self._failed(path, exc)
        return [item]

    def _failed(self, path: Path, error: Exception) -> list[QueueItem]:
        # A shared outbox's names are anyone's: escaped before a log line or status.
        self._last_error = shown(f"{path}: {error}", limit=1000)
        log.warning("cannot queue %s", self._last_error)
        return []

    def refuse(self, path: Path, reason: str) -> None:
        """Keep (and, the first time, log) why ``path`` is not sent."""
        try:
            rel = str(path.relative_to(self.spool_dir))
        except ValueError:
            rel = str(path)
        if self.refusals.add(rel, reason):
            log.warning("outbox/%s refused: %s", shown(rel), reason)

    def _route(self, path: Path) -> tuple[str | None, str] | None:
        """(recipient, filename) for a file in the spool; None if it is not to be sent."""
        try:
            relative = path.relative_to(self.spool_dir)
        except ValueError:
            return None
        where = route(relative, self.default_recipient)
        return None if where is None else (where.recipient, where.filename)

    def _report_unroutable(self, path: Path) -> None:
        why = (
            f"{path.name} is directly in the outbox and no default recipient is set; "
            "use --to RECIPIENT or move it into outbox/<recipient>/"
        )
        with self._lock:
            if str(path) in self._unroutable:
                return
            self._unroutable[str(path)] = why
        log.error("%s", why)
        self.refusals.add(
            path.name, "no default recipient; use --to RECIPIENT or outbox/<recipient>/"
        )

    def _drop(self, path: Path) -> None:
        with self._lock:
            self._pending.pop(path, None)

    def statistics(self) -> WatcherStatistics:
        """Pending and unroutable files, last scan, last error."""
        with self._lock:
            pending = len(self._pending) + len(self._dirs)
            unroutable = dict(self._unroutable)
        return WatcherStatistics(
            pending, unroutable, self._last_scan_at, self._last_error, self.refusals.recent()
        )


class _SpoolEvents(FileSystemEventHandler):
    """Turns watchdog events into ``note``/``forget``; the settle thread does the rest."""

    def __init__(self, watcher: OutboxWatcher) -> None:
        self._watcher = watcher

    def on_closed(self, event: FileClosedEvent) -> None:
        """IN_CLOSE_WRITE: a writer is done (the usual way a file becomes complete)."""
        self._watcher.note(_path(event.src_path))

    def on_created(self, event: FileSystemEvent) -> None:
        """A new file starts its settle time (or a new folder is scanned)."""
        self._watcher.note(_path(event.src_path))

    def on_modified(self, event: FileSystemEvent) -> None:
        """Still being written: restart the settle time."""
        if not event.is_directory:
            self._watcher.note(_path(event.src_path))

    def on_deleted(self, event: FileSystemEvent) -> None:
        """Gone before it settled."""
        self._watcher.forget(_path(event.src_path))

    def on_moved(self, event: FileSystemEvent) -> None:
        """Renamed to its final name, or moved in; the old name is forgotten."""
        self._watcher.forget(_path(event.src_path))
        self._watcher.note(_path(event.dest_path))


def _path(raw: bytes | str) -> Path:
    return Path(os.fsdecode(raw))


def _signature(st: os.stat_result) -> tuple[int, int]:
    return (st.st_size, st.st_mtime_ns)


def _has_writers(fd: int) -> bool:
    """True if some process has the file open for writing (Linux read-lease probe).

    ``fd`` must be read-only; the kernel refuses a read lease while any writable
    descriptor of the file exists. Where leases are not available the settle time
    alone decides (False).
    """
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EBUSY)
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False
