"""``send``, ``recv``, ``verify``, ``ack`` and ``ls``: the engine on the command line.

``send`` and ``recv`` are timed against a one-second floor, so this module's top
imports only what building the parser needs; each command imports the part of
the engine it uses when it runs.
"""

from __future__ import annotations

import argparse
import gc
import logging
import re
import sys
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dockercomms.cli.output import emit
from dockercomms.cli.parsing import CommandParser, Subcommands
from dockercomms.cli.registry_flags import registry_options
from dockercomms.core import protocol
from dockercomms.core.errors import (
    ConfigError,
    exit_code_for,
)
from dockercomms.core.names import check_name

if TYPE_CHECKING:
    from dockercomms.core.workspace import Workspace

log = logging.getLogger(__name__)


def _workspace(args: argparse.Namespace) -> Workspace:
    from dockercomms.core.workspace import Workspace

    workspace = Workspace.load()
    workspace.identity_token = getattr(args, "identity_token", None)
    # A person at a terminal may sign in through the browser; scripts never block on it.
    workspace.interactive = getattr(args, "interactive", False) or sys.stdin.isatty()
    return workspace


def _freeze_startup_objects() -> None:
    """Keep the garbage collector off the ~10^5 objects the imports created.

    A transfer allocates steadily, which triggers full collections; each would
    walk every module-level object for nothing (measured ~0.1-0.2 s per 1 GiB
    receive). ``gc.freeze`` moves what exists now out of the collector's view.
    """
    gc.freeze()


def cmd_send(args: argparse.Namespace) -> int:
    """Send one file to one or more recipients (names or groups), sealed when it can be."""
    from dockercomms.cli.progress import TransferProgress
    from dockercomms.core.outbox import SendRequest

    targets = tuple(check_name(name, "recipient") for name in args.recipient)
    workspace = _workspace(args)
    _freeze_startup_objects()
    path = Path(args.file)
    if not path.is_file():
        raise ConfigError(_unsendable(path))
    request = SendRequest(
        path=path,
        recipients=targets,
        chunk_bytes=args.chunk_bytes or workspace.settings.chunk_bytes,
        compression=args.compress or workspace.settings.compression,
        ttl_seconds=args.ttl_seconds or workspace.settings.ttl_seconds,
        session_id=args.session,
        plaintext=args.plaintext,
    )
    with workspace.outbox(registry_options(args)) as outbox:
        # Resolved before the progress bar: a recipient that cannot be sealed to
        # fails here, with nothing pushed.
        request.plan = outbox.plan(targets, plaintext=args.plaintext)
        with TransferProgress(f"send {path.name}", path.stat().st_size) as progress:
            sent = outbox.send(request, on_progress=progress)
    emit(args, asdict(sent), _sent_text)
    return 0


def _sent_text(sent: dict[str, Any]) -> str:
    lines = [f"message id: {sent['message_id']}", f"sealed: {'yes' if sent['sealed'] else 'no'}"]
    deliveries = sent["deliveries"]
    if len(deliveries) == 1:
        lines += [f"digest: {sent['digest']}", f"tag: {sent['tag']}"]
    else:
        lines += [f"{d['recipient']}: tag {d['tag']} digest {d['digest']}" for d in deliveries]
    return "\n".join(lines)


def _unsendable(path: Path) -> str:
    if not path.exists():
        return f"{path}: no such file"
    if path.is_dir():
        return f"{path} is a folder; send the files in it one at a time"
    return f"{path} is not a regular file"


def parse_since(text: str | None) -> datetime | None:
    """``--since``: RFC 3339, a date, or an age such as ``30m``, ``24h``, ``7d``."""
    if not text:
        return None
    age = re.fullmatch(r"(\d+)([smhd])", text)
    if age:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[age.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: int(age.group(1))})
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"--since: not a time or age: {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def cmd_recv(args: argparse.Namespace) -> int:
    """Verify and materialise every new message to me; report bad ones and go on."""
    from dockercomms.cli.progress import TransferProgress

    workspace = _workspace(args)
    _freeze_startup_objects()
    if args.me and args.me != workspace.identity:
        raise ConfigError(f"--me {args.me!r} is not this identity ({workspace.identity!r})")
    with workspace.inbox(registry_options(args)) as inbox:
        outcomes = inbox.receive_new(
            Path(args.out),
            receipts=args.write_receipt,
            since=parse_since(args.since),
            limit=args.max,
            progress=lambda m: TransferProgress(f"recv {m.filename}", m.total_bytes),
        )
    verbose = getattr(args, "verbose", 0) > 0
    emit(args, [o.to_json() for o in outcomes], lambda rs: recv_text(rs, verbose=verbose))
    # Only this run's news decides: a message rejected before is not a failure again.
    errors = [o.error for o in outcomes if o.error is not None]
    return exit_code_for(errors[0]) if errors else 0


def recv_text(results: list[dict[str, Any]], *, verbose: bool = False) -> str:
    """Human lines for receive outcomes; rejections of earlier runs only counted.

    Shared with ``sync --once``. ``verbose`` lists the earlier rejections too.
    """
    lines = []
    earlier = 0
    for r in results:
        if r["status"] == "received":
            lines.append(f"received {r['filename']} from {r['sender']} -> {r['path']}")
        elif r["status"] == "rejected":
            lines.append(f"REJECTED {r['tag']}: {r['error']}")
        elif r["status"] == "deferred":
            lines.append(f"deferred {r['tag']} (will retry): {r['error']}")
        elif r["status"] == "rejected-before":
            earlier += 1
            if verbose:
                lines.append(f"rejected before {r['tag']}: {r['error']}")
    if earlier and not verbose:
        lines.append(f"{earlier} rejected before (not shown again; -v or --json lists them)")
    return "\n".join(lines) or "nothing new"


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a message or receipt by digest: manifest, signature, signer, chunks."""
    from dockercomms.core.inbox import summary

    workspace = _workspace(args)
    digest = protocol.check_digest(args.digest)
    with workspace.inbox(registry_options(args), bundle_mode=args.bundle) as inbox:
        verified = inbox.verify_artifact(digest, chunks=args.chunks)
    if verified.receipt is not None:
        result = asdict(verified.receipt) | {
            "kind": "receipt",
            "verified": True,
            "signer": asdict(verified.signer),
        }
    else:
        assert verified.message is not None
        result = summary(verified.message) | {
            "kind": "message",
            "verified": True,
            "chunks_verified": verified.chunks_verified,
            "signer": asdict(verified.signer),
        }
    emit(args, result, _verify_text)
    return 0


def _verify_text(result: dict[str, Any]) -> str:
    """``OK: message sha256:… signed by …``, and for a message whether sealed and chunks."""
    text = f"OK: {result['kind']} {result['digest']} signed by {result['signer']['identity']}"
    if result["kind"] == "message":
        text += " (sealed" if result["sealed"] else " (plain"
        text += ", every chunk checked)" if result["chunks_verified"] else ")"
    return text


def cmd_ack(args: argparse.Namespace) -> int:
    """Send a signed receipt for a message addressed to me; say which earlier one it replaces.

    Receipts are never withdrawn: the newest one that verifies is what the sender
    takes, so a second ``ack`` replaces the first and says so (``Inbox.acknowledge``
    dates it after the earlier one).
    """
    from dockercomms.cli.output import warn

    workspace = _workspace(args)
    with workspace.inbox(registry_options(args)) as inbox:
        done = inbox.acknowledge(args.for_digest, args.status, reason=args.reason)
    earlier = done.earlier
    if earlier is not None and done.earlier_in_future:
        warn(
            f"your earlier receipt is dated {protocol.format_timestamp(earlier.created_at)}, "
            "in the future: until then it still counts (check this machine's clock)"
        )
    result: dict[str, Any] = asdict(done.receipt)
    if earlier is not None:
        result["replaces"] = {
            "digest": earlier.digest,
            "status": earlier.status,
            "created_at": protocol.format_timestamp(earlier.created_at),
        }
    emit(args, result, _ack_text)
    return 0


def _ack_text(result: dict[str, Any]) -> str:
    text = f"receipt {result['digest']} ({result['status']})\ntag: {result['tag']}"
    earlier = result.get("replaces")
    if earlier:
        text += (
            f"\nreplaces your {earlier['status']} receipt of {earlier['created_at']}"
            f" ({earlier['digest']}): the latest receipt counts"
        )
    return text


def cmd_ls(args: argparse.Namespace) -> int:
    """List my inbox with verification state (signatures only, no chunk download)."""
    from dockercomms.core.inbox import summary

    workspace = _workspace(args)
    with workspace.inbox(registry_options(args)) as inbox:
        checked = inbox.listing()
    rows: list[dict[str, Any]] = []
    for entry in checked:
        if entry.message is None:
            assert entry.error is not None
            rows.append({"tag": entry.tag, "verified": False, "error": entry.error.diagnostics()})
            continue
        row = summary(entry.message)
        if entry.error is None:
            row |= {"verified": True}
        else:
            row |= {"verified": False, "error": entry.error.diagnostics()}
        rows.append(row)
    rows.sort(key=lambda r: (str(r.get("created_at", "")), r["tag"]))
    emit(args, rows, _ls_text)
    return 0


def _ls_text(rows: list[dict[str, Any]]) -> str:
    """One line per message; everything a message claims is escaped (one line, no ESC).

    ``sealed`` or ``plain`` says how it came (SPEC 9); a sealed message shows its
    real name once opened, its neutral ``<mid8>.sealed`` when it could not be.
    """
    from dockercomms.core.untrusted import shown

    lines = []
    for r in rows:
        if "filename" not in r:
            lines.append(f"{'INVALID':<9} {shown(r['tag'])}: {shown(r['error'], 1000)}")
            continue
        state = "verified" if r["verified"] else "REJECTED"
        size = f"{r['total_bytes']:>12}"
        sealing = "sealed" if r["sealed"] else "plain"
        why = "" if r["verified"] else f"  ({shown(r['error'], 1000)})"
        who = f"{shown(r['sender']):<24}"
        lines.append(
            f"{state:<9} {r['created_at']}  {size}  {sealing:<6} {who} {shown(r['filename'])}{why}"
        )
    return "\n".join(lines) or "inbox is empty"


def add_parsers(
    sub: Subcommands,
    common: CommandParser,
    registry: CommandParser,
) -> None:
    """Register the messaging commands."""
    parents = [common, registry]
    token_help = (
        "OIDC token for keyless signing (default: $SIGSTORE_ID_TOKEN, then the CI's "
        "ambient token, then a browser login on a terminal)"
    )
    s = sub.add_parser(
        "send",
        parents=parents,
        help="send a file, signed and sealed",
        description="Send one file to one or more recipients: cut into compressed chunks,\n"
        "sealed with age to every recipient and me (when every recipient's age key is\n"
        "known; see 'trust list'), pushed once, then per recipient a manifest signed\n"
        "(key pair or keyless, per 'config show') and only then tagged into that\n"
        "recipient's inbox, so an unsigned message is never visible. A group name\n"
        "('group list') sends to every member. Prints the message id, digests and tags.",
        examples=[
            "dockercomms send report.pdf --recipient bob@example.com",
            "dockercomms send plan.pdf -r bob@example.com -r carol@example.com",
            "dockercomms send notes.txt -r team",
            "dockercomms send big.iso -r bob@example.com --ttl-seconds 86400 --json",
        ],
    )
    s.add_argument("file", metavar="FILE", help="the file to send (its name goes with it)")
    s.add_argument(
        "--recipient",
        "-r",
        required=True,
        action="append",
        metavar="NAME",
        help="who may receive it: their identity, e.g. bob@example.com, or a group; "
        "repeat for several (the file is uploaded once)",
    )
    s.add_argument(
        "--plaintext",
        action="store_true",
        help="send it unsealed (anyone with pull rights can read it); without this a "
        "recipient whose age key is unknown is an error, unless send_plaintext is set",
    )
    s.add_argument(
        "--chunk-bytes",
        type=int,
        metavar="BYTES",
        help="chunk size in bytes (default: the chunk_bytes setting, 32 MiB)",
    )
    s.add_argument(
        "--compress",
        choices=list(protocol.COMPRESSIONS),
        help="chunk compression; gzip only for old readers (default: the compression "
        "setting, zstd)",
    )
    s.add_argument(
        "--ttl-seconds",
        type=int,
        metavar="SECONDS",
        help="how long the message may be received (default: the ttl_seconds setting, "
        "604800 = 7 days)",
    )
    s.add_argument(
        "--session",
        metavar="ID",
        help="session id, whose first 8 characters go into the tag (default: a fresh UUID)",
    )
    s.add_argument("--identity-token", metavar="JWT", help=token_help)
    s.add_argument(
        "--interactive",
        action="store_true",
        help="allow the browser OIDC flow even without a terminal (default: only on a terminal)",
    )
    s.set_defaults(func=cmd_send)

    r = sub.add_parser(
        "recv",
        parents=parents,
        help="receive and verify new messages",
        description="Receive every new message to me into --out: each is verified\n"
        "(signature, trusted signer, claimed sender, expiry, every chunk) before its\n"
        "file gets its name, and answered with a signed receipt. A bad message is\n"
        "reported and skipped; one that failed because of my own set-up (the registry,\n"
        "the disk, a Sigstore trust file) is deferred to the next run. Exit code:\n"
        "the first failure's.",
        examples=["dockercomms recv --out ~/Received", "dockercomms recv --out . --since 24h"],
    )
    r.add_argument("--me", metavar="NAME", help="my identity, checked against the configured one")
    r.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder to write received files into (an existing file is never overwritten)",
    )
    r.add_argument(
        "--since",
        metavar="WHEN",
        help="only messages newer than this: RFC 3339, a date, or an age such as 30m, "
        "24h, 7d (default: all)",
    )
    r.add_argument(
        "--max",
        type=int,
        metavar="N",
        help="receive at most N messages (default: no limit)",
    )
    r.add_argument(
        "--write-receipt",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send a signed 'accepted' receipt for each received file (default: on)",
    )
    r.add_argument("--identity-token", metavar="JWT", help=token_help)
    r.set_defaults(func=cmd_recv)

    v = sub.add_parser(
        "verify",
        parents=parents,
        help="verify a message or receipt by digest",
        description="Verify one message or receipt, to me or not: its manifest, its\n"
        "signature against my trust policy, and that the signer is the claimed sender;\n"
        "with --chunks also every chunk's digest and contents. Writes nothing.\n"
        "Exit 2 if it does not verify.",
        examples=["dockercomms verify --digest sha256:0123...cdef --chunks"],
    )
    v.add_argument(
        "--digest",
        required=True,
        metavar="sha256:HEX",
        help="the manifest digest, as send, ls --json or the mount's xattrs show it",
    )
    v.add_argument(
        "--bundle",
        choices=["auto", "referrers", "tag"],
        default="auto",
        help="where to find signature bundles: the referrers API, bundle- tags, or "
        "whichever the registry offers (default: auto)",
    )
    v.add_argument("--chunks", action="store_true", help="also download and check every chunk")
    v.set_defaults(func=cmd_verify)

    a = sub.add_parser(
        "ack",
        parents=parents,
        help="send a signed receipt",
        description="Send the sender of a message to me a signed receipt saying I accepted\n"
        "or rejected it. 'accepted' requires the message to verify; 'rejected' may\n"
        "answer one that does not.",
        examples=[
            "dockercomms ack --for sha256:0123...cdef --status accepted",
            'dockercomms ack --for sha256:0123...cdef --status rejected --reason "wrong file"',
        ],
    )
    a.add_argument(
        "--for",
        dest="for_digest",
        required=True,
        metavar="sha256:HEX",
        help="digest of the message to answer",
    )
    a.add_argument(
        "--status", choices=list(protocol.RECEIPT_STATUSES), required=True, help="my answer"
    )
    a.add_argument("--reason", metavar="TEXT", help="a short reason for the sender (default: none)")
    a.add_argument("--identity-token", metavar="JWT", help=token_help)
    a.set_defaults(func=cmd_ack)

    ls = sub.add_parser(
        "ls",
        parents=parents,
        help="list my inbox",
        description="List the messages to me in the registry with their verification state\n"
        "(signature and sender only; no chunk is downloaded): date, size, sender and\n"
        "file name, or why a message is REJECTED or INVALID.",
        examples=["dockercomms ls", "dockercomms ls --json"],
    )
    ls.set_defaults(func=cmd_ls)
