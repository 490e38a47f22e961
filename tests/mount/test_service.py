"""The mount as a systemd user service: units, sd_notify, journal lines, desktop notices, status.

Levels, bottom up: the unit texts and how ``service install`` renders them
(checked by ``systemd-analyze verify``) -> install and uninstall against a
stand-in ``systemctl`` (no user manager runs in CI, and a test must never start
a real service on a developer's desktop) -> the notifier and the log formatter
on real sockets and streams -> desktop notifications through a real
``dbus-daemon`` with a stand-in notification server -> the real mount daemon,
started the way systemd starts it: a ``NOTIFY_SOCKET`` the test binds (in the
abstract namespace) and ``WATCHDOG_PID`` set to the daemon's own pid by
``sh -c '... exec'``.

Every process is stopped by PID in ``finally`` and every mount unmounted with
``fusermount3 -u`` (:func:`tests.fsmount_fixtures.stop`).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
import pytest
import trio

from dockercomms.cli import main as cli_main
from dockercomms.cli import service_cmd
from dockercomms.core.status import MountStatus, from_json, status_line
from dockercomms.fsmount.desktop import DesktopNotifier, Event, EventWatcher, fold, notify_call
from dockercomms.fsmount.mount_table import dockercomms_mounts
from dockercomms.fsmount.outbox import refusal_events
from dockercomms.fsmount.sdnotify import (
    JournalFormatter,
    SystemdNotifier,
    stderr_is_journal,
    watchdog_pinger,
)
from dockercomms.syncer.queue import ItemState, PushQueue
from dockercomms.syncer.watcher import Refusals
from tests.fsmount_fixtures import (
    Identity,
    Mount,
    check_log,
    is_stale,
    make_identities,
    replaced_environment,
    scratch_root,
    stop,
    trust,
    wait_for,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
ALICE = "alice@example.com"
BOB = "bob@example.com"
ANSI = re.compile(r"\x1b\[")
TIMESTAMP = re.compile(r"^(<\d>)?\s*\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}")


# --- running the CLI with ``service``, ``status`` and ``gc`` --------------------------------


@dataclass
class Run:
    """Exit code and output of one in-process CLI run."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """stdout as JSON."""
        return json.loads(self.out)


def cli(env: dict[str, str], *args: str) -> Run:
    """``dockercomms ARGS`` in-process with exactly ``env``."""
    out, err = io.StringIO(), io.StringIO()
    with (
        replaced_environment(env),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = cli_main.main(list(args))
    return Run(code, out.getvalue(), err.getvalue())


# --- unit files and install ----------------------------------------------------------------


def test_the_installed_unit_files_are_the_ones_in_the_repository() -> None:
    """install reads them from the package (a stale install would differ)."""
    shipped = sorted(p.name for p in (REPO_ROOT / "systemd").glob("*.service"))
    assert shipped == sorted([service_cmd.UNIT, service_cmd.TEMPLATE])
    for name in shipped:
        assert service_cmd.unit_text(name) == (REPO_ROOT / "systemd" / name).read_text(), name


def test_units_say_what_systemd_needs() -> None:
    for text in map(service_cmd.unit_text, [service_cmd.UNIT, service_cmd.TEMPLATE]):
        service = text.split("[Service]", 1)[1].split("[Install]", 1)[0]
        settings = dict(
            line.split("=", 1) for line in service.splitlines() if "=" in line and line[0] != "#"
        )
        assert settings["Type"] == "notify"
        assert settings["Restart"] == "on-failure"
        assert settings["ExecStartPre"].startswith("-fusermount3 -u -q -z ")
        drain = re.search(r"mount --foreground --drain-timeout (\d+) ", settings["ExecStart"])
        assert drain is not None
        assert int(settings["TimeoutStopSec"]) >= int(drain.group(1)) + 30, "drain must fit"
        assert int(settings["WatchdogSec"]) > 0


def test_render_makes_commands_absolute_and_escapes() -> None:
    commands = {
        "dockercomms": ["/opt/my tools/dockercomms"],
        "fusermount3": ["/usr/bin/fusermount3"],
    }
    text = service_cmd.render_unit(service_cmd.unit_text(service_cmd.UNIT), commands)
    assert (
        'ExecStart="/opt/my tools/dockercomms" mount --foreground --drain-timeout 30 \\\n'
        "    $DOCKERCOMMS_MOUNT_OPTIONS ${DOCKERCOMMS_MOUNTPOINT}\n" in text
    )
    assert "ExecStartPre=-/usr/bin/fusermount3 -u -q -z ${DOCKERCOMMS_MOUNTPOINT}\n" in text
    assert "ExecStopPost=-/usr/bin/fusermount3 " in text
    assert service_cmd._exec_word("/a/50%$x") == "/a/50%%$$x"
    target = service_cmd.ServiceTarget.for_profile(None)
    drop_in = service_cmd.drop_in_text(
        target,
        Path("/home/u/My Comms %d"),
        {"XDG_DATA_HOME": "/d", "DOCKERCOMMS_REGISTRY_PASSWORD": "s"},
    )
    assert 'Environment="DOCKERCOMMS_MOUNTPOINT=/home/u/My Comms %%d"\n' in drop_in
    assert 'Environment="XDG_DATA_HOME=/d"\n' in drop_in
    assert "PASSWORD" not in drop_in
    with pytest.raises(Exception, match="--profile"):
        service_cmd.ServiceTarget.for_profile("../evil")


@dataclass
class Desk:
    """A user's set-up for install tests: a home, an identity, and a stand-in systemctl."""

    root: Path
    env: dict[str, str]
    log: Path

    @property
    def unit_dir(self) -> Path:
        """``$XDG_CONFIG_HOME/systemd/user``."""
        return Path(self.env["XDG_CONFIG_HOME"]) / "systemd" / "user"

    def calls(self) -> list[str]:
        """What the stand-in systemctl was asked, one line per call."""
        return self.log.read_text().splitlines() if self.log.exists() else []


FAKE_SYSTEMCTL = """#!/bin/sh
# Stands in for systemctl: records its arguments; "nobus" answers like a container.
echo "$*" >> "$SYSTEMCTL_LOG"
if [ "$SYSTEMCTL_MODE" = nobus ]; then
    echo "Failed to connect to bus: No medium found" >&2
    exit 1
fi
if [ "$2" = show ]; then printf '%b\n' "${SYSTEMCTL_SHOW:-ActiveState=inactive}"; fi
exit 0
"""


@pytest.fixture
def desk(tmp_path: Path) -> Desk:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(FAKE_SYSTEMCTL)
    systemctl.chmod(0o755)
    home = tmp_path / "home"
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "DOCKERCOMMS_HOME": str(tmp_path / "identity"),
        "SYSTEMCTL_LOG": str(tmp_path / "systemctl.log"),
        "SYSTEMCTL_MODE": "nobus",
    }
    assert cli(env, "init", "--identity", ALICE).code == 0
    return Desk(tmp_path, env, tmp_path / "systemctl.log")


def verify_unit(path: Path, runtime: Path) -> None:
    """``systemd-analyze --user verify`` passes and says nothing about our files."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: install Debian's 'systemd' package"
    runtime.mkdir(mode=0o700, exist_ok=True)
    done = subprocess.run(
        [analyze, "--user", "verify", str(path)],
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "dockercomms" not in output, output


def test_install_passes_mount_options_through_the_drop_in(desk: Desk) -> None:
    """--to/--poll/--no-receipts/--cache-bytes/--whole-file reach the mount as its own flags."""
    done = cli(
        desk.env,
        "service",
        "install",
        *("--to", "bob@example.com", "--poll", "2", "--no-receipts", "--cache-bytes", "1000000"),
        "--whole-file",
    )
    assert done.code == 0, done.err
    unit = desk.unit_dir / "dockercomms.service"
    drop_in = (desk.unit_dir / "dockercomms.service.d" / "50-install.conf").read_text()
    line = next(x for x in drop_in.splitlines() if "DOCKERCOMMS_MOUNT_OPTIONS=" in x)
    words = line.removeprefix('Environment="DOCKERCOMMS_MOUNT_OPTIONS=').removesuffix('"').split()
    # What systemd runs: the unit's ExecStart with $DOCKERCOMMS_MOUNT_OPTIONS split into words.
    args = cli_main.build_parser().parse_args(
        ["mount", "--foreground", "--drain-timeout", "30", *words, "/home/u/Comms"]
    )
    assert (args.to, args.poll, args.receipts, args.cache_bytes, args.whole_file) == (
        "bob@example.com",
        2.0,
        False,
        1_000_000,
        True,
    )
    verify_unit(unit, desk.root / "run")

    plain = cli(desk.env, "service", "install")  # options left out: the line goes
    assert plain.code == 0, plain.err
    assert (
        "DOCKERCOMMS_MOUNT_OPTIONS"
        not in (desk.unit_dir / "dockercomms.service.d" / "50-install.conf").read_text()
    )

    refused = cli(desk.env, "service", "install", "--to", "bob smith")
    # Refused first by the name grammar (core.names), before any unit is written.
    assert refused.code == 1 and "' ' is not allowed" in refused.err


def test_install_without_a_user_manager_writes_verified_units_and_says_what_to_run(
    desk: Desk,
) -> None:
    mountpoint = desk.root / "My Comms"
    first = cli(desk.env, "service", "install", "--mountpoint", str(mountpoint))
    assert first.code == 0, first.err
    assert "systemctl --user is not available here" in first.out
    assert "systemctl --user enable --now dockercomms.service" in first.out
    unit = desk.unit_dir / "dockercomms.service"
    drop_in = desk.unit_dir / "dockercomms.service.d" / "50-install.conf"
    assert f"wrote {unit}" in first.out and f"wrote {drop_in}" in first.out
    text = unit.read_text()
    assert re.search(r"^ExecStart=/\S+ mount --foreground", text, re.M), text
    assert f'Environment="DOCKERCOMMS_MOUNTPOINT={mountpoint}"' in drop_in.read_text()
    assert f'Environment="DOCKERCOMMS_HOME={desk.env["DOCKERCOMMS_HOME"]}"' in drop_in.read_text()
    verify_unit(unit, desk.root / "run")

    again = cli(desk.env, "service", "install", "--mountpoint", str(mountpoint), "--json")
    assert again.code == 0
    report = again.json()
    assert [f["action"] for f in report["files"]] == ["unchanged", "unchanged"]
    assert report["run_later"] == [
        "systemctl --user daemon-reload",
        "systemctl --user enable --now dockercomms.service",
    ]
    assert report["ran"] == []

    status = cli(desk.env, "service", "status", "--json").json()
    assert status["installed"] is True and status["systemctl"].startswith("Failed to connect")

    gone = cli(desk.env, "service", "uninstall")
    assert gone.code == 0 and f"removed {unit}" in gone.out
    assert not unit.exists() and not drop_in.parent.exists()
    assert "not installed" in cli(desk.env, "service", "uninstall").out


def test_install_for_a_profile_uses_the_template(desk: Desk) -> None:
    refused = cli(desk.env, "service", "install", "--profile", "work")
    assert refused.code == 1 and "dockercomms init" in refused.err
    profile_home = Path(desk.env["HOME"]) / ".config" / "dockercomms" / "profiles" / "work"
    assert (
        cli(desk.env | {"DOCKERCOMMS_HOME": str(profile_home)}, "init", "--identity", BOB).code == 0
    )

    done = cli(desk.env, "service", "install", "--profile", "work")
    assert done.code == 0, done.err
    assert "systemctl --user enable --now dockercomms@work.service" in done.out
    template = desk.unit_dir / "dockercomms@.service"
    drop_in = desk.unit_dir / "dockercomms@work.service.d" / "50-install.conf"
    assert "DOCKERCOMMS_HOME" not in drop_in.read_text(), "the template names the profile's home"
    verify_unit(desk.unit_dir / "dockercomms@work.service", desk.root / "run")
    assert cli(desk.env, "service", "uninstall", "--profile", "work").code == 0
    assert not template.exists() and not drop_in.exists()


def test_install_with_a_user_manager_reloads_and_enables(desk: Desk) -> None:
    env = desk.env | {"SYSTEMCTL_MODE": "ok", "DOCKERCOMMS_REGISTRY_PASSWORD": "secret"}
    done = cli(env, "service", "install")
    assert done.code == 0, done.err
    assert desk.calls() == [
        "--user show-environment",
        "--user show dockercomms.service --property=ActiveState",
        "--user daemon-reload",
        "--user enable --now dockercomms.service",
    ]
    assert "ran: systemctl --user enable --now dockercomms.service" in done.out
    assert "not copied into the unit: DOCKERCOMMS_REGISTRY_PASSWORD" in done.out
    assert "secret" not in "".join(p.read_text() for p in desk.unit_dir.rglob("*.conf"))

    shown = (
        "ActiveState=active\\nSubState=running\\nUnitFileState=enabled\\nMainPID=4242\\n"
        "NRestarts=2\\nStatusText=0 to send, 3 sent\\nIgnored=x"
    )
    status = cli(env | {"SYSTEMCTL_SHOW": shown}, "service", "status")
    assert status.out.splitlines()[1:] == [
        "state: active (running), enabled, pid 4242, restarted 2 times",
        "status: 0 to send, 3 sent",
        "log: journalctl --user -u dockercomms.service",
    ]

    desk.log.unlink()
    gone = cli(env, "service", "uninstall")
    assert gone.code == 0
    assert desk.calls() == [
        "--user show-environment",
        "--user disable --now dockercomms.service",
        "--user daemon-reload",
    ]
    assert not (desk.unit_dir / "dockercomms.service").exists()


# --- sd_notify and the journal --------------------------------------------------------------


@dataclass
class NotifySocket:
    """The socket systemd would give a ``Type=notify`` service, bound by the test.

    :meth:`listen` reads it continuously from a thread, as systemd does: a socket
    nobody reads fills its queue (ten datagrams), after which the daemon, whose
    sends never block, drops what it sends (``STOPPING=1`` included).
    """

    address: str
    sock: socket.socket
    received: list[tuple[float, str]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)
    listening: bool = False

    @classmethod
    def abstract(cls) -> NotifySocket:
        """A datagram socket in the abstract namespace (``@name`` in ``NOTIFY_SOCKET``)."""
        name = f"dockercomms-test-{uuid.uuid4().hex}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0" + name)
        return cls("@" + name, sock)

    def listen(self) -> None:
        """Read every datagram as it arrives, until the socket is closed."""
        self.listening = True
        threading.Thread(target=self._read_forever, name="notify-socket", daemon=True).start()

    def _read_forever(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return  # closed
            with self.arrived:
                self.received.append((time.monotonic(), data.decode()))
                self.arrived.notify_all()

    def wait_for(self, line: str, timeout: float = 60.0, *, count: int = 1) -> None:
        """Receive until ``count`` datagrams held ``line``."""
        deadline = time.monotonic() + timeout
        while len(self.lines(line)) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"not {count} x {line!r} from the daemon: {self.received}")
            if self.listening:
                with self.arrived:
                    self.arrived.wait(left)
                continue
            self.sock.settimeout(left)
            with contextlib.suppress(TimeoutError):
                self.received.append((time.monotonic(), self.sock.recv(4096).decode()))

    def drain(self) -> None:
        """Take in whatever is queued without waiting."""
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self.received.append((time.monotonic(), self.sock.recv(4096).decode()))

    def lines(self, prefix: str) -> list[str]:
        """Every received line starting with ``prefix``."""
        with self.arrived:
            messages = [message for _, message in self.received]
        return [
            line for message in messages for line in message.splitlines() if line.startswith(prefix)
        ]


def test_notifier_reads_the_environment_and_sends_datagrams() -> None:
    assert SystemdNotifier.from_environment({}) is None
    assert SystemdNotifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"}) is None
    listener = NotifySocket.abstract()
    try:
        env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "3000000"}
        notifier = SystemdNotifier.from_environment(env)
        assert notifier is not None and notifier.watchdog_interval() == 3.0
        mine = env | {"WATCHDOG_PID": str(os.getpid())}
        assert SystemdNotifier.from_environment(mine).watchdog_interval() == 3.0  # type: ignore[union-attr]
        theirs = env | {"WATCHDOG_PID": "1"}
        assert SystemdNotifier.from_environment(theirs).watchdog_interval() is None  # type: ignore[union-attr]
        assert notifier.ready("up\nand running")
        assert notifier.status("2 to send")
        assert notifier.watchdog()
        assert notifier.stopping()
        listener.wait_for("STOPPING=1", timeout=5)
        assert [m for _, m in listener.received] == [
            "READY=1\nSTATUS=up and running",
            "STATUS=2 to send",
            "WATCHDOG=1",
            "STOPPING=1",
        ]
    finally:
        listener.sock.close()


def test_notifier_to_a_missing_socket_fails_quietly(caplog: pytest.LogCaptureFixture) -> None:
    notifier = SystemdNotifier("@dockercomms-test-nobody-listens")
    with caplog.at_level(logging.WARNING):
        assert not notifier.ready()
        assert not notifier.watchdog()
    assert len(caplog.records) == 1, "one warning, not one per ping"


def test_a_listener_that_stops_reading_never_blocks_the_sender() -> None:
    listener = NotifySocket.abstract()
    try:
        notifier = SystemdNotifier(listener.address)
        started = time.monotonic()
        sent = [notifier.watchdog() for _ in range(5000)]
        assert time.monotonic() - started < 5
        assert sent[0] and not sent[-1], "the queue filled up and later pings were dropped"
    finally:
        listener.sock.close()


def test_watchdog_pinger_pings_at_half_the_interval_and_survives_its_status_source() -> None:
    listener = NotifySocket.abstract()
    calls = 0

    def source() -> str:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("status broke once")
        return f"round {min(calls, 3)}"

    async def run() -> None:
        notifier = SystemdNotifier(listener.address, watchdog_usec=200_000)
        with trio.move_on_after(0.75):
            await watchdog_pinger(notifier, source)

    try:
        trio.run(run)
        listener.drain()
    finally:
        listener.sock.close()
    # Every 0.1 s for 0.75 s: 8, fewer on a loaded machine, never more.
    assert 3 <= len(listener.lines("WATCHDOG=1")) <= 8
    assert listener.lines("STATUS=") == ["STATUS=round 1", "STATUS=round 3"]


def test_status_line_summarises_the_status_document() -> None:
    document = {
        "outbox": {
            "queue": {"counts": {"queued": 1, "uploading": 1, "sent": 14, "failed": 2}},
            "in_flight": {"filename": "report.pdf", "percent": 41.2},
        },
        "inbox": {"messages": 3, "rejected": 1, "last_poll": {"at": "2026-11-23T09:00:05Z"}},
        "errors": ["outbox: registry unreachable"],
    }
    assert status_line(from_json(MountStatus, document)) == (
        "2 to send, 14 sent, 2 failed; uploading report.pdf 41%; "
        "inbox 3 (1 rejected), polled 09:00:05Z; error: outbox: registry unreachable"
    )
    assert status_line(from_json(MountStatus, {})) == "running"


def test_journal_lines_have_a_priority_and_no_timestamp(tmp_path: Path) -> None:
    with open(tmp_path / "stderr", "w") as stream:
        st = os.fstat(stream.fileno())
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream)
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, stream)
        assert not stderr_is_journal({}, stream)
    record = logging.LogRecord("dockercomms.x", logging.WARNING, __file__, 1, "a\nb", None, None)
    assert JournalFormatter().format(record) == "<4>WARNING dockercomms.x: a\n<4>b"
    record.levelno, record.levelname = 25, "NOTICE"
    assert JournalFormatter().format(record).startswith("<6>")


# --- desktop notifications -------------------------------------------------------------------


def test_desktop_notifier_without_a_bus_is_silent() -> None:
    notifier = DesktopNotifier.from_environment({})
    assert not notifier.enabled and not notifier.notify("New file", "x")
    assert not DesktopNotifier("unix:path=/nonexistent/bus").notify("New file", "x")
    assert not trio.run(notifier.notify_async, "New file", "x")


def test_desktop_notification_message_and_folding() -> None:
    from jeepney import HeaderFields

    call = notify_call("New file", "a.txt from alice", icon="mail-message-new")
    assert call.header.fields[HeaderFields.member] == "Notify"
    assert call.body == (
        "dockercomms",
        0,
        "mail-message-new",
        "New file",
        "a.txt from alice",
        [],
        {"urgency": ("y", 1), "desktop-entry": ("s", "dockercomms")},
        -1,
    )
    events = [Event("received", f"k{i}", f"f{i}.txt from bob") for i in range(7)]
    events.append(Event("send_failed", "x", "big.iso to bob: too large"))
    assert fold(events) == [
        (
            "7 new files",
            "f0.txt from bob\nf1.txt from bob\nf2.txt from bob\nf3.txt from bob\n"
            "f4.txt from bob\nand 2 more",
            "mail-message-new",
        ),
        ("Send failed", "big.iso to bob: too large", "dialog-error"),
    ]


@dataclass
class NotificationServer:
    """A session ``dbus-daemon`` and a stand-in for the desktop's notification daemon."""

    address: str
    received: list[tuple[Any, ...]]
    #: What ``GetCapabilities`` answers (a server that renders body markup by default).
    capabilities: list[str]


@pytest.fixture
def session_bus(tmp_path: Path) -> Iterator[NotificationServer]:
    from jeepney import HeaderFields, MessageType, new_method_return
    from jeepney.bus_messages import message_bus
    from jeepney.io.blocking import open_dbus_connection

    daemon = shutil.which("dbus-daemon")
    assert daemon, "dbus-daemon is missing: install Debian's 'dbus-daemon' package"
    bus = subprocess.Popen(
        [
            daemon,
            "--session",
            "--nofork",
            "--print-address=1",
            f"--address=unix:path={tmp_path}/bus",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    stop_serving = threading.Event()
    listening = threading.Event()
    received: list[tuple[Any, ...]] = []
    capabilities = ["body", "body-markup"]
    try:
        assert bus.stdout is not None
        address = bus.stdout.readline().strip()

        def serve() -> None:
            with open_dbus_connection(bus=address) as connection:
                connection.send_and_get_reply(
                    message_bus.RequestName("org.freedesktop.Notifications")
                )
                listening.set()
                while not stop_serving.is_set():
                    try:
                        message = connection.receive(timeout=0.1)
                    except TimeoutError:
                        continue
                    fields = message.header.fields
                    if message.header.message_type != MessageType.method_call:
                        continue
                    if fields.get(HeaderFields.member) == "Notify":
                        received.append(message.body)
                        connection.send(new_method_return(message, "u", (len(received),)))
                    elif fields.get(HeaderFields.member) == "GetCapabilities":
                        connection.send(new_method_return(message, "as", (list(capabilities),)))

        server = threading.Thread(target=serve, name="notification-server")
        server.start()
        try:
            assert listening.wait(10), "the stand-in notification server did not start"
            yield NotificationServer(address, received, capabilities)
        finally:
            stop_serving.set()
            server.join(10)
    finally:
        bus.terminate()
        bus.wait(10)
        if bus.stdout is not None:
            bus.stdout.close()


def test_desktop_notifications_reach_the_session_bus(
    session_bus: NotificationServer, tmp_path: Path
) -> None:
    notifier = DesktopNotifier.from_environment({"DBUS_SESSION_BUS_ADDRESS": session_bus.address})
    assert notifier.notify("Message rejected", "incoming inbox-x: untrusted signer")
    assert session_bus.received[-1][3:5] == (
        "Message rejected",
        "incoming inbox-x: untrusted signer",
    )

    # The watcher announces only what is new since it started: a send that failed for good.
    spool = tmp_path / "spool"
    spool.mkdir()
    queue = PushQueue(tmp_path / "queue.db", tmp_path / "queue")
    try:
        old = spool / "old.bin"
        old.write_bytes(b"1")
        queue.mark_failed(queue.enqueue(old, BOB).id, "too large")
        watcher = EventWatcher(notifier, None, queue)

        async def watch() -> list[Event]:
            assert await watcher.check() == []
            new = spool / "new.bin"
            new.write_bytes(b"2")
            queue.mark_failed(queue.enqueue(new, BOB).id, "recipient unknown")
            return await watcher.check()

        fresh = trio.run(watch)
    finally:
        queue.close()
    assert [e.text for e in fresh] == [f"new.bin to {BOB}: recipient unknown"]
    assert session_bus.received[-1][3:5] == ("Send failed", f"new.bin to {BOB}: recipient unknown")
    assert len(session_bus.received) == 2


@pytest.mark.parametrize("markup", [True, False])
def test_a_strangers_markup_is_shown_as_text(session_bus: NotificationServer, markup: bool) -> None:
    if not markup:
        session_bus.capabilities.remove("body-markup")
    notifier = DesktopNotifier.from_environment({"DBUS_SESSION_BUS_ADDRESS": session_bus.address})
    reason = 'inbox-x: <img src="http://127.0.0.1:9/track"> & <b>urgent</b>'
    assert notifier.notify("Message rejected", reason)
    assert notifier.notify("Message rejected", "<i>again</i>")
    bodies = [m[4] for m in session_bus.received]
    if markup:
        assert bodies == [
            'inbox-x: &lt;img src="http://127.0.0.1:9/track"&gt; &amp; &lt;b&gt;urgent&lt;/b&gt;',
            "&lt;i&gt;again&lt;/i&gt;",
        ]
    else:
        assert bodies == [reason, "<i>again</i>"]


def test_a_refused_drop_reaches_the_desktop_even_right_after_the_start(
    session_bus: NotificationServer,
) -> None:
    notifier = DesktopNotifier.from_environment({"DBUS_SESSION_BUS_ADDRESS": session_bus.address})
    refusals = Refusals()
    refusals.add("stray.txt", "no default recipient")
    watcher = EventWatcher(notifier, None, None, refusals=lambda: refusal_events(refusals))

    async def watch() -> list[Event]:
        first = await watcher.check()
        refusals.add("stray.txt", "no default recipient")  # the same again: told once
        refusals.add("bob/link.txt", "is a symbolic link\x1b[2J")
        return first + await watcher.check()

    fresh = trio.run(watch)
    # A refusal is news even at the first look: it happened while this mount ran.
    assert [e.text for e in fresh] == [
        "outbox/stray.txt: no default recipient",
        "outbox/bob/link.txt: is a symbolic link\\x1b[2J",
    ]
    assert [m[3:5] for m in session_bus.received] == [
        ("Drop refused", "outbox/stray.txt: no default recipient"),
        ("Drop refused", "outbox/bob/link.txt: is a symbolic link\\x1b[2J"),
    ]


# --- status from disk -------------------------------------------------------------------------


def test_status_without_a_daemon_reads_the_queue_and_the_cache(desk: Desk) -> None:
    state = Path(desk.env["DOCKERCOMMS_HOME"]) / "state"
    empty = cli(desk.env, "status")
    assert empty.code == 0 and "daemon: not running" in empty.out and "queue: empty" in empty.out

    spool = desk.root / "spool"
    spool.mkdir()
    with PushQueue(state / "queue.db", state / "queue") as queue:
        for name in ("a.bin", "b.bin"):
            (spool / name).write_bytes(b"x" * 1000)
            queue.enqueue(spool / name, BOB)
        uploading = queue.mark_uploading(queue.items([ItemState.QUEUED])[0].id)
        queue.mark_failed(queue.items([ItemState.QUEUED])[0].id, "registry said no")
    chunks = Path(desk.env["DOCKERCOMMS_HOME"]) / "cache" / "chunks"
    chunks.mkdir(parents=True)
    (chunks / "c1").write_bytes(b"y" * 4096)
    (chunks / "c1.json").write_text("{}")

    result = cli(desk.env, "status", "--json").json()
    assert result["source"] == "queue" and result["daemon"]["running"] is False
    assert result["queue"]["counts"] == {"queued": 0, "uploading": 1, "sent": 0, "failed": 1}
    assert result["errors"] == ["registry said no"]
    assert result["transfers"] == [
        {
            "direction": "upload",
            "filename": uploading.filename,
            "recipient": BOB,
            "bytes_total": 1000,
            "chunks_uploaded": 0,
            "state": "interrupted (resumes at next start)",
        }
    ]
    assert result["cache"]["entries"] == 1 and result["cache"]["bytes"] == 4096

    with filelock.FileLock(state / "queue.lock"):
        held = cli(desk.env, "status", "--json").json()
    assert held["daemon"] == {"running": True, "pid": os.getpid(), "mountpoint": None}
    text = cli(desk.env, "status").out
    assert "1 uploading" in text and "error: registry said no" in text


def test_mountinfo_names_are_unescaped(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "36 35 0:30 / /home/a/My\\040Comms rw,nosuid - fuse.dockercomms dockercomms "
        "rw,user_id=1000,group_id=1000\n"
        "37 35 0:31 / /mnt/other rw - fuse.sshfs host: rw\n"
        "38 35 0:32 / /tmp/lookalike rw - fuse.dockercomms dockercomms rw,user_id=1001\n"
    )
    assert dockercomms_mounts(info) == [
        Path("/home/a/My Comms"),
        Path("/tmp/lookalike"),
    ]
    # Any user may mount a FUSE file system with that name: status asks only its own.
    assert dockercomms_mounts(info, uid=1000) == [Path("/home/a/My Comms")]


# --- the real daemon ---------------------------------------------------------------------------


@dataclass
class Daemon:
    """A mount daemon started as systemd would start it."""

    mount: Mount
    notify: NotifySocket


@contextlib.contextmanager
def daemon_under_systemd(
    identity: Identity,
    mountpoint: Path,
    *extra: str,
    watchdog_usec: int = 1_000_000,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Daemon]:
    """Start the daemon with NOTIFY_SOCKET, WATCHDOG_* and JOURNAL_STREAM; always stop it."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    arguments = [str(mountpoint), "--foreground", "--poll", "1", "--drain-timeout", "10", *extra]
    command = [sys.executable, "-m", "dockercomms.cli", "mount", *arguments]
    notify = NotifySocket.abstract()
    notify.listen()
    stderr = mountpoint.parent / f"{mountpoint.name}-{uuid.uuid4().hex[:6]}.log"
    try:
        with open(stderr, "wb") as log_file:
            st = os.fstat(log_file.fileno())
            env = identity.env | {
                "NOTIFY_SOCKET": notify.address,
                "WATCHDOG_USEC": str(watchdog_usec),
                "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
                "INVOCATION_ID": uuid.uuid4().hex,
                **(extra_env or {}),
            }
            # WATCHDOG_PID must be the daemon's own pid: the shell's, kept by exec.
            process = subprocess.Popen(
                ["sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh", *command],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        mount = Mount(identity, mountpoint, process, stderr)
        try:
            yield Daemon(mount, notify)
        finally:
            stop(mount)
        check_log(mount)
        for line in mount.log().splitlines():
            assert not ANSI.search(line) and not TIMESTAMP.match(line), line
    finally:
        notify.sock.close()


@pytest.fixture(scope="module")
def people() -> Iterator[tuple[Path, dict[str, Identity]]]:
    root = Path(tempfile.mkdtemp(prefix="service-", dir=scratch_root()))
    try:
        identities = make_identities(root, [ALICE, BOB], data_home=root / "xdg-data")
        trust(identities[BOB], identities[ALICE])
        trust(identities[ALICE], identities[BOB])  # his card: alice's drops for bob go sealed
        yield root, identities
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_daemon_is_ready_only_when_the_mount_answers_then_pings_and_reports(
    people: tuple[Path, dict[str, Identity]],
) -> None:
    root, identities = people
    alice = identities[ALICE]
    with daemon_under_systemd(alice, root / "mnt-ready") as daemon:
        daemon.notify.wait_for("READY=1")
        # READY arrived: the mount must answer now, through the kernel.
        status = json.loads((daemon.mount / ".status").read_bytes())
        assert status["pid"] == daemon.mount.process.pid
        ready = next(m for _, m in daemon.notify.received if "READY=1" in m)
        assert "STATUS=0 to send, 0 sent; inbox 0" in ready
        daemon.notify.wait_for("WATCHDOG=1", count=5, timeout=10)
        pings = [at for at, message in daemon.notify.received if "WATCHDOG=1" in message]
        gaps = sorted(b - a for a, b in itertools.pairwise(pings))
        # Every 0.5 s; systemd (WATCHDOG_USEC=1000000) would kill after 1 s without one.
        assert gaps[len(gaps) // 2] < 0.9, gaps
        assert daemon.notify.lines("STATUS=")

        # `dockercomms status` finds the mount in mountinfo and reads it.
        result = cli(alice.env, "status", "--json").json()
        assert result["source"] == "mount"
        assert result["daemon"]["pid"] == daemon.mount.process.pid
        assert result["daemon"]["mountpoint"] == str(daemon.mount.mountpoint.absolute())
        assert result["last_poll"]["polls"] >= 1
        text = cli(alice.env, "status").out
        assert text.startswith(f"daemon: running (pid {daemon.mount.process.pid})")
        # Another identity's status does not take alice's mount for its own.
        assert cli(identities[BOB].env, "status", "--json").json()["source"] == "queue"

        daemon.mount.process.send_signal(signal.SIGTERM)
        assert daemon.mount.process.wait(timeout=30) == 0
        daemon.notify.wait_for("STOPPING=1", timeout=5)
    assert "mount answers; told systemd it is ready" in daemon.mount.log()


def test_sigterm_with_an_upload_in_flight_drains_then_unmounts(
    people: tuple[Path, dict[str, Identity]],
) -> None:
    root, identities = people
    alice = identities[ALICE]
    mountpoint = root / "mnt-drain"
    with daemon_under_systemd(alice, mountpoint, "--to", BOB, "--drain-timeout", "300") as daemon:
        daemon.notify.wait_for("READY=1")
        # Tagging takes the embedded registry's index lock: while the test holds it, the
        # upload stays in flight however fast the machine is.
        with filelock.FileLock(alice.layout / "index.json.lock"):
            (daemon.mount / "outbox/drain.bin").write_bytes(os.urandom(300_000))
            sent = daemon.mount / f"sent/{BOB}/drain.bin"
            wait_for(
                "the upload to start",
                lambda: (
                    sent.exists() and os.getxattr(sent, "user.dockercomms.state") == b"uploading"
                ),
            )
            daemon.mount.process.send_signal(signal.SIGTERM)
            wait_for("the drain to start", lambda: "draining uploads" in daemon.mount.log())
            assert daemon.mount.process.poll() is None
        assert daemon.mount.process.wait(timeout=60) == 0
        assert not os.path.ismount(mountpoint) and not is_stale(mountpoint)
        daemon.notify.wait_for("STOPPING=1", timeout=5)
    log = daemon.mount.log()
    drained, unmounted = log.index("draining uploads"), log.index(f"unmounting {mountpoint}")
    assert drained < log.index("sent drain.bin") < unmounted
    state_dir = alice.home / "state"
    with PushQueue(state_dir / "queue.db", state_dir / "queue") as queue:
        assert [(i.filename, i.state) for i in queue.items()] == [("drain.bin", ItemState.SENT)]


def test_a_stale_mount_is_cleared_at_start(people: tuple[Path, dict[str, Identity]]) -> None:
    root, identities = people
    alice = identities[ALICE]
    mountpoint = root / "mnt-stale"
    text = service_cmd.unit_text(service_cmd.UNIT)
    unit = service_cmd.render_unit(text, service_cmd.resolve_commands())
    pre = next(line for line in unit.splitlines() if line.startswith("ExecStartPre=-"))
    clear = [
        str(mountpoint) if word == "${DOCKERCOMMS_MOUNTPOINT}" else word
        for word in shlex.split(pre.removeprefix("ExecStartPre=-"))
    ]

    def crash(daemon: Daemon) -> None:
        daemon.notify.wait_for("READY=1")
        os.kill(daemon.mount.process.pid, signal.SIGKILL)
        daemon.mount.process.wait(timeout=10)
        assert is_stale(mountpoint)

    # The unit's ExecStartPre clears a stale mount, and fails quietly on none (its
    # "-" lets the start go on).
    with daemon_under_systemd(alice, mountpoint) as daemon:
        crash(daemon)
        assert subprocess.run(clear, capture_output=True, check=False).returncode == 0
        assert not is_stale(mountpoint) and not os.path.ismount(mountpoint)
        quiet = subprocess.run(clear, capture_output=True, text=True, check=False)
        assert quiet.returncode != 0 and quiet.stdout + quiet.stderr == ""
    # Started without it, the daemon clears the stale mount itself.
    with daemon_under_systemd(alice, mountpoint) as crashed:
        crash(crashed)
        with daemon_under_systemd(alice, mountpoint) as daemon:
            daemon.notify.wait_for("READY=1")
            assert json.loads((daemon.mount / ".status").read_bytes())["pid"] == (
                daemon.mount.process.pid
            )
    assert "clearing a stale mount" in daemon.mount.log()
    assert not is_stale(mountpoint) and not os.path.ismount(mountpoint)


@pytest.mark.slow
def test_the_mount_announces_new_inbox_files_on_the_desktop(
    people: tuple[Path, dict[str, Identity]], session_bus: NotificationServer
) -> None:
    root, identities = people
    alice, bob = identities[ALICE], identities[BOB]
    before = root / "before.txt"
    before.write_text("already there\n")
    alice.send(before, BOB)
    env = {"DBUS_SESSION_BUS_ADDRESS": session_bus.address}
    with daemon_under_systemd(bob, root / "mnt-desktop", extra_env=env) as daemon:
        daemon.notify.wait_for("READY=1")
        wait_for("the first poll", lambda: (daemon.mount / f"inbox/{ALICE}/before.txt").exists())
        after = root / "after.txt"
        after.write_text("new\n")
        alice.send(after, BOB)
        daemon.mount.refresh()
        wait_for("a notification", lambda: session_bus.received, timeout=30)
    assert [body[3:5] for body in session_bus.received] == [("New file", f"after.txt from {ALICE}")]
