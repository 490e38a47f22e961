"""Flags every registry-touching command shares, turned into ``RegistryOptions``.

Credentials: ``--username`` with ``--password-stdin`` beats
``DOCKERCOMMS_REGISTRY_USER``/``DOCKERCOMMS_REGISTRY_PASSWORD``, which beat the docker
config (``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``). There is no
``--password`` flag on purpose: a password in argv is visible to every local user.

Building the parser must stay cheap (every CLI call does it), so the registry
plumbing (requests, oras, the workspace) is imported only in :func:`registry_options`,
which hands the flags to ``RegistryOptions.from_flags``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dockercomms.cli.parsing import CommandParser
from dockercomms.core.errors import ConfigError

if TYPE_CHECKING:
    from dockercomms.core.workspace import RegistryOptions


def registry_parser() -> CommandParser:
    """A parent parser with ``--repo``, TLS and credential flags."""
    parser = CommandParser(add_help=False)
    group = parser.add_argument_group("registry")
    group.add_argument(
        "--repo",
        help="host[:port]/name, https://host/name, oci-layout:DIR, or storage:NAME "
        "(default: settings, else the embedded registry)",
    )
    group.add_argument(
        "--storage-config",
        metavar="FILE",
        help="distribution config.yml whose storage: section holds storage:NAME "
        "(REGISTRY_STORAGE_* variables override it)",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help="plain HTTP to a non-loopback host (never skips TLS verification)",
    )
    group.add_argument(
        "--ca-file",
        metavar="FILE",
        help="PEM CA bundle to verify the registry with (default: the system CAs)",
    )
    group.add_argument(
        "--username",
        metavar="USER",
        help="registry user name, password from --password-stdin (default: "
        "$DOCKERCOMMS_REGISTRY_USER, then the docker config's credentials)",
    )
    group.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the registry password (or token) from standard input",
    )
    return parser


def registry_options(args: argparse.Namespace) -> RegistryOptions:
    """``RegistryOptions`` from parsed flags; reads the password from stdin if asked."""
    from dockercomms.core.workspace import RegistryOptions

    if args.ca_file and not Path(args.ca_file).is_file():
        raise ConfigError(f"--ca-file {args.ca_file}: no such file")
    user, password = _flag_credentials(args)
    return RegistryOptions.from_flags(
        repository=args.repo or "",
        insecure=args.insecure,
        ca_file=args.ca_file,
        storage_config=getattr(args, "storage_config", None) or "",
        user=user,
        password=password,
        source="--username/--password-stdin",
    )


def _flag_credentials(args: argparse.Namespace) -> tuple[str | None, str | None]:
    username: str | None = getattr(args, "username", None)
    from_stdin: bool = getattr(args, "password_stdin", False)
    if username is None and not from_stdin:
        return None, None
    if not username or not from_stdin:
        raise ConfigError("--username and --password-stdin go together")
    # Like ``docker login --password-stdin``: everything up to the final newline.
    password = sys.stdin.read().rstrip("\r\n")
    if not password:
        raise ConfigError("--password-stdin: standard input held no password")
    return username, password
