"""``dockercomms demo``: two throw-away identities exchange a signed file, end to end.

It uses the same engine and the embedded registry as real use, in a temporary
folder, so a new user sees the whole path (sign, push, list, verify, receive,
receipt) work on their machine before configuring anything. Every CLI call
builds its parser, so the engine is imported only when the demo runs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from dockercomms.cli.output import emit
from dockercomms.cli.parsing import CommandParser, Subcommands

if TYPE_CHECKING:
    from dockercomms.core.workspace import Workspace


def _identity(root: Path, name: str, data_home: Path) -> Workspace:
    from dockercomms.core.cards import age_identity
    from dockercomms.core.config import Settings, save_settings
    from dockercomms.core.keys import signing_key
    from dockercomms.core.paths import resolve_paths
    from dockercomms.core.workspace import Workspace

    paths = resolve_paths({"DOCKERCOMMS_HOME": str(root / name), "XDG_DATA_HOME": str(data_home)})
    settings = Settings(identity=name)
    save_settings(paths, settings)
    signing_key(paths.key_file, create=True)
    workspace = Workspace(paths, settings)
    age_identity(workspace)
    return workspace


def _trust(truster: Workspace, other: Workspace) -> None:
    """What ``trust add NAME --card FILE`` does with the other's contact card."""
    from dockercomms.core.cards import my_card
    from dockercomms.core.contact_card import trust_card

    policy = truster.trust_policy()
    trust_card(policy, other.identity, my_card(other))
    policy.save(truster.paths.trust_file)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo and print each step."""
    from dockercomms.core.outbox import SendRequest
    from dockercomms.core.trust import TrustPolicy

    steps: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dockercomms-demo-") as tmp:
        root = Path(tmp)
        data_home = root / "data"
        alice = _identity(root, "alice@example.com", data_home)
        bob = _identity(root, "bob@example.com", data_home)
        for truster, other in ((alice, bob), (bob, alice)):
            _trust(truster, other)
        steps.append(
            f"created alice and bob, each trusting the other's contact card (signing key "
            f"and age key), in {root}"
        )
        note = root / "hello.txt"
        note.write_text("Hello Bob, this file was signed by Alice and verified by you.\n")
        with alice.outbox() as outbox:
            sent = outbox.send(SendRequest(path=note, recipient=bob.identity))
        if not sent.sealed:
            raise SystemExit("demo failed: the message was not sealed")
        steps.append(
            f"alice sealed {sent.filename} to bob and herself and sent it as {sent.tag} "
            f"({sent.digest[:19]}...)"
        )
        with bob.inbox() as inbox:
            outcomes = inbox.receive_new(root / "bob-inbox")
        for outcome in outcomes:
            if outcome.path is None:
                raise SystemExit(f"demo failed: {outcome.error}")
            steps.append(
                f"bob verified the signature ({outcome.signer_identity}), opened the sealed "
                f"message, checked every chunk, then wrote {outcome.path.name}: "
                f"{outcome.path.read_text().strip()!r}"
            )
            steps.append(f"bob sent a signed receipt {outcome.receipt}")
        policy = TrustPolicy.load(bob.paths.trust_file)
        steps.append(f"bob trusts: {', '.join(e.name for e in policy.entries)}")
    steps.append("next: dockercomms init --identity YOU, then send/recv or mount (see README)")
    emit(args, steps, lambda s: "\n".join(f"- {line}" for line in s))
    return 0


def add_parsers(sub: Subcommands, common: CommandParser) -> None:
    """Register ``demo``."""
    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="watch two identities exchange a file",
        description="Create two throw-away identities in a temporary folder, alice and bob,\n"
        "each trusting the other's contact card, and let alice send bob a signed, sealed\n"
        "file through\n"
        "the embedded registry: signing, listing, verifying, receiving and the signed\n"
        "receipt, the same engine real use runs. Nothing of yours is touched.",
        examples=["dockercomms demo"],
    )
    demo.set_defaults(func=cmd_demo)
