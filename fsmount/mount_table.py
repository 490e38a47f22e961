"""Which dockercomms file systems are mounted, read from ``/proc/self/mountinfo``.

Caveats first:

* Reading ``mountinfo`` never touches a FUSE file system, so it is safe from the
  daemon itself and while a mount hangs. Anything that *does* go through a mount
  (``stat``, ``open``) must never run in the daemon that serves it: a thread of
  the daemon blocked on its own mount when the daemon is killed keeps the
  ``/dev/fuse`` descriptor open in a half-dead process, and the mount, and
  every process that touches it, hangs until the connection is aborted by hand.
* Any user can mount a FUSE file system called ``dockercomms`` and make it say
  anything; :func:`dockercomms_mounts` with ``uid`` keeps only that user's mounts
  (FUSE's ``user_id=`` option).
"""

from __future__ import annotations

import re
from pathlib import Path

MOUNT_FSTYPE = "fuse.dockercomms"
MOUNTINFO = Path("/proc/self/mountinfo")


def dockercomms_mounts(mountinfo: Path = MOUNTINFO, *, uid: int | None = None) -> list[Path]:
    """Mount points of the ``fuse.dockercomms`` file systems this process can see.

    With ``uid``, only those that user mounted.
    """
    found = []
    try:
        text = mountinfo.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        fstype, _, source_and_options = rest.partition(" ")
        if len(parts) < 5 or fstype != MOUNT_FSTYPE:
            continue
        options = source_and_options.rpartition(" ")[2].split(",")
        if uid is not None and f"user_id={uid}" not in options:
            continue
        found.append(Path(_unescape_mountinfo(parts[4])))
    return found


def is_dockercomms_mount(mountpoint: Path, mountinfo: Path = MOUNTINFO) -> bool:
    """Whether ``mountpoint`` (absolute) is a dockercomms mount, without touching it."""
    return mountpoint in dockercomms_mounts(mountinfo)


def _unescape_mountinfo(text: str) -> str:
    """Undo the kernel's ``\\040``-style octal escapes (space, tab, newline, backslash)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)
