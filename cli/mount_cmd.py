"""``mount`` and ``umount``: the drop folder as a filesystem.

Wiring: ``main.py`` calls ``mount_cmd.add_parsers(sub, common, registry_parser())``.
The same commands run without ``main.py`` as ``python -m dockercomms.fsmount``
(that is what a background mount starts), built by :func:`standalone_parser`.

Every CLI call builds these parsers, and the mount pulls in pyfuse3 and trio, so
``fsmount`` is imported only when ``mount`` or ``umount`` runs. For the same
reason ``--cache-bytes`` defaults to None here, meaning the chunk cache's own
default.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dockercomms.cli.parsing import CommandParser, Subcommands, name_argument
from dockercomms.cli.registry_flags import registry_options, registry_parser

if TYPE_CHECKING:
    from dockercomms.fsmount.mount import MountConfig, StartReport


def _config(args: argparse.Namespace) -> MountConfig:
    from dockercomms.fsmount.chunk_cache import DEFAULT_CAP_BYTES
    from dockercomms.fsmount.mount import MountConfig

    cache_bytes = DEFAULT_CAP_BYTES if args.cache_bytes is None else args.cache_bytes
    return MountConfig(
        mountpoint=Path(args.mountpoint),
        default_recipient=args.to,
        poll_seconds=args.poll,
        receipts=args.receipts,
        registry=registry_options(args),
        cache_bytes=cache_bytes,
        drain_seconds=args.drain_timeout,
        fuse_debug=args.fuse_debug,
        whole_file=args.whole_file,
    )


def add_behaviour_flags(parser: argparse.ArgumentParser, *, poll_default: float | None) -> None:
    """What the mount does: the flags ``mount`` and ``service install`` share."""
    parser.add_argument(
        "--to",
        type=name_argument("recipient"),
        metavar="RECIPIENT",
        help="recipient of files put directly in outbox/ (default: none; such files wait, "
        "and outbox/NAME/FILE always goes to NAME)",
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=poll_default,
        metavar="SECONDS",
        help="seconds between inbox polls (default 5)",
    )
    parser.add_argument(
        "--no-receipts",
        dest="receipts",
        action="store_false",
        help="do not send accepted/rejected receipts",
    )
    parser.add_argument(
        "--cache-bytes",
        type=int,
        metavar="BYTES",
        help="size cap of the verified chunk cache (default 2 GiB)",
    )
    parser.add_argument(
        "--whole-file",
        action="store_true",
        help="open() of an inbox file returns only once every chunk is verified, so a "
        "file opens complete or not at all (default: each chunk is verified as it is read)",
    )


def behaviour_argv(args: argparse.Namespace) -> list[str]:
    """The flags of :func:`add_behaviour_flags` that were given, as ``mount`` arguments."""
    argv = []
    if args.poll is not None:
        argv += ["--poll", str(args.poll)]
    if args.cache_bytes is not None:
        argv += ["--cache-bytes", str(args.cache_bytes)]
    if args.to:
        argv += ["--to", args.to]
    if not args.receipts:
        argv.append("--no-receipts")
    if args.whole_file:
        argv.append("--whole-file")
    return argv


def _foreground_argv(args: argparse.Namespace) -> list[str]:
    """The same mount, as a detached ``--foreground`` child."""
    argv = [sys.executable, "-m", "dockercomms.fsmount", "mount", str(Path(args.mountpoint))]
    argv += ["--drain-timeout", str(args.drain_timeout), "--foreground", *behaviour_argv(args)]
    if args.repo:
        argv += ["--repo", args.repo]
    if args.insecure:
        argv.append("--insecure")
    if args.ca_file:
        argv += ["--ca-file", args.ca_file]
    if args.fuse_debug:
        argv.append("--fuse-debug")
    argv += ["-v"] * getattr(args, "verbose", 0)
    return argv


def cmd_mount(args: argparse.Namespace) -> int:
    """Mount outbox/, inbox/, sent/ and .status at MOUNTPOINT."""
    from dockercomms.core.workspace import Workspace
    from dockercomms.fsmount.mount import StartReport, start_background

    if args.foreground:
        # A background start's child: whatever happens, its parent hears the verdict.
        report = StartReport(args.ready_fd)
        try:
            return _run_in_foreground(args, report)
        except BaseException as exc:
            report.failed(exc)
            raise
        finally:
            report.close()
    workspace = Workspace.load()
    config = _config(args)
    log_file = workspace.paths.mount_log
    pid = start_background(config, _foreground_argv(args), log_file)
    print(f"mounted {config.mountpoint} (pid {pid}, log: {log_file})")
    return 0


def _run_in_foreground(args: argparse.Namespace, report: StartReport) -> int:
    from dockercomms.core.workspace import Workspace
    from dockercomms.fsmount.mount import run_foreground

    if getattr(args, "verbose", 0) == 0:
        # The daemon's log is its only voice: say what it does, not only what fails.
        logging.getLogger("dockercomms").setLevel(logging.INFO)
    return run_foreground(_config(args), Workspace.load(), report=report)


def cmd_umount(args: argparse.Namespace) -> int:
    """Drain uploads in flight, then unmount."""
    from dockercomms.fsmount.mount import unmount

    return unmount(Path(args.mountpoint), timeout=args.timeout)


def add_parsers(
    sub: Subcommands,
    common: CommandParser,
    registry: CommandParser,
) -> None:
    """Register ``mount`` and ``umount``."""
    m = sub.add_parser(
        "mount",
        parents=[common, registry],
        help="mount the drop folder as a filesystem",
        description="Mount the drop folder at MOUNTPOINT (created if missing) and return\n"
        "once it answers; the daemon keeps running in the background. outbox/NAME/FILE\n"
        "is sent to NAME when FILE is closed (a folder made directly in outbox/ is a\n"
        "recipient's name, so mkdir outbox/bob@example.com); a file directly in\n"
        "outbox/ goes to --to. inbox/SENDER/ shows only messages whose signature\n"
        "verified; sent/ what I sent. After a crash ('Transport endpoint is not\n"
        "connected'), run umount, then mount again: nothing queued is lost.",
        examples=[
            "dockercomms mount ~/Comms --to bob@example.com",
            "dockercomms mount ~/Comms --repo ghcr.io/me/comms --poll 30",
        ],
    )
    m.add_argument("mountpoint", metavar="MOUNTPOINT", help="the folder to mount on")
    add_behaviour_flags(m, poll_default=5.0)
    m.add_argument(
        "--foreground", action="store_true", help="stay in the foreground (do not daemonize)"
    )
    m.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long unmounting waits for an upload in flight (default: 30)",
    )
    m.add_argument("--fuse-debug", action="store_true", help="libfuse debug output")
    # A background start passes its child the write end of a pipe for the verdict.
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    m.set_defaults(func=cmd_mount)

    u = sub.add_parser(
        "umount",
        parents=[common],
        help="drain uploads, then unmount",
        description="Ask the mount's daemon to finish the upload in flight, then unmount.\n"
        "A stale mount (the daemon died) is cleared. Files still queued are sent by\n"
        "the next mount.",
        examples=["dockercomms umount ~/Comms"],
    )
    u.add_argument("mountpoint", metavar="MOUNTPOINT", help="where the drop folder is mounted")
    u.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long to wait for the daemon to drain and exit (default: 120)",
    )
    u.set_defaults(func=cmd_umount)


def standalone_main(argv: list[str] | None = None) -> int:
    """``python -m dockercomms.fsmount``: the mount commands without the full CLI."""
    from dockercomms.core.errors import DockerCommsError

    args = standalone_parser().parse_args(argv)
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


def standalone_parser() -> CommandParser:
    """``mount``/``umount`` alone, for ``python -m dockercomms.fsmount``."""
    common = CommandParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    common.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser = CommandParser(prog="dockercomms")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parsers(sub, common, registry_parser())
    return parser
