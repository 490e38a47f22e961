"""Where an identity is mounted: ``Paths.mount_record``, written by the running mount.

Caveats first:

* One mount per identity (the outbox queue is locked), so one record per state
  dir. The daemon writes it once its mount answers and removes it when it ends;
  a crash (``kill -9``) leaves it behind, so a record counts only while its PID
  still runs a dockercomms mount (``/proc/PID/cmdline``), which also rules out a
  PID recycled by any other program.
* Readers: a second ``dockercomms mount`` of the same identity (to refuse with
  "already mounted at ..." before it creates anything), and ``dockercomms
  status`` (to find the mount whatever ``--repo`` it was started with).
* The record is the user's own file in the user's own state dir; it is still
  parsed with the bounded parser and its fields are checked, since a torn or
  edited file must not break either reader.
* Imports only the standard library and ``core``: ``status`` runs it without
  loading FUSE or trio.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from dockercomms.core.errors import DockerCommsError
from dockercomms.core.trust import write_atomic
from dockercomms.core.untrusted import parse_json_object

_MAX_RECORD_BYTES = 64 * 1024


@dataclass(frozen=True)
class MountRecord:
    """A running mount of this identity.

    Attributes:
        mountpoint: absolute path it is mounted on.
        pid: the daemon's process id.
        started_at: RFC 3339 time the mount came up.
    """

    mountpoint: Path
    pid: int
    started_at: str

    @classmethod
    def read(cls, path: Path) -> MountRecord | None:
        """The record in ``path`` (``Paths.mount_record``), or None (none, or unreadable)."""
        try:
            raw = path.read_bytes()
            doc = parse_json_object(raw, path.name, max_bytes=_MAX_RECORD_BYTES)
            pid = doc["pid"]
            if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
                return None
            return cls(Path(str(doc["mountpoint"])), pid, str(doc.get("started_at", "")))
        except (OSError, KeyError, DockerCommsError):
            return None

    @classmethod
    def live(cls, path: Path) -> MountRecord | None:
        """The record, if its daemon still runs."""
        record = cls.read(path)
        return record if record is not None and record.running() else None

    def running(self) -> bool:
        """Its PID is alive (not a zombie) and runs ``dockercomms ... mount``."""
        try:
            stat_fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            argv = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            return False
        ours = b"mount" in argv and any(b"dockercomms" in word for word in argv)
        return stat_fields[0] != "Z" and ours

    def write(self, path: Path) -> None:
        """Replace the record in ``path`` atomically (0600)."""
        doc = {"mountpoint": str(self.mountpoint), "pid": self.pid, "started_at": self.started_at}
        write_atomic(path, json.dumps(doc).encode() + b"\n", mode=0o600)

    @classmethod
    def remove_mine(cls, path: Path, pid: int) -> None:
        """Remove the record if ``pid`` wrote it (a newer mount may have replaced it)."""
        record = cls.read(path)
        if record is not None and record.pid == pid:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
