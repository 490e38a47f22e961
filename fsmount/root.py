"""The mount's root: ``outbox/``, ``inbox/``, ``sent/``, ``.status``, and its control attributes.

Caveats first:

* The root's entries are fixed; nothing can be created, renamed or removed there.
* ``getfattr -n user.dockercomms.status MOUNTPOINT`` is the ``.status`` document;
  ``setfattr -n user.dockercomms.refresh MOUNTPOINT`` polls the inbox now and
  returns when that poll is done; any other attribute on the root is ``ENOTSUP``.
"""

from __future__ import annotations

import errno

from dockercomms.fsmount import xattrs
from dockercomms.fsmount.inbox_view import InboxView
from dockercomms.fsmount.inodes import Directory, InodeTable, fuse_error
from dockercomms.fsmount.status import StatusReport


class MountRoot(Directory):
    """The mount's root directory."""

    def __init__(self, table: InodeTable, report: StatusReport, inbox: InboxView) -> None:
        super().__init__("", table, 0o755)
        self.report = report
        self.inbox = inbox

    async def xattrs(self) -> dict[str, bytes]:
        return {xattrs.STATUS: await self.report.json_bytes()}

    async def setxattr(self, name: str, value: bytes) -> None:
        if name != xattrs.REFRESH:
            raise fuse_error(errno.ENOTSUP)
        await self.inbox.refresh()
