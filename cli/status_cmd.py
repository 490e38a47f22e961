"""``status``: what this identity is doing, from its running mount or from its files at rest.

Caveats first:

* It asks a running mount first: the one this identity's record names
  (``Paths.mount_record``, written by the mount), then the ``fuse.dockercomms``
  mounts of this user in ``/proc/self/mountinfo`` (or only ``--mountpoint``). It
  reads ``.status`` (bounded, from a thread that gives up after
  :data:`STATUS_TIMEOUT_SECONDS`) and takes the mount whose ``state_dir`` is this
  identity's, whatever ``--repo`` it was started with.
* With none it asks the parts for their files at rest: the push queue
  (``syncer.queue.queue_at_rest``), who holds the queue lock
  (``syncer.queue_lock``) and the chunk cache folder
  (``fsmount.chunk_cache.usage_on_disk``), none of which loads FUSE or trio.
* Either way the answer is one typed tree (``core.status.StatusSummary``), shown
  as text or ``--json`` by the one renderer.
* Every CLI call builds this parser, so the rest is imported when ``status`` runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from dockercomms.cli.output import emit
from dockercomms.cli.parsing import CommandParser, Subcommands
from dockercomms.core.errors import DockerCommsError

if TYPE_CHECKING:
    from dockercomms.core.status import CardStatus, MountStatus, StatusSummary
    from dockercomms.core.workspace import Workspace

STATUS_TIMEOUT_SECONDS = 5.0
#: Largest ``.status`` document ``status`` reads.
MAX_STATUS_BYTES = 4 * 1024 * 1024


def cmd_status(args: argparse.Namespace) -> int:
    """Queue, transfers, last poll, errors and cache: from the mount, else from disk."""
    from dockercomms.core.status import sealing_engine, status_text, summary_of_mount, to_json
    from dockercomms.core.workspace import Workspace
    from dockercomms.fsmount.chunk_cache import DEFAULT_CAP_BYTES
    from dockercomms.fsmount.mount_record import MountRecord
    from dockercomms.fsmount.mount_table import dockercomms_mounts

    workspace = Workspace.load()
    if args.mountpoint:
        candidates = [Path(args.mountpoint)]
    else:
        record = MountRecord.live(workspace.paths.mount_record)
        candidates = [record.mountpoint] if record is not None else []
        candidates += [m for m in dockercomms_mounts(uid=os.getuid()) if m not in candidates]
    notes: list[str] = []
    found: MountStatus | None = None
    for mountpoint in candidates:
        status, problem = read_status_file(mountpoint.absolute())
        if status is not None and _serves(status, workspace):
            found = status
            break
        if problem and args.mountpoint:
            notes.append(f"{mountpoint}: {problem}")
    if found is not None:
        summary = summary_of_mount(found, str(workspace.paths.chunk_cache_dir))
    else:
        summary = _from_disk(workspace)
    summary = dataclasses.replace(
        summary, notes=notes + summary.notes, card=_card(workspace), sealing=sealing_engine()
    )
    emit(args, to_json(summary), lambda _: status_text(summary, DEFAULT_CAP_BYTES))
    return 0


def read_status_file(
    mountpoint: Path, timeout: float = STATUS_TIMEOUT_SECONDS
) -> tuple[MountStatus | None, str | None]:
    """``MOUNTPOINT/.status`` read as a status tree, or None and why not.

    Read in a daemon thread: a hung daemon makes the read block in the kernel,
    and ``status`` must still answer.
    """
    from dockercomms.core.status import MountStatus, StatusFormatError, from_json
    from dockercomms.core.untrusted import parse_json_object

    outcome: list[bytes | BaseException] = []

    def read() -> None:
        try:
            with open(mountpoint / ".status", "rb") as handle:
                outcome.append(handle.read(MAX_STATUS_BYTES + 1))
        except OSError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, name="status-read", daemon=True)
    reader.start()
    reader.join(timeout)
    if not outcome:
        return None, f"the mount did not answer within {timeout:.0f}s"
    value = outcome[0]
    if isinstance(value, BaseException):
        return None, str(value)
    try:
        document = parse_json_object(value, ".status", max_bytes=MAX_STATUS_BYTES)
        return from_json(MountStatus, document), None
    except DockerCommsError as exc:
        return None, exc.diagnostics()
    except StatusFormatError as exc:
        return None, f"not a dockercomms status ({exc})"


def _serves(status: MountStatus, workspace: Workspace) -> bool:
    """The mount is this identity's: same state dir (whatever ``--repo`` it uses).

    A mount from before ``state_dir`` was in ``.status`` is matched by identity and
    default repository instead (profiles may share an identity name).
    """
    if status.identity != workspace.identity:
        return False
    if status.state_dir:
        return Path(status.state_dir) == workspace.paths.state_dir.absolute()
    try:
        return status.repository == str(workspace.repository())
    except DockerCommsError:
        return True


def _card(workspace: Workspace) -> CardStatus:
    """Whether my card is in the repository and names my current age key (asked briefly)."""
    from dockercomms.core.cards import card_state, quick
    from dockercomms.core.status import CardStatus

    state = card_state(workspace, quick(None))
    return CardStatus(state.state, state.tag or None, state.created_at, state.detail)


def _from_disk(workspace: Workspace) -> StatusSummary:
    """What the files at rest say: the queue, who holds it, the chunk cache."""
    from dockercomms.core.status import Daemon, StatusSummary
    from dockercomms.fsmount.chunk_cache import usage_on_disk
    from dockercomms.syncer.queue import queue_at_rest
    from dockercomms.syncer.queue_lock import QueueLock

    paths = workspace.paths
    holder = QueueLock(paths.queue_lock).holder()
    notes = []
    if holder is not None:
        notes.append(
            f"process {holder} holds the queue (a 'dockercomms sync' or a mount that does "
            "not answer); progress and polls are only known to it"
        )
    queue, transfers = queue_at_rest(paths, held=holder is not None)
    try:
        repository = str(workspace.repository())
    except DockerCommsError:
        repository = workspace.settings.repository
    return StatusSummary(
        source="queue",
        identity=workspace.identity,
        repository=repository,
        daemon=Daemon(holder is not None, holder, None),
        queue=queue,
        transfers=list(transfers),
        errors=[queue.last_error] if queue is not None and queue.last_error else [],
        cache=usage_on_disk(paths.chunk_cache_dir),
        notes=notes,
    )


def add_parsers(sub: Subcommands, common: CommandParser) -> None:
    """Register ``status``."""
    st = sub.add_parser(
        "status",
        parents=[common],
        help="queue, transfers, last poll, errors, cache and my card",
        description="What this identity is doing: files queued, sending and failed, the\n"
        "upload in flight, the last inbox poll, recent errors and the chunk cache. It\n"
        "asks the running mount, or reads the queue database when none runs. Last, it\n"
        "asks the repository whether my card is published and names my current age key.",
        examples=["dockercomms status", "dockercomms status --json"],
    )
    st.add_argument(
        "--mountpoint", metavar="DIR", help="ask this mount (default: find this identity's)"
    )
    st.set_defaults(func=cmd_status)
