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
* A stale mount left by a crash (``statfs`` fails with ``ENOTCONN``, "Transport
  endpoint is not connected"; once the kernel's cached attributes expire even
  ``lstat`` does) is cleared with ``fusermount3 -uz`` before mounting; a live
  mount is refused, and so is a second mount of the same identity (found by its
  record, ``state_dir/mount.json``, :mod:`.mount_record`), before anything is
  created. A mount point folder this start created is removed if it fails.
* Without ``--foreground`` the command starts a copy of itself in the
  foreground in a new session (logging to ``state_dir/mount.log``) and waits for
  its verdict on a pipe (``--ready-fd``, :class:`StartReport`): the child writes
  one line once its mount answers through the kernel, or its error if it fails;
  the parent then returns, or raises the child's error (same type, same text,
  said once).
* ``dockercomms umount`` reads the daemon's PID through the mount
  (``user.dockercomms.status``), sends SIGTERM and waits for the drain; only a
  mount that does not answer is unmounted directly with ``fusermount3 -u``/``-uz``.

Teardown order (the reverse of set-up): cancel the background jobs, close and
unmount FUSE, wait for the jobs to end, stop (drain) and close the syncer, close
the inbox (its receipt store) and the registry clients.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from dockercomms.core import errors, protocol
from dockercomms.core.errors import ConfigError, DockerCommsError
from dockercomms.core.garbage import GarbageCollector
from dockercomms.core.status import MountStatus
from dockercomms.core.workspace import RegistryOptions, Workspace
from dockercomms.fsmount import xattrs
from dockercomms.fsmount.chunk_cache import DEFAULT_CAP_BYTES
from dockercomms.fsmount.desktop import DesktopNotifier, EventWatcher
from dockercomms.fsmount.drop_folder import assemble
from dockercomms.fsmount.inbox_view import InboxPoller
from dockercomms.fsmount.mount_record import MountRecord
from dockercomms.fsmount.outbox import refusal_events
from dockercomms.fsmount.sdnotify import (
    LiveStatus,
    SystemdNotifier,
    serve_under_systemd,
    when_answering,
)
from dockercomms.syncer.syncer import Syncer

log = logging.getLogger(__name__)

FUSERMOUNT = "fusermount3"
#: How long a background start waits for the child's verdict before giving up on it.
START_TIMEOUT_SECONDS = 120.0
#: Longest verdict line a background start reads from its child.
_MAX_VERDICT_BYTES = 64 * 1024
#: How long a failed background start waits for its child to end before killing it.
REAP_SECONDS = 30.0


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
        whole_file: ``open()`` of an inbox file verifies every chunk before it returns.
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
    whole_file: bool = False


# --- the mount point ----------------------------------------------------------------


def refuse_second_mount(workspace: Workspace) -> None:
    """One mount per identity: say where the running one is, before anything is created."""
    record = MountRecord.live(workspace.paths.mount_record)
    if record is not None:
        raise ConfigError(
            f"{workspace.identity} is already mounted at {record.mountpoint} "
            f"(pid {record.pid}); one mount per identity, so 'dockercomms umount "
            f"{record.mountpoint}' first"
        )


def clear_stale_mount(mountpoint: Path) -> bool:
    """Make ``mountpoint`` ready to mount on; True if this call created the folder.

    A dead FUSE mount is lazily unmounted, a missing folder created, a live mount
    refused. ``statfs`` decides, because it always asks the daemon: ``stat`` and
    ``lstat`` of a dead mount may still be answered from the kernel's attribute
    cache for a moment, and fail with ``ENOTCONN`` after.
    """
    try:
        os.statvfs(mountpoint)
    except FileNotFoundError:
        try:
            mountpoint.mkdir(parents=True, mode=0o700)
        except FileExistsError as exc:  # a dangling symlink
            raise ConfigError(f"{mountpoint} is not a folder") from exc
        return True
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise ConfigError(f"cannot use {mountpoint} as a mount point: {exc.strerror}") from exc
        _clear_dead_mount(mountpoint)
    if os.path.ismount(mountpoint):
        raise ConfigError(f"{mountpoint} is already mounted; unmount it or choose another folder")
    if not mountpoint.is_dir():
        raise ConfigError(f"{mountpoint} is not a folder")
    return False


def _clear_dead_mount(mountpoint: Path) -> None:
    log.warning("clearing a stale mount on %s (transport endpoint not connected)", mountpoint)
    done = subprocess.run(
        [FUSERMOUNT, "-uz", str(mountpoint)], capture_output=True, text=True, check=False
    )
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        why = done.stderr.strip() or exc.strerror
        raise ConfigError(f"cannot clear the dead mount on {mountpoint}: {why}") from exc


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
    on_ready: Callable[[MountStatus], None] | None = None,
    live_status: LiveStatus | None = None,
) -> None:
    """Mount, serve until unmounted or signalled, and tear everything down in order.

    ``on_ready`` gets the first ``.status`` tree once the mount answers
    through the kernel. ``live_status`` gets the in-process status tree (for
    systemd). A start that fails before that removes the mount point folder if it
    created it.
    """
    mountpoint = config.mountpoint.absolute()
    refuse_second_mount(workspace)
    created = clear_stale_mount(mountpoint)
    answered = trio.Event()
    try:
        await _serve(config, workspace, mountpoint, answered, on_ready, live_status)
    except BaseException:
        if created and not answered.is_set():
            with contextlib.suppress(OSError):
                mountpoint.rmdir()
        raise


async def _serve(
    config: MountConfig,
    workspace: Workspace,
    mountpoint: Path,
    answered: trio.Event,
    on_ready: Callable[[MountStatus], None] | None,
    live_status: LiveStatus | None,
) -> None:
    paths = workspace.paths
    async with contextlib.AsyncExitStack() as stack:
        pool = workspace.clients(config.registry)
        stack.callback(pool.close)
        inbox = workspace.inbox(pool=pool)
        stack.callback(inbox.close)

        syncer = Syncer(
            workspace,
            config.registry,
            spool_dir=paths.spool_dir,
            inbox_dir=None,
            default_recipient=config.default_recipient,
            poll_seconds=config.poll_seconds,
            settle_seconds=config.settle_seconds,
        )
        stack.callback(syncer.close)
        await trio.to_thread.run_sync(syncer.start)
        stack.callback(syncer.stop, config.drain_seconds)

        nursery = await stack.enter_async_context(trio.open_nursery())
        folder = assemble(
            workspace,
            inbox,
            syncer.queue,
            nursery,
            mountpoint=mountpoint,
            repository=str(workspace.repository(config.registry)),
            default_recipient=config.default_recipient,
            poll_seconds=config.poll_seconds,
            cache_bytes=config.cache_bytes,
            receipts=config.receipts,
            whole_file=config.whole_file,
            syncer=syncer,
            refusals=syncer.watcher.refusals,
        )
        if live_status is not None:
            live_status.publish(folder.report.statistics)
        # No max_read (pyfuse3 cannot match it in its init handler, and libfuse then
        # refuses to start) and nothing for max_pages or read-ahead: libfuse
        # negotiates the largest requests by itself; see fsmount.transfers.
        options = set(pyfuse3.default_options)
        options |= {"fsname=dockercomms", "subtype=dockercomms"}
        if config.fuse_debug:
            options.add("debug")
        pyfuse3.init(folder.operations, str(mountpoint), options)
        stack.callback(pyfuse3.close, unmount=True)
        # Registered last so it runs first: no job may touch FUSE after close().
        stack.callback(nursery.cancel_scope.cancel)
        folder.table.notify_kernel = True

        poller = InboxPoller(folder.inbox, config.poll_seconds)
        nursery.start_soon(poller.run)
        shutdown = ShutdownOnSignal(syncer, config.drain_seconds)
        nursery.start_soon(shutdown.run)
        events = EventWatcher(
            DesktopNotifier.from_environment(),
            folder.inbox,
            syncer.queue,
            refusals=lambda: refusal_events(syncer.watcher.refusals),
        )
        nursery.start_soon(events.run)
        collector = GarbageCollector(workspace, config.registry)
        nursery.start_soon(collect_garbage_periodically, collector)
        stack.callback(MountRecord.remove_mine, paths.mount_record, os.getpid())
        nursery.start_soon(
            _announce_when_answering, mountpoint, paths.mount_record, answered, on_ready
        )
        log.info(
            "mounted %s for %s (outbox default recipient: %s)",
            mountpoint,
            workspace.identity,
            config.default_recipient or "none",
        )
        await pyfuse3.main()
        log.info("unmounting %s", mountpoint)


async def _announce_when_answering(
    mountpoint: Path,
    record: Path,
    answered: trio.Event,
    on_ready: Callable[[MountStatus], None] | None,
) -> None:
    """Background job: once the mount answers, record it and tell whoever waits."""
    status = await when_answering(mountpoint)
    started = protocol.format_timestamp(status.started_at) if status.started_at else ""
    try:
        MountRecord(mountpoint, os.getpid(), started).write(record)
    except OSError as exc:  # status and a second mount then only know less
        log.warning("cannot record the mount in %s: %s", record, exc)
    answered.set()
    if on_ready is not None:
        on_ready(status)


GC_FIRST_SECONDS = 60.0
GC_EVERY_SECONDS = 3600.0


async def collect_garbage_periodically(collector: GarbageCollector) -> None:
    """Background job: delete my expired messages now and then (``core/garbage.py``)."""
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


def run_foreground(
    config: MountConfig, workspace: Workspace, *, report: StartReport | None = None
) -> int:
    """Serve in this process until unmounted; the exit code.

    Under systemd (``$NOTIFY_SOCKET``) READY=1 goes out once the mount answers,
    with STATUS= lines and WATCHDOG=1 pings from a trio task. A background
    start's ``report`` hears of the same moment.
    """
    notifier = SystemdNotifier.from_environment()
    on_ready = report.ready if report is not None else None
    live = LiveStatus()
    serving = functools.partial(serve, config, workspace, on_ready=on_ready, live_status=live)
    try:
        if notifier is None:
            trio.run(serving)
        else:
            mountpoint = config.mountpoint.absolute()
            trio.run(serve_under_systemd, notifier, mountpoint, serving, live.line)
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        raise _sole_error(group) from None
    return 0


def _sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one real error in a trio exception group (cancellations aside), else the group.

    A start that fails after the nursery opened (FUSE refused to mount, say) comes
    out of trio wrapped; the CLI and the parent of a background start want the
    error itself.
    """
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop()
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        elif not isinstance(error, trio.Cancelled):
            leaves.append(error)
    return leaves[0] if len(leaves) == 1 else group


# --- background start and umount ----------------------------------------------------


class StartReport:
    """How a background mount tells the command that started it how the start went.

    The parent passes the write end of a pipe (``--ready-fd``); the child writes one
    JSON line, ``{"ready": true, "pid": ...}`` once its mount answers or
    ``{"error": TEXT, "type": CLASS}`` if the start fails, then closes it. A
    parent that went away is not an error.
    """

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        if fd is not None:
            os.set_inheritable(fd, False)  # fusermount3 and friends must not keep it open

    def ready(self, status: MountStatus) -> None:
        """The mount answers."""
        self._send({"ready": True, "pid": os.getpid(), "mountpoint": status.mountpoint})

    def failed(self, error: BaseException) -> None:
        """The start failed (nothing is sent once ``ready`` was)."""
        if isinstance(error, DockerCommsError):
            text, kind = error.diagnostics(), _nearest_error_type(error)
        elif isinstance(error, KeyboardInterrupt):
            text, kind = "interrupted", "DockerCommsError"
        else:
            text, kind = f"{type(error).__name__}: {error}", "DockerCommsError"
        self._send({"error": text, "type": kind})

    def close(self) -> None:
        """Close the pipe (idempotent)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _send(self, verdict: dict[str, Any]) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._fd, json.dumps(verdict).encode() + b"\n")
        self.close()


def _nearest_error_type(error: DockerCommsError) -> str:
    """The class in ``core.errors`` this error is (or derives from): it fixes the exit code."""
    for kind in type(error).__mro__:
        name: str = kind.__name__
        if getattr(errors, name, None) is kind:
            return name
    return "DockerCommsError"


def _error_from_verdict(verdict: dict[str, Any]) -> DockerCommsError:
    """The child's error, as the same ``core.errors`` type with the same text."""
    kind = getattr(errors, str(verdict.get("type")), None)
    text = str(verdict.get("error") or "the mount failed")
    if isinstance(kind, type) and issubclass(kind, DockerCommsError):
        return kind(text)
    return DockerCommsError(text)


def start_background(config: MountConfig, argv: list[str], log_file: Path) -> int:
    """Run ``argv`` (the same mount with ``--foreground``) detached; its PID once it answers.

    Raises the child's own error if it fails to start, after removing the mount
    point folder if it was not there before.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    existed = _exists(config.mountpoint)
    read_end, write_end = os.pipe()
    try:
        with open(log_file, "ab") as out:
            child = subprocess.Popen(
                [*argv, "--ready-fd", str(write_end)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                pass_fds=(write_end,),
            )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    try:
        verdict = _read_verdict(read_end, START_TIMEOUT_SECONDS)
    finally:
        os.close(read_end)
    if verdict is not None and verdict.get("ready"):
        return child.pid
    if verdict is None:
        child.terminate()
        error: DockerCommsError = ConfigError(
            f"the mount did not come up within {START_TIMEOUT_SECONDS:.0f}s; see {log_file}"
        )
    elif "error" in verdict:
        error = _error_from_verdict(verdict)
    else:
        error = DockerCommsError(f"the mount daemon ended before the mount was up; see {log_file}")
    _reap(child)
    if not existed:
        with contextlib.suppress(OSError):
            config.mountpoint.rmdir()
    raise error


def _reap(child: subprocess.Popen[bytes]) -> None:
    """Wait for a failed child to end (it is on its way out); kill it if it lingers.

    So that a failed ``dockercomms mount`` leaves no process behind.
    """
    try:
        child.wait(timeout=REAP_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _exists(path: Path) -> bool:
    """``path`` is there (a dead mount on it counts: ``lstat`` then fails with ENOTCONN)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


def _read_verdict(fd: int, timeout: float) -> dict[str, Any] | None:
    """The child's one JSON line; ``{}`` if it closed the pipe without one, None on timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in data and len(data) < _MAX_VERDICT_BYTES:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                return None
            piece = os.read(fd, _MAX_VERDICT_BYTES)
            if not piece:
                break
            data += piece
    try:
        verdict = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        return {}
    return verdict if isinstance(verdict, dict) else {}


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
