"""The ``dockercomms`` command: parse, dispatch, and map errors to exit codes once.

Every call builds the whole command tree, and ``send``/``recv`` are timed against
a one-second floor, so the command modules import only argparse-level things at
their top; each command imports the engine, FUSE, the syncer or rich when it
runs (tests/test_cli_startup.py holds that line).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from dockercomms.cli import demo, doctor_cmd, identity, messaging, mount_cmd, service_cmd, sync_cmd
from dockercomms.cli.registry_flags import registry_parser
from dockercomms.core.errors import DockerCommsError, exit_code_for


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    common.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser = argparse.ArgumentParser(
        prog="dockercomms",
        description="An OCI registry repository as a signed, verified drop folder.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    identity.add_parsers(sub, common)
    registry = registry_parser()
    messaging.add_parsers(sub, common, registry)
    sync_cmd.add_parsers(sub, common, registry)
    mount_cmd.add_parsers(sub, common, registry)
    service_cmd.add_parsers(sub, common, registry)
    doctor_cmd.add_parsers(sub, common, registry)
    demo.add_parsers(sub, common)
    return parser


def _journal_logging() -> None:
    """Journal-style log lines when stderr is the journal.

    ``sdnotify`` imports trio, so it is loaded only when ``$JOURNAL_STREAM`` is
    set at all (under systemd), never for a command run from a shell or script.
    """
    if not os.environ.get("JOURNAL_STREAM"):
        return
    from dockercomms.fsmount.sdnotify import use_journal_format

    use_journal_format()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (SPEC section 7)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    verbosity = getattr(args, "verbose", 0)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbosity, 2),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    _journal_logging()
    try:
        code: int = args.func(args)
    except DockerCommsError as exc:
        print(f"dockercomms: error: {exc.diagnostics()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dockercomms: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"dockercomms: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    return code


def run() -> None:
    """Console-script wrapper."""
    sys.exit(main())
