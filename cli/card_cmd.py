"""``card``: my signed card in the repository (SPEC 9.1), published again on demand.

``init`` and ``key rotate --age`` publish it; this is for a new repository, a
card lost to a registry's clean-up, or an ``init`` that could not reach the
registry. ``status`` says whether it is there and current. Every CLI call
builds this parser, so the engine is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys

from dockercomms.cli.output import emit
from dockercomms.cli.parsing import CommandParser, Subcommands
from dockercomms.cli.registry_flags import registry_options


def cmd_card_publish(args: argparse.Namespace) -> int:
    """Sign and push my card with my current age key."""
    from dockercomms.core import protocol
    from dockercomms.core.cards import publish_my_card
    from dockercomms.core.workspace import Workspace

    workspace = Workspace.load()
    workspace.identity_token = args.identity_token
    workspace.interactive = sys.stdin.isatty()
    published = publish_my_card(workspace, registry_options(args))
    result = {
        "tag": published.tag,
        "digest": published.digest,
        "age_recipient": published.age_recipient,
        "created_at": protocol.format_timestamp(published.created_at),
        "repository": published.repository,
    }
    emit(
        args,
        result,
        lambda r: (
            f"published my card {r['tag']} to {r['repository']} "
            f"(age key {r['age_recipient']}, {r['created_at']})"
        ),
    )
    return 0


def add_parsers(sub: Subcommands, common: CommandParser, registry: CommandParser) -> None:
    """Register ``card publish``."""
    card = sub.add_parser(
        "card",
        help="my signed card in the repository",
        description="My card in the repository: my name and age key, signed like a\n"
        "message, so that peers who trust my signer can seal to me (SPEC 9.1).",
    ).add_subparsers(dest="card_cmd", required=True, metavar="ACTION")
    c = card.add_parser(
        "publish",
        parents=[common, registry],
        help="publish my card again",
        description="Sign and push my card with my current age key, e.g. after moving to\n"
        "another repository. 'dockercomms status' says whether it is published and\n"
        "current.",
        examples=["dockercomms card publish", "dockercomms card publish --repo HOST/NAME"],
    )
    c.add_argument(
        "--identity-token",
        metavar="JWT",
        help="OIDC token for keyless signing (default: $SIGSTORE_ID_TOKEN, then the CI's "
        "ambient token, then a browser login on a terminal)",
    )
    c.set_defaults(func=cmd_card_publish)
