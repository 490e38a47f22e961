"""The ``dockercomms`` command: parse, dispatch, and map errors to exit codes once.

Every call builds the whole command tree, and ``send``/``recv`` are timed against
a one-second floor, so the command modules import only argparse-level things at
their top; each command imports the engine, FUSE, the syncer or rich when it
runs (tests/e2e/test_cli_startup.py holds that line).

A reader that goes away (``dockercomms ls | head -1``) ends the command quietly
with 141 (128 + SIGPIPE), what a shell reports for any Unix tool in that place.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from dockercomms.cli import (
    card_cmd,
    demo,
    doctor_cmd,
    gc_cmd,
    group_cmd,
    identity,
    messaging,
    mount_cmd,
    service_cmd,
    status_cmd,
    sync_cmd,
)
from dockercomms.cli.parsing import EXIT_CODES, CommandParser
from dockercomms.cli.registry_flags import registry_parser
from dockercomms.core.errors import DockerCommsError, exit_code_for

DESCRIPTION = """\
An OCI registry repository as a signed, verified drop folder.

Files you send are pushed as signed OCI artifacts; files sent to you are verified
(signature, signer, every chunk) before a byte is written or shown. Start with
'dockercomms demo', then 'dockercomms init --identity NAME'. Every command has
its own --help with an example."""

EXAMPLES = """\
examples:
  dockercomms demo
  dockercomms init --identity alice@example.com
  dockercomms send report.pdf --recipient bob@example.com"""


def build_parser() -> CommandParser:
    """The whole command tree."""
    common = CommandParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    common.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    parser = CommandParser(
        prog="dockercomms", description=DESCRIPTION, epilog=f"{EXIT_CODES}\n\n{EXAMPLES}"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    identity.add_parsers(sub, common)
    group_cmd.add_parsers(sub, common)
    registry = registry_parser()
    card_cmd.add_parsers(sub, common, registry)
    messaging.add_parsers(sub, common, registry)
    sync_cmd.add_parsers(sub, common, registry)
    mount_cmd.add_parsers(sub, common, registry)
    service_cmd.add_parsers(sub, common, registry)
    status_cmd.add_parsers(sub, common)
    gc_cmd.add_parsers(sub, common, registry)
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
    try:
        return _main(argv)
    except BrokenPipeError:
        return _reader_gone()


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error (already printed)
        sys.stdout.flush()
        return exc.code if isinstance(exc.code, int) else 1
    verbosity = getattr(args, "verbose", 0)
    root = logging.getLogger()
    level_before = root.level
    handler = _log_to_stderr(logging.WARNING - 10 * min(verbosity, 2))
    _journal_logging()
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe is reported here, not at exit
    except BrokenPipeError:
        raise
    except DockerCommsError as exc:
        print(f"dockercomms: error: {exc.diagnostics()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dockercomms: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"dockercomms: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    finally:
        root.removeHandler(handler)
        root.setLevel(level_before)
    return code


def _log_to_stderr(level: int) -> logging.Handler:
    """Log lines on this call's stderr, for this call only.

    Unlike ``logging.basicConfig`` this also works when ``main`` runs inside a
    process that already has log handlers (tests, an embedding program), and it
    does not pile up handlers when ``main`` runs many times in one process.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def _reader_gone() -> int:
    """Stop quietly once stdout's reader has gone, as Unix tools do on SIGPIPE."""
    try:
        # What is still buffered for stdout goes nowhere, instead of failing once more
        # with a traceback when the interpreter flushes it on exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no file (an embedding program's stream)
        pass
    return 128 + signal.SIGPIPE


def run() -> None:
    """Console-script wrapper."""
    sys.exit(main())
