"""``sync``: keep a plain outbox folder sent and an inbox folder filled, without FUSE.

Without ``--once`` it runs until SIGTERM or SIGINT, then lets the upload in
flight finish (bounded by ``--drain``) and exits 0; whatever is still queued is
sent by the next run. ``--status-file`` is rewritten atomically every second
with the syncer's statistics as JSON (``core.status``). The syncer (watchdog, the queue,
the engine) is imported only when ``sync`` runs, not by every CLI call that
builds this parser.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dockercomms.cli.messaging import recv_text
from dockercomms.cli.output import emit
from dockercomms.cli.parsing import CommandParser, Subcommands, name_argument
from dockercomms.cli.registry_flags import registry_options
from dockercomms.core.errors import exit_code_for

if TYPE_CHECKING:
    from types import FrameType

    from dockercomms.core.status import SyncerStatistics
    from dockercomms.syncer.syncer import Syncer

STATUS_EVERY_SECONDS = 1.0


def cmd_sync(args: argparse.Namespace) -> int:
    """Run the syncer once (``--once``) or until a signal."""
    from dockercomms.core.workspace import Workspace
    from dockercomms.syncer.syncer import Syncer

    workspace = Workspace.load()
    syncer = Syncer(
        workspace,
        registry_options(args),
        spool_dir=Path(args.outbox),
        inbox_dir=Path(args.inbox) if args.inbox else None,
        default_recipient=args.to,
        poll_seconds=args.poll,
        settle_seconds=args.settle,
    )
    try:
        if args.once:
            return _once(args, syncer)
        return _until_signalled(args, syncer)
    finally:
        syncer.close()


def _once(args: argparse.Namespace, syncer: Syncer) -> int:
    summary = syncer.run_once()
    if args.status_file:
        _write_status(Path(args.status_file), syncer.statistics())
    verbose = getattr(args, "verbose", 0) > 0
    emit(args, summary.to_json(), lambda result: _once_text(result, verbose=verbose))
    # Errors hold this run's news only: a message rejected by an earlier run is none.
    return exit_code_for(summary.errors[0]) if summary.errors else 0


def _once_text(result: dict[str, Any], *, verbose: bool = False) -> str:
    lines = [f"sent {i['filename']} to {i['recipient']} ({i['tag']})" for i in result["sent"]]
    for i in result["failed"]:
        lines.append(f"FAILED {i['filename']} to {i['recipient']}: {i['last_error']}")
    for i in result["waiting"]:
        why = f": {i['last_error']}" if i["last_error"] else ""
        lines.append(f"waiting {i['filename']} to {i['recipient']}{why}")
    received = [r for r in result["received"] if r["status"] != "already-received"]
    if received:
        lines.append(recv_text(received, verbose=verbose))
    shown = {i["last_error"] for i in result["failed"] + result["waiting"]}
    shown |= {r.get("error") for r in result["received"]}
    lines += [f"error: {e}" for e in result["errors"] if e not in shown]
    return "\n".join(lines) or "nothing to do"


def _until_signalled(args: argparse.Namespace, syncer: Syncer) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        syncer.start()
        status_file = Path(args.status_file) if args.status_file else None
        while True:
            if status_file is not None:
                _write_status(status_file, syncer.statistics())
            if stop.wait(STATUS_EVERY_SECONDS):
                break
        syncer.stop(drain_timeout=args.drain)
        if status_file is not None:
            _write_status(status_file, syncer.statistics())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _write_status(path: Path, statistics: SyncerStatistics) -> None:
    from dockercomms.core.status import to_json
    from dockercomms.core.trust import write_atomic

    document = json.dumps(to_json(statistics), indent=2)
    write_atomic(path, document.encode() + b"\n", mode=0o644)


def add_parsers(
    sub: Subcommands,
    common: CommandParser,
    registry: CommandParser,
) -> None:
    """Register ``sync``."""
    s = sub.add_parser(
        "sync",
        parents=[common, registry],
        help="send files dropped into an outbox folder, receive into an inbox folder",
        description="The drop folder without FUSE, on plain folders. outbox/NAME/FILE is\n"
        "sent to NAME (a folder made directly in the outbox is a recipient's name); a\n"
        "file directly in the outbox goes to --to. A file is moved out of the outbox\n"
        "into the durable queue (state dir) as soon as it is picked up, and its bytes\n"
        "are deleted once sent: keep your own copy. A crash or a dead registry never\n"
        "loses a queued file or sends it twice. Editor and download temp files are\n"
        "never sent. Without --once it runs until SIGTERM or Ctrl-C.",
        examples=[
            "dockercomms sync --outbox ~/Outbox --inbox ~/Inbox --to bob@example.com",
            "dockercomms sync --outbox ~/Outbox --once --json",
        ],
    )
    s.add_argument(
        "--outbox", required=True, metavar="DIR", help="folder to watch (created if missing)"
    )
    s.add_argument(
        "--inbox", metavar="DIR", help="folder to receive into (default: do not receive)"
    )
    s.add_argument(
        "--to",
        type=name_argument("recipient"),
        metavar="RECIPIENT",
        help="recipient for files directly in the outbox (default: none; they wait)",
    )
    s.add_argument(
        "--poll",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between inbox polls (default: 5)",
    )
    s.add_argument("--once", action="store_true", help="sync once, print a summary and exit")
    s.add_argument(
        "--status-file",
        metavar="FILE",
        help="keep a JSON status in this file, rewritten every second (default: none)",
    )
    s.add_argument(
        "--settle",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="seconds a closed file must stay unchanged before it is sent (default: 0.5)",
    )
    s.add_argument(
        "--drain",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds to let an upload in flight finish on shutdown (default: 30)",
    )
    s.set_defaults(func=cmd_sync)
