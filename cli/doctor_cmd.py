"""``doctor``: which backend and storage commands use here, and can we read and write it.

The diagnosis is ``core.doctor``'s; this module shows it. Only argparse-level
imports at the top: building the parser must stay cheap.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from dockercomms.cli.output import emit
from dockercomms.cli.parsing import CommandParser, Subcommands
from dockercomms.cli.registry_flags import registry_options

if TYPE_CHECKING:
    from dockercomms.core.doctor import Diagnosis


def cmd_doctor(args: argparse.Namespace) -> int:
    """Describe the backend, then check that it can be read and written."""
    from dockercomms.core.doctor import diagnose
    from dockercomms.core.status import to_json
    from dockercomms.core.workspace import Workspace

    diagnosis = diagnose(Workspace.load(), registry_options(args))
    result: dict[str, Any] = to_json(diagnosis) | {"ok": diagnosis.exit_code == 0}
    emit(args, result, lambda _: _text(diagnosis))
    return diagnosis.exit_code


def _text(diagnosis: Diagnosis) -> str:
    lines = [f"repository: {diagnosis.repository}", f"backend: {diagnosis.backend}"]
    for key in ("driver", "location", "config", "config_error"):
        value = getattr(diagnosis, key)
        if value is not None:
            lines.append(f"{key.replace('_', ' ')}: {value}")
    for check in diagnosis.checks:
        verdict = "ok" if check.ok else "FAILED"
        lines.append(f"{check.check}: {verdict} ({check.detail})")
    return "\n".join(lines)


def add_parsers(
    sub: Subcommands,
    common: CommandParser,
    registry: CommandParser,
) -> None:
    """Register ``doctor``."""
    d = sub.add_parser(
        "doctor",
        parents=[common, registry],
        help="which backend and storage are used, and can they be read and written",
        description="Says which repository the other commands would use (--repo, else the\n"
        "settings, else the embedded registry), its backend (embedded OCI layout, a\n"
        "registry over HTTP(S), or a registry's storage with no server) and where it\n"
        "lives, then checks that it can be read (the tag list) and written (a probe\n"
        "that stores nothing). Exits with the first failed check's code.",
        examples=[
            "dockercomms doctor",
            "dockercomms doctor --repo storage:team/comms --storage-config config.yml --json",
        ],
    )
    d.set_defaults(func=cmd_doctor)
