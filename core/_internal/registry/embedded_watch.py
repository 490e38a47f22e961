"""A watch on an embedded layout's ``index.json``: a new message is seen without a poll.

Caveats first:

* inotify, through watchdog, on the layout's top folder only (not recursive):
  ``index.json`` is replaced by a rename, so the event is the rename's arrival
  (a move, or a create when it came from ``.uploads/``, which is not watched).
  Blob writes land in ``blobs/`` and are not seen; they matter only once a
  manifest names them, and that is an ``index.json`` change.
* The callback runs on watchdog's thread, once per change and possibly several
  times for one (a send tags a message and attaches its signature): it must be
  cheap and thread-safe, such as setting an event a poller waits on.
* A change made while nobody watched is not replayed: whoever watches also polls
  (at a slower interval), and lists once when the watch starts.
* Local filesystems only: inotify sees no change made on another machine (a
  layout on NFS). That is not a supported place for a layout anyway.
* Importing this module loads watchdog: only code that watches does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

INDEX = "index.json"


class _IndexEvents(FileSystemEventHandler):
    """Forwards events that touch ``index.json``, and no others."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = (event.src_path, getattr(event, "dest_path", ""))
        if any(os.path.basename(os.fsdecode(path)) == INDEX for path in paths if path):
            self._on_change()


class IndexWatch:
    """Calls ``on_change`` after the layout's ``index.json`` changes, until :meth:`stop`."""

    def __init__(self, layout_dir: Path, on_change: Callable[[], None]) -> None:
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.schedule(_IndexEvents(on_change), str(layout_dir), recursive=False)
        self._observer.start()

    def stop(self) -> None:
        """Stop watching and wait for the watcher thread (a few seconds at most)."""
        self._observer.stop()
        self._observer.join(timeout=5.0)

    def __enter__(self) -> IndexWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
