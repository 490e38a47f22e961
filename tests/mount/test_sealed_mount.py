"""A sealed message (SPEC 9) through a real mount: listed by its real name, read, described.

One mount for bob; alice's sealed message is built from the spec
(``tests.sealed_forge``) on the shared embedded registry.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tests.fsmount_fixtures import make_identities, mounted, scratch_root, trust, wait_for
from tests.sealed_forge import age_keys, sealer

ALICE = "alice@example.com"
BOB = "bob@example.com"
CHUNK = 64 * 1024


def test_a_sealed_message_reads_through_the_mount_and_says_it_was_sealed() -> None:
    root = Path(tempfile.mkdtemp(prefix="fsmount-sealed-", dir=scratch_root()))
    try:
        people = make_identities(root, [ALICE, BOB], data_home=root / "xdg-data")
        alice, bob = people[ALICE], people[BOB]
        trust(bob, alice)
        data = os.urandom(3 * CHUNK + 17)
        sealer(alice).send(data, [BOB], [age_keys(bob).recipient], chunk_bytes=CHUNK)  # type: ignore[arg-type]
        with mounted(bob, root / "mnt-bob", "--no-receipts") as mount:
            path = mount / f"inbox/{ALICE}/report.pdf"
            wait_for("the sealed message in bob's inbox", path.exists, poke=mount.refresh)
            assert os.getxattr(path, "user.dockercomms.sealed") == b"true"
            with path.open("rb") as handle:
                handle.seek(2 * CHUNK + 5)
                assert handle.read(100) == data[2 * CHUNK + 5 : 2 * CHUNK + 105]
            assert path.read_bytes() == data
            assert not (mount / "inbox/.rejected").exists() or not os.listdir(
                mount / "inbox/.rejected"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
