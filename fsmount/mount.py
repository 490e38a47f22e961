"""Mounting: the trio lifetime of the filesystem, in one ``AsyncExitStack`` and one nursery.

Caveats first:

* One mount per identity: the syncer behind ``outbox/`` takes the queue's file
  lock, so a second mount (or a ``dockercomms sync``) of the same identity fails
  at start with a clear error instead of sharing the spool.
* SIGTERM and SIGINT drain: the syncer stops watching and lets the upload in
  flight finish (at most ``drain_seconds``, then it is interrupted and resumes as
  the same message next time), then the filesystem unmounts. A second signal
  interrupts the drain at once. ``fusermount3 -u`` from outside ends the main
  loop the same way, then the same drain runs.
* A stale mount left by a crash (``stat`` fails with ``ENOTCONN``, "Transport
  endpoint is not connected") is cleared with ``fusermount3 -uz`` before
  mounting; a live mount is refused.
* Without ``--foreground`` the command starts a copy of itself in the
  foreground in a new session, logs to ``state_dir/mount.log``, and returns once
  the mount is up (or with the child's error).
* ``dockercomms umount`` reads the daemon's PID through the mount
  (``user.dockercomms.status``), sends SIGTERM and waits for the drain; only a
  mount that does not answer is unmounted directly with ``fusermount3 -u``/``-uz``.

Teardown order (the reverse of set-up): cancel the background jobs, close and
unmount FUSE, wait for the jobs to end, stop (drain) and close the syncer, close
the receipt book, close the registry clients.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyfuse3
import trio

from dockercomms.core.errors import ConfigError, DockerCommsError
from dockercomms.core.gc import GarbageCollector
from dockercomms.core.signing.keypair import key_hint, load_private_key
from dockercomms.core.workspace import RegistryOptions, Workspace
from dockercomms.fsmount import xattrs
from dockercomms.fsmount.chunk_cache import DEFAULT_CAP_BYTES, ChunkCache
from dockercomms.fsmount.desktop import DesktopNotifier, EventWatcher
from dockercomms.fsmount.engine import Engine
from dockercomms.fsmount.inbox_view import InboxPoller, InboxView
from dockercomms.fsmount.inodes import ROOT_INODE, InodeTable
from dockercomms.fsmount.operations import DropFolderOperations
from dockercomms.fsmount.outbox import OutboxView
from dockercomms.fsmount.receipt_book import ReceiptBook, ReceiptSender
from dockercomms.fsmount.sdnotify import SystemdNotifier, serve_under_systemd
from dockercomms.fsmount.sent_view import SentView
from dockercomms.fsmount.status import MountRoot, StatusReport
from dockercomms.fsmount.transfers import ChunkSource
from dockercomms.fsmount.virtual import GeneratedFile
from dockercomms.syncer.service import Syncer

log = logging.getLogger(__name__)

FUSERMOUNT = "fusermount3"
#: How long a background start waits for the mount to come up.
START_TIMEOUT_SECONDS = 60.0


@dataclass
class MountConfig:
    """What ``dockercomms mount`` was asked for.

    Attributes:
        mountpoint: an empty folder to mount on.
        default_recipient: ``--to``; where ``outbox/FILE`` goes (None: nowhere).
        poll_seconds: inbox poll interval (``--poll``).
        receipts: send ``accepted``/``rejected`` receipts (``--no-receipts``).
        registry: ``--repo``/``--insecure``/``--ca-file``.
        cache_bytes: size cap of the verified chunk cache.
        drain_seconds: how long shutdown waits for an upload in flight.
        settle_seconds: how long a closed outbox file must stay unchanged.
        fuse_debug: libfuse debug output.
    """

    mountpoint: Path
    default_recipient: str | None = None
    poll_seconds: float = 5.0
    receipts: bool = True
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    cache_bytes: int = DEFAULT_CAP_BYTES
    drain_seconds: float = 30.0
    settle_seconds: float = 0.5
    fuse_debug: bool = False


# --- the mount point ----------------------------------------------------------------


def clear_stale_mount(mountpoint: Path) -> None:
    """Lazily unmount a dead FUSE mount; create a missing folder; refuse a live mount."""
    if not os.path.lexists(mountpoint):
        mountpoint.mkdir(parents=True, mode=0o700)
    try:
        # statfs always asks the daemon; stat may be answered from the attribute cache.
        os.statvfs(mountpoint)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise ConfigError(f"cannot use {mountpoint} as a mount point: {exc.strerror}") from exc
        log.warning("clearing a stale mount on %s (transport endpoint not connected)", mountpoint)
        subprocess.run([FUSERMOUNT, "-uz", str(mountpoint)], check=False)
        os.stat(mountpoint)
    if os.path.ismount(mountpoint):
        raise ConfigError(f"{mountpoint} is already mounted")
    if not mountpoint.is_dir():
        raise ConfigError(f"{mountpoint} is not a folder")


def _signer_identity(workspace: Workspace) -> str:
    if workspace.settings.signing != "key":
        return ""
    try:
        return key_hint(load_private_key(workspace.paths.key_file).public_key())
    except (DockerCommsError, OSError) as exc:
        log.warning("cannot read my key's fingerprint: %s", exc)
        return ""


# --- the trio lifetime --------------------------------------------------------------


class ShutdownOnSignal:
    """Background job: on SIGTERM/SIGINT drain the outbox, then end the FUSE main loop."""

    def __init__(self, syncer: Syncer | None, drain_seconds: float) -> None:
        self.syncer = syncer
        self.drain_seconds = drain_seconds
        self.draining = False

    async def run(self) -> None:
        """Wait for signals until cancelled; the drain runs beside, so a 2nd signal is heard."""
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if self.draining:
                        log.warning("%s again: interrupting the upload in flight", name)
                        if self.syncer is not None:
                            self.syncer.worker.abort()
                        continue
                    self.draining = True
                    log.info(
                        "%s: draining uploads (up to %.0fs), then unmounting",
                        name,
                        self.drain_seconds,
                    )
                    nursery.start_soon(self._drain_then_terminate)

    async def _drain_then_terminate(self) -> None:
        try:
            if self.syncer is not None:
                await trio.to_thread.run_sync(self.syncer.stop, self.drain_seconds)
        except Exception:
            log.exception("draining the outbox failed; unmounting anyway")
        finally:
            pyfuse3.terminate()


async def serve(
    config: MountConfig,
    workspace: Workspace,
    *,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Mount, serve until unmounted or signalled, and tear everything down in order."""
    mountpoint = config.mountpoint.absolute()
    clear_stale_mount(mountpoint)
    paths = workspace.paths
    state = paths.state_dir
    async with contextlib.AsyncExitStack() as stack:
        engine = Engine(workspace, config.registry)
        stack.callback(engine.close)
        book = ReceiptBook(state / "fsmount.db")
        stack.callback(book.close)

        syncer = Syncer(
            workspace,
            config.registry,
            spool_dir=state / "spool",
            inbox_dir=None,
            default_recipient=config.default_recipient,
            poll_seconds=config.poll_seconds,
            settle_seconds=config.settle_seconds,
        )
        stack.callback(syncer.close)
        await trio.to_thread.run_sync(syncer.start)
        stack.callback(syncer.stop, config.drain_seconds)

        cache = ChunkCache(paths.cache_dir / "chunks", config.cache_bytes)
        nursery = await stack.enter_async_context(trio.open_nursery())

        table = InodeTable()
        chunks = ChunkSource(engine, cache, nursery)
        receipts = ReceiptSender(
            engine,
            book,
            nursery,
            enabled=config.receipts,
            ttl_seconds=workspace.settings.ttl_seconds,
        )
        inbox = InboxView(table, engine, chunks, receipts, poll_seconds=config.poll_seconds)
        outbox = OutboxView(
            table,
            syncer.spool_dir,
            state / "fsmount" / "staging",
            syncer.queue,
            config.default_recipient,
        )
        sent = SentView(
            table,
            syncer.queue,
            engine,
            chunks,
            signer_identity=_signer_identity(workspace),
            ttl_seconds=workspace.settings.ttl_seconds,
        )
        report = StatusReport(
            mountpoint, engine, inbox, syncer, chunks, cache, receipts, datetime.now(UTC)
        )
        root = MountRoot(table, report, inbox)
        table.add(root, inode=ROOT_INODE)
        root.attach("outbox", outbox.root)
        root.attach("inbox", inbox.root)
        root.attach("sent", sent.root)
        root.attach(".status", GeneratedFile(".status", report.json_bytes, changing=True))

        options = set(pyfuse3.default_options)
        options |= {"fsname=dockercomms", "subtype=dockercomms"}
        if config.fuse_debug:
            options.add("debug")
        operations = DropFolderOperations(table, syncer.spool_dir)
        pyfuse3.init(operations, str(mountpoint), options)
        stack.callback(pyfuse3.close, unmount=True)
        # Registered last so it runs first: no job may touch FUSE after close().
        stack.callback(nursery.cancel_scope.cancel)
        table.notify_kernel = True

        poller = InboxPoller(inbox, config.poll_seconds)
        nursery.start_soon(poller.run)
        shutdown = ShutdownOnSignal(syncer, config.drain_seconds)
        nursery.start_soon(shutdown.run)
        events = EventWatcher(DesktopNotifier.from_environment(), inbox, syncer.queue)
        nursery.start_soon(events.run)
        collector = GarbageCollector(workspace, config.registry)
        nursery.start_soon(collect_garbage_periodically, collector)
        log.info(
            "mounted %s for %s (outbox default recipient: %s)",
            mountpoint,
            workspace.identity,
            config.default_recipient or "none",
        )
        if on_ready is not None:
            on_ready()
        await pyfuse3.main()
        log.info("unmounting %s", mountpoint)


GC_FIRST_SECONDS = 60.0
GC_EVERY_SECONDS = 3600.0


async def collect_garbage_periodically(collector: GarbageCollector) -> None:
    """Background job: delete my expired messages now and then (``core/gc.py``)."""
    await trio.sleep(GC_FIRST_SECONDS)
    while True:
        try:
            report = await trio.to_thread.run_sync(collector.run_once, abandon_on_cancel=True)
        except DockerCommsError as exc:
            log.warning("gc failed: %s", exc.diagnostics())
        except Exception:  # one bad input must not end the daemon: try again next hour
            log.exception("gc failed unexpectedly")
        else:
            if report.unsupported:
                log.info("gc: the registry does not allow deletion (%s)", report.unsupported)
            elif report.deleted:
                log.info("gc: deleted %d expired messages", len(report.expired))
        await trio.sleep(GC_EVERY_SECONDS)


def run_foreground(config: MountConfig, workspace: Workspace) -> int:
    """Serve in this process until unmounted; the exit code.

    Under systemd (``$NOTIFY_SOCKET``) READY=1 goes out once the mount answers,
    with STATUS= lines and WATCHDOG=1 pings from a trio task.
    """
    notifier = SystemdNotifier.from_environment()
    try:
        if notifier is None:
            trio.run(serve, config, workspace)
        else:
            serving = functools.partial(serve, config, workspace)
            trio.run(serve_under_systemd, notifier, config.mountpoint.absolute(), serving)
    except KeyboardInterrupt:
        return 130
    return 0


# --- background start and umount ----------------------------------------------------


def start_background(config: MountConfig, argv: list[str], log_file: Path) -> int:
    """Run ``argv`` (the same mount with ``--foreground``) detached; wait until mounted."""
    log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    start = log_file.stat().st_size if log_file.exists() else 0
    with open(log_file, "ab") as out:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if child.poll() is not None:
            with open(log_file, "rb") as log_text:
                log_text.seek(start)
                lines = log_text.read().decode(errors="replace").strip().splitlines()
            last = lines[-1] if lines else f"exit {child.returncode}"
            raise ConfigError(f"mount failed: {last} (log: {log_file})")
        if _answers(config.mountpoint):
            return 0
        time.sleep(0.1)
    raise ConfigError(f"mount did not come up within {START_TIMEOUT_SECONDS:.0f}s; see {log_file}")


def _answers(mountpoint: Path) -> bool:
    try:
        os.getxattr(mountpoint, xattrs.STATUS)
    except OSError:
        return False
    return True


def unmount(mountpoint: Path, *, timeout: float = 120.0) -> int:
    """``dockercomms umount``: SIGTERM the daemon and wait for its drain, else fusermount."""
    mountpoint = mountpoint.absolute()
    try:
        status = json.loads(os.getxattr(mountpoint, xattrs.STATUS))
        pid = int(status["pid"])
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            log.warning("%s is a stale mount; clearing it", mountpoint)
            return subprocess.run([FUSERMOUNT, "-uz", str(mountpoint)], check=False).returncode
        if not os.path.ismount(mountpoint):
            # The errno (ENODATA from getxattr) says nothing a user needs.
            raise ConfigError(f"{mountpoint} is not mounted") from None
        return subprocess.run([FUSERMOUNT, "-u", str(mountpoint)], check=False).returncode
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{mountpoint} is not a dockercomms mount") from exc
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.ismount(mountpoint) and not _alive(pid):
            return 0
        time.sleep(0.1)
    log.warning("daemon %d did not finish within %.0fs; unmounting lazily", pid, timeout)
    return subprocess.run([FUSERMOUNT, "-uz", str(mountpoint)], check=False).returncode


def _alive(pid: int) -> bool:
    """The daemon still runs (a zombie waiting for its parent to reap it does not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z"


def main(argv: list[str] | None = None) -> int:
    """``python -m dockercomms.fsmount``: the mount commands without the full CLI."""
    from dockercomms.cli.mount_cmd import standalone_parser

    parser = standalone_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose > 1
        else logging.INFO
        if args.verbose
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code: int = args.func(args)
    except DockerCommsError as exc:
        print(f"dockercomms: error: {exc.diagnostics()}", file=sys.stderr)
        return exc.exit_code
    return code
