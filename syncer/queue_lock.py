"""The queue's owner: one syncer (a mount's, or ``dockercomms sync``) per identity at a time.

Caveats first:

* A ``flock`` on ``Paths.queue_lock``, taken without waiting: a second owner
  fails at start with a clear error instead of recovering uploads the first is
  still doing.
* :meth:`QueueLock.holder` says who holds it by reading ``/proc/locks`` instead
  of trying the lock: a try, however short, could make a daemon starting at
  that moment fail to take it.
"""

from __future__ import annotations

import os
from pathlib import Path

import filelock

from dockercomms.core.errors import ConfigError

PROC_LOCKS = Path("/proc/locks")


class QueueLock:
    """The lock on one identity's push queue."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = filelock.FileLock(path, timeout=0)

    def acquire(self) -> None:
        """Take it now, or raise :class:`ConfigError` saying another syncer has it."""
        try:
            self._lock.acquire()
        except filelock.Timeout as exc:
            raise ConfigError(
                f"another dockercomms sync is running for this identity ({self.path})"
            ) from exc

    def release(self) -> None:
        """Let it go."""
        self._lock.release()

    def holder(self, locks: Path = PROC_LOCKS) -> int | None:
        """The PID holding the lock (read from ``/proc/locks``), or None."""
        try:
            st = self.path.stat()
            table = locks.read_text()
        except OSError:
            return None
        wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in table.splitlines():
            parts = line.split()
            if len(parts) >= 6 and "->" not in parts and parts[5] == wanted:
                return int(parts[4])
        return None
