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
from dockercomms.cli.registry_flags import registry_options
from dockercomms.core import protocol as p
from dockercomms.core.errors import (
    ConfigError,
    DockerCommsError,
    ManifestError,
    SenderMismatchError,
    exit_code_for,
)

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
    """Send one file to one recipient."""
    from dockercomms.cli.progress import TransferProgress
    from dockercomms.core.send import SendRequest

    workspace = _workspace(args)
    _freeze_startup_objects()
    path = Path(args.file)
    if not path.is_file():
        raise ConfigError(f"{path} is not a regular file")
    request = SendRequest(
        path=path,
        recipient=args.recipient,
        chunk_bytes=args.chunk_bytes or workspace.settings.chunk_bytes,
        compression=args.compress or workspace.settings.compression,
        ttl_seconds=args.ttl_seconds or workspace.settings.ttl_seconds,
        session_id=args.session,
    )
    with workspace.client(registry_options(args)) as client:
        sender = workspace.sender(client)
        with TransferProgress(f"send {path.name}", path.stat().st_size) as progress:
            sent = sender.send(request, on_progress=progress)
    emit(
        args,
        asdict(sent),
        lambda s: f"message id: {s['message_id']}\ndigest: {s['digest']}\ntag: {s['tag']}",
    )
    return 0


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
    from dockercomms.core.intake import receive_new

    workspace = _workspace(args)
    _freeze_startup_objects()
    if args.me and args.me != workspace.identity:
        raise ConfigError(f"--me {args.me!r} is not this identity ({workspace.identity!r})")
    with workspace.client(registry_options(args)) as client, workspace.ledger() as ledger:
        outcomes = receive_new(
            workspace.receiver(client),
            ledger,
            Path(args.out),
            receipt_signer=workspace.signer() if args.write_receipt else None,
            since=parse_since(args.since),
            limit=args.max,
            progress=lambda m: TransferProgress(f"recv {m.filename}", m.total_bytes),
        )
    emit(args, [o.to_json() for o in outcomes], _recv_text)
    errors = [o.error for o in outcomes if o.error is not None]
    return exit_code_for(errors[0]) if errors else 0


def _recv_text(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        if r["status"] == "received":
            lines.append(f"received {r['filename']} from {r['sender']} -> {r['path']}")
        elif r["status"] == "rejected":
            lines.append(f"REJECTED {r['tag']}: {r['error']}")
        elif r["status"] == "deferred":
            lines.append(f"deferred {r['tag']} (will retry): {r['error']}")
    return "\n".join(lines) or "nothing new"


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a message or receipt by digest: manifest, signature, signer, chunks."""
    from dockercomms.core.intake import summary
    from dockercomms.core.manifest import parse_json, parse_receipt

    workspace = _workspace(args)
    digest = p.check_digest(args.digest)
    with workspace.client(registry_options(args)) as client:
        receiver = workspace.receiver(client, bundle_mode=args.bundle)
        raw, _ = client.fetch_manifest(digest)
        kind = parse_json(raw, "manifest").get("artifactType")
        if kind == p.RECEIPT_ARTIFACT_TYPE:
            receipt = parse_receipt(raw, digest)
            signer = receiver.verify_signature(digest)
            if signer.name != receipt.sender:
                raise SenderMismatchError(
                    f"receipt claims {receipt.sender!r}, signed by {signer.name!r}"
                )
            result = asdict(receipt) | {
                "kind": "receipt",
                "verified": True,
                "signer": asdict(signer),
            }
        elif kind == p.MESSAGE_ARTIFACT_TYPE:
            message = receiver.fetch_message(digest, check_recipient=False)
            verified = receiver.verify_message(message)
            if args.chunks:
                sink = _NullSink()
                for index in range(message.chunk_count):
                    receiver.fetch_chunk(message, index, sink)
            result = summary(message) | {
                "kind": "message",
                "verified": True,
                "chunks_verified": bool(args.chunks),
                "signer": asdict(verified.signer),
            }
        else:
            raise ManifestError(f"{digest} is neither a message nor a receipt ({kind!r})")
    emit(args, result, lambda r: f"OK: {r['kind']} {digest} signed by {r['signer']['identity']}")
    return 0


class _NullSink:
    """Counts and discards verified chunk bytes (``verify --chunks``)."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes | memoryview) -> int:
        self.written += len(data)
        return len(data)


def cmd_ack(args: argparse.Namespace) -> int:
    """Send a signed receipt for a message addressed to me; say which earlier one it replaces.

    Receipts are never withdrawn: the newest one that verifies is what the sender
    takes, so a second ``ack`` replaces the first and says so. Its ``created_at``
    is made later than the earlier receipt's (waiting up to two seconds), so the
    order is never a tie.
    """
    import time

    from dockercomms.cli.output import warn
    from dockercomms.core.receipts import latest_verified_receipt, send_receipt
    from dockercomms.core.untrusted import shown

    workspace = _workspace(args)
    with workspace.client(registry_options(args)) as client:
        receiver = workspace.receiver(client)
        message = receiver.fetch_message(p.check_digest(args.for_digest))
        try:
            receiver.verify_message(message)
            verified = True
        except DockerCommsError as exc:
            if args.status == "accepted":
                raise
            log.info("acknowledging an unverified message as rejected: %s", shown(exc))
            verified = False
        earlier = latest_verified_receipt(
            client,
            receiver,
            message.digest,
            sender=workspace.identity,
            recipient=message.sender,
        )
        if earlier is not None:
            wait = (earlier.created_at - datetime.now(UTC)).total_seconds() + 1.0
            if 0 < wait <= 2.0:
                time.sleep(wait)
            elif wait > 2.0:
                warn(
                    f"your earlier receipt is dated {p.format_timestamp(earlier.created_at)}, "
                    "in the future: until then it still counts (check this machine's clock)"
                )
        receipt = send_receipt(
            client,
            workspace.signer(),
            me=workspace.identity,
            message=message,
            status=args.status,
            verified=verified,
            reason=args.reason,
            ttl_seconds=workspace.settings.ttl_seconds,
        )
    result: dict[str, Any] = asdict(receipt)
    if earlier is not None:
        result["replaces"] = {
            "digest": earlier.digest,
            "status": earlier.status,
            "created_at": p.format_timestamp(earlier.created_at),
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
    from dockercomms.core import protocol as p
    from dockercomms.core.intake import summary
    from dockercomms.core.listing import check_tags, first_of_each_message, listing_workers

    workspace = _workspace(args)
    options = registry_options(args)
    with workspace.client(options) as client:
        tags = client.list_tags(p.inbox_prefix(workspace.identity))
    checked = check_tags(
        tags,
        new_client=lambda: workspace.client(options),
        receiver_for=workspace.receiver,
        workers=listing_workers(workspace.repository(options)),
    )
    rows: list[dict[str, Any]] = []
    for entry in first_of_each_message(checked):
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
    """One line per message; everything a message claims is escaped (one line, no ESC)."""
    from dockercomms.core.untrusted import shown

    lines = []
    for r in rows:
        if "filename" not in r:
            lines.append(f"{'INVALID':<9} {shown(r['tag'])}: {shown(r['error'], 1000)}")
            continue
        state = "verified" if r["verified"] else "REJECTED"
        size = f"{r['total_bytes']:>12}"
        why = "" if r["verified"] else f"  ({shown(r['error'], 1000)})"
        who = f"{shown(r['sender']):<24}"
        lines.append(f"{state:<9} {r['created_at']}  {size}  {who} {shown(r['filename'])}{why}")
    return "\n".join(lines) or "inbox is empty"


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    registry: argparse.ArgumentParser,
) -> None:
    """Register the messaging commands."""
    parents = [common, registry]
    s = sub.add_parser("send", parents=parents, help="send a file, signed")
    s.add_argument("file")
    s.add_argument("--recipient", "-r", required=True)
    s.add_argument("--chunk-bytes", type=int)
    s.add_argument("--compress", choices=list(p.COMPRESSIONS))
    s.add_argument("--ttl-seconds", type=int)
    s.add_argument("--session", help="session id (tag's sid8); default a fresh UUID")
    s.add_argument("--identity-token", help="OIDC token for keyless signing")
    s.add_argument(
        "--interactive",
        action="store_true",
        help="allow the browser OIDC flow even without a terminal (default: only on a terminal)",
    )
    s.set_defaults(func=cmd_send)

    r = sub.add_parser("recv", parents=parents, help="receive and verify new messages")
    r.add_argument("--me", help="my identity (must match the configured one)")
    r.add_argument("--out", required=True, help="folder to write received files into")
    r.add_argument("--since", help="only messages newer than this (RFC 3339, or 30m/24h/7d)")
    r.add_argument("--max", type=int, help="receive at most N messages")
    r.add_argument(
        "--write-receipt",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send a signed 'accepted' receipt for each received file (default: on)",
    )
    r.add_argument("--identity-token", help="OIDC token for keyless receipts")
    r.set_defaults(func=cmd_recv)

    v = sub.add_parser("verify", parents=parents, help="verify a message or receipt by digest")
    v.add_argument("--digest", required=True)
    v.add_argument("--bundle", choices=["auto", "referrers", "tag"], default="auto")
    v.add_argument("--chunks", action="store_true", help="also download and check every chunk")
    v.set_defaults(func=cmd_verify)

    a = sub.add_parser("ack", parents=parents, help="send a signed receipt")
    a.add_argument("--for", dest="for_digest", required=True, help="message digest")
    a.add_argument("--status", choices=list(p.RECEIPT_STATUSES), required=True)
    a.add_argument("--reason")
    a.add_argument("--identity-token", help="OIDC token for keyless signing")
    a.set_defaults(func=cmd_ack)

    ls = sub.add_parser("ls", parents=parents, help="list my inbox")
    ls.set_defaults(func=cmd_ls)
