"""Extended attributes outside ``user.*`` are not this filesystem's (issue #15, item 3).

``ls -l`` asks every file for ``security.selinux`` and its POSIX ACL. Answered
EOPNOTSUPP (coreutils then stops asking for the whole filesystem) and without
computing the file's own attributes (a database read per inbox file), so ``ls -l``
of 10,000 messages is not 20,000 slow requests.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import trio

from dockercomms.fsmount.inbox_view import InboxView
from tests.conftest import Party
from tests.fs_api.kernel import CTX, drop_folder, fails_with, lookup


def test_foreign_xattr_names_are_not_supported_and_cost_no_lookup(
    embedded_pair: tuple[Party, Party], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = embedded_pair
    note = tmp_path / "note.txt"
    note.write_text("for bob\n")
    alice.ok("send", str(note), "-r", bob.name)
    asked: list[str] = []
    real = InboxView.xattrs_of

    async def counted(self: InboxView, item: object) -> dict[str, bytes]:
        asked.append("xattrs")
        return await real(self, item)  # type: ignore[arg-type]

    monkeypatch.setattr(InboxView, "xattrs_of", counted)

    async def body() -> None:
        async with drop_folder(bob.workspace()) as folder:
            ops = folder.operations
            await folder.inbox.poll_once()
            inode = (await lookup(ops, f"inbox/{alice.name}/note.txt")).st_ino
            for name in (b"security.selinux", b"system.posix_acl_access", b"trusted.x"):
                await fails_with(errno.EOPNOTSUPP, lambda n=name: ops.getxattr(inode, n, CTX))
            assert asked == []
            assert await ops.getxattr(inode, b"user.dockercomms.verified", CTX) == b"true"
            assert asked == ["xattrs"]

    trio.run(body)
