"""Talking to systemd: ``sd_notify`` datagrams and journal-friendly log lines.

Caveats first:

* Written with the standard library (one ``AF_UNIX``/``SOCK_DGRAM`` send per
  message), so there is no ``systemd-notify`` shell-out: that helper is a separate
  process, and systemd only accepts it with ``NotifyAccess=all``.
* Nothing happens outside systemd: :meth:`SystemdNotifier.from_environment` returns
  None when ``$NOTIFY_SOCKET`` is unset, and callers skip every step.
* ``READY=1`` goes out only once the mount *answers*: :func:`ready_when_answering`
  has a child process (``head``) read ``MOUNTPOINT/.status`` through the kernel.
  Never a thread of this process: the read is a FUSE request this very process
  serves, and a daemon killed while one of its own threads waits on its mount
  can never finish dying (that thread holds ``/dev/fuse`` open), so the mount and
  everything that touches it would hang until the connection is aborted by hand.
  A child is simply answered ``ENOTCONN`` when the daemon dies.
* ``WATCHDOG=1`` is sent from a trio task, so it proves the event loop that serves
  FUSE is alive; a loop blocked for longer than ``WatchdogSec=`` gets the service
  killed and (``Restart=on-failure``) restarted. ``$WATCHDOG_PID`` naming another
  process means the watchdog is not ours and no pings are sent.
* Sends never block: a notify socket whose queue is full (nobody reading)
  drops the message rather than stall the event loop that serves FUSE.
* ``STATUS=`` is a one-line summary of the same status tree as ``.status``
  (``core.status.status_line``: queue length, last inbox poll), built in process
  (:class:`LiveStatus`), not read through the mount; it is refreshed with each
  ping, or every :data:`STATUS_SECONDS` without a watchdog. A status that cannot
  be built in time is skipped: the ping never waits for it.
* Under the journal (``$JOURNAL_STREAM`` naming our stderr) log lines carry no
  timestamp, since journald adds its own, and start with a ``<N>`` syslog priority,
  so ``journalctl -p warning`` works.

Wiring (``fsmount/mount.py``, ``run_foreground``)::

    notifier = SystemdNotifier.from_environment()
    live = LiveStatus()
    if notifier is None:
        trio.run(serve, config, workspace)
    else:
        trio.run(serve_under_systemd, notifier, config.mountpoint.absolute(),
                 functools.partial(serve, config, workspace, live_status=live), live.line)
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TextIO

import trio

from dockercomms.core.errors import DockerCommsError
from dockercomms.core.status import MountStatus, from_json, status_line
from dockercomms.core.untrusted import parse_json_object
from dockercomms.fsmount.mount_table import is_dockercomms_mount

log = logging.getLogger(__name__)

#: How often ``STATUS=`` is refreshed when there is no watchdog to pace it.
STATUS_SECONDS = 10.0
#: How often the readiness probe retries while the mount is not answering yet.
PROBE_SECONDS = 0.05
#: The mount's status file, read through the mount (see ``fsmount/status.py``).
STATUS_FILE = ".status"
#: Most bytes of ``.status`` the readiness probe reads.
MAX_STATUS_BYTES = 1024 * 1024


class SystemdNotifier:
    """Sends ``sd_notify`` messages to the socket systemd gave this service.

    Attributes:
        address: the socket path, or for the abstract namespace a name that
            starts with a NUL byte (systemd writes it with a leading ``@``).
        watchdog_usec: ``$WATCHDOG_USEC`` when the watchdog is meant for us.
    """

    def __init__(self, address: str, watchdog_usec: int | None = None) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_usec = watchdog_usec
        self._failed = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier | None:
        """A notifier for ``$NOTIFY_SOCKET``, or None when not started by systemd."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if not address or not address.startswith(("/", "@")):
            # vsock: and other transports exist only for VMs; a service never gets them.
            if address:
                log.debug("ignoring NOTIFY_SOCKET=%r: not a unix socket", address)
            return None
        return cls(address, _watchdog_usec(env))

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; False (logged once) if it failed.

        A failure is not fatal: the service still works, systemd just learns less
        (and a ``Type=notify`` start times out, which the warning explains).
        """
        payload = "\n".join(assignments).encode("utf-8", "replace")
        try:
            # A socket per message, as libsystemd does: nothing to keep open or close.
            # MSG_DONTWAIT: a listener that stops reading fills its queue, and a blocking
            # send would then stall the trio loop that serves FUSE.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, socket.MSG_DONTWAIT, self.address)
        except BlockingIOError:
            log.debug("systemd is not reading its notify socket; dropped %r", assignments)
            return False
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd at %r: %s", self.address, exc)
                self._failed = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: the service is up (with an optional first status line)."""
        return self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        """``STATUS=``: the line ``systemctl status`` shows."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the event loop is alive."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: the service is shutting down on its own."""
        return self.notify("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def watchdog_interval(self) -> float | None:
        """Seconds systemd waits for a ping before it kills us, or None without a watchdog."""
        return self.watchdog_usec / 1_000_000 if self.watchdog_usec else None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """``$WATCHDOG_USEC`` if it is set, positive, and (per ``$WATCHDOG_PID``) meant for us."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- trio tasks -----------------------------------------------------------------------


StatusSource = Callable[[], "str | Awaitable[str]"]


async def watchdog_pinger(notifier: SystemdNotifier, status_source: StatusSource) -> None:
    """Ping ``WATCHDOG=1`` at half the watchdog interval and refresh ``STATUS=``; forever.

    ``status_source`` may be a plain function or an async one; it gets until the
    next ping to answer, and its failures are logged at debug level and skipped.
    """
    interval = notifier.watchdog_interval()
    period = interval / 2 if interval else STATUS_SECONDS
    last_status: str | None = None
    while True:
        # One deadline per round, so a slow status source never delays the next ping.
        deadline = trio.current_time() + period
        if interval:
            notifier.watchdog()
        text: str | None = None
        with trio.move_on_at(deadline):
            try:
                text = await _call(status_source)
            except Exception as exc:
                log.debug("no status for systemd this time: %s", exc)
        if text and text != last_status:
            notifier.status(text)
            last_status = text
        await trio.sleep_until(deadline)


async def _call(source: StatusSource) -> str:
    result = source()
    if inspect.isawaitable(result):
        return await result
    return result


async def read_mount_status(mountpoint: Path) -> MountStatus:
    """The mount's ``.status`` tree, read through the kernel by a child process.

    Raises ``OSError`` while ``mountpoint`` is not a dockercomms mount yet (looked
    up in ``mountinfo``, which does not touch the mount), so a stray ``.status``
    file in the folder underneath never passes for an answer; ``ValueError`` for
    a document that is not bounded JSON of the status tree's shape. See the
    module notes for why a child.
    """
    if not is_dockercomms_mount(mountpoint):
        raise FileNotFoundError(f"{mountpoint} is not mounted")
    result = await trio.run_process(
        ["head", "-c", str(MAX_STATUS_BYTES + 1), str(mountpoint / STATUS_FILE)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise OSError(f"reading {mountpoint / STATUS_FILE} failed: {result.stderr[:200]!r}")
    try:
        document = parse_json_object(result.stdout, ".status", max_bytes=MAX_STATUS_BYTES)
    except DockerCommsError as exc:
        raise ValueError(str(exc)) from exc
    return from_json(MountStatus, document)  # StatusFormatError is a ValueError


async def when_answering(mountpoint: Path) -> MountStatus:
    """The first ``.status`` tree ``mountpoint`` answers with, read through the kernel.

    The proof that the mount is up: a request went through FUSE and came back.
    """
    while True:
        try:
            return await read_mount_status(mountpoint)
        except (OSError, ValueError):
            await trio.sleep(PROBE_SECONDS)


async def ready_when_answering(notifier: SystemdNotifier, mountpoint: Path) -> None:
    """Send ``READY=1`` (with a first ``STATUS=``) once ``.status`` can be read."""
    status = await when_answering(mountpoint)
    notifier.ready(status_line(status))
    log.info("mount answers; told systemd it is ready")


class LiveStatus:
    """The running mount's status tree, as ``STATUS=`` text; built in process.

    The mount publishes how to build its tree once it has one; until then the
    line says ``starting``.
    """

    def __init__(self) -> None:
        self._build: Callable[[], Awaitable[MountStatus]] | None = None

    def publish(self, build: Callable[[], Awaitable[MountStatus]]) -> None:
        """From now on, ``build()`` makes the tree."""
        self._build = build

    async def line(self) -> str:
        """``STATUS=`` text for the tree as it is now."""
        if self._build is None:
            return "starting"
        return status_line(await self._build())


async def serve_under_systemd(
    notifier: SystemdNotifier,
    mountpoint: Path,
    serve: Callable[[], Awaitable[None]],
    status_source: StatusSource,
) -> None:
    """Run ``serve()`` (the mount) with readiness, watchdog and status reported to systemd.

    ``STOPPING=1`` goes out when ``serve()`` returns or fails: by then the mount
    is gone, and systemd shows the unit as deactivating instead of running.
    """
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ready_when_answering, notifier, mountpoint)
        nursery.start_soon(watchdog_pinger, notifier, status_source)
        try:
            await serve()
        finally:
            notifier.stopping("unmounted")
            nursery.cancel_scope.cancel()


# --- the journal ------------------------------------------------------------------------


def stderr_is_journal(
    environ: Mapping[str, str] | None = None, stream: TextIO | None = None
) -> bool:
    """True when ``stream`` (stderr) is the journal systemd connected us to.

    ``$JOURNAL_STREAM`` is ``<device>:<inode>`` of that stream; comparing it with
    the stream itself (as systemd recommends) avoids dropping timestamps in a child
    that inherited the variable but writes to a log file.
    """
    env = os.environ if environ is None else environ
    expected = env.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


#: syslog priorities for Python levels (sd-daemon.h ``SD_ERR`` and friends).
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    """``<N>LEVEL name: message`` lines: journald's priority prefix, no timestamp.

    Every line of a multi-line record (a traceback) gets the prefix, because
    journald reads the stream line by line.
    """

    def __init__(self, fmt: str = "%(levelname)s %(name)s: %(message)s") -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        """The record with ``<priority>`` in front of each line."""
        level = max((lvl for lvl in _PRIORITY if lvl <= record.levelno), default=logging.DEBUG)
        prefix = f"<{_PRIORITY[level]}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def use_journal_format(logger: logging.Logger | None = None) -> bool:
    """Give ``logger``'s (default: root's) handlers :class:`JournalFormatter` under the journal."""
    if not stderr_is_journal():
        return False
    for handler in (logger or logging.getLogger()).handlers:
        handler.setFormatter(JournalFormatter())
    return True
