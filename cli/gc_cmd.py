"""``gc``: delete my expired messages from the registry (``core.garbage``).

A registry that does not allow deletion is a warning, exit 0. Every CLI call
builds this parser, so the garbage collector is imported when ``gc`` runs.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from dockercomms.cli.output import emit, warn
from dockercomms.cli.parsing import CommandParser, Subcommands
from dockercomms.cli.registry_flags import registry_options
from dockercomms.core import protocol
from dockercomms.core.untrusted import shown

if TYPE_CHECKING:
    from dockercomms.core.garbage import GcReport


def cmd_gc(args: argparse.Namespace) -> int:
    """Delete my expired messages (``--dry-run``: only say what would go)."""
    from dockercomms.core.garbage import GarbageCollector
    from dockercomms.core.workspace import Workspace

    workspace = Workspace.load()
    report = GarbageCollector(workspace, registry_options(args)).run_once(dry_run=args.dry_run)
    if report.unsupported:
        warn(
            f"dockercomms: warning: the registry does not allow deletion ({report.unsupported});"
            " nothing more was deleted"
        )
    for text in report.warnings:
        warn(f"dockercomms: warning: {text}")
    emit(args, report.to_json(), lambda _: _gc_text(report))
    return 1 if report.errors else 0


def _plural(kind: str, n: int) -> str:
    if n == 1:
        return kind
    return "indexes" if kind == "index" else f"{kind}s"


def _gc_text(report: GcReport) -> str:
    verb = "would delete" if report.dry_run else "deleted"
    done = report.planned if report.dry_run else report.deleted
    lines = [f"checked {report.checked} messages; {len(report.expired)} of mine expired"]
    for message in report.expired:
        parts = [d for d in done if d.message == message.digest]
        counts: dict[str, int] = {}
        for deletion in parts:
            counts[deletion.kind] = counts.get(deletion.kind, 0) + 1
        what = ", ".join(f"{n} {_plural(kind, n)}" for kind, n in counts.items())
        expired = protocol.format_timestamp(message.expires_at)
        lines.append(
            f"{verb} {shown(message.filename)} to {shown(message.recipient)} "
            f"(expired {expired}): {what or 'nothing yet'}"
        )
    leftovers = [d for d in done if d.message not in {e.digest for e in report.expired}]
    if leftovers:
        lines.append(f"{verb} {len(leftovers)} items an interrupted run had left")
    if report.shared_blobs:
        lines.append(f"kept {report.shared_blobs} chunk blobs other messages still use")
    for tag in report.not_mine:
        lines.append(f"left alone (claims to be mine, not signed by me): {tag}")
    if report.not_mine:
        lines.append("(gc deletes only what verifies as mine under my trust policy, trust.json)")
    lines += [f"error: {error}" for error in report.errors]
    return "\n".join(lines)


def add_parsers(
    sub: Subcommands,
    common: CommandParser,
    registry: CommandParser,
) -> None:
    """Register ``gc``."""
    g = sub.add_parser(
        "gc",
        parents=[common, registry],
        help="delete my expired messages from the registry",
        description="Delete from the registry the messages I sent whose time to live has\n"
        "passed, with their signature bundles and receipts. Only what verifies as mine\n"
        "under my trust policy is touched. The mount's daemon runs this hourly.",
        examples=["dockercomms gc --dry-run", "dockercomms gc"],
    )
    g.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    g.set_defaults(func=cmd_gc)
