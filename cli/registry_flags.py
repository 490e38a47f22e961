"""Flags every registry-touching command shares, turned into ``RegistryOptions``."""

from __future__ import annotations

import argparse

from dockercomms.core.workspace import RegistryOptions


def registry_parser() -> argparse.ArgumentParser:
    """A parent parser with ``--repo``, ``--insecure`` and ``--ca-file``."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("registry")
    group.add_argument(
        "--repo",
        help="host[:port]/name, or oci-layout:DIR (default: settings, else the embedded registry)",
    )
    group.add_argument("--insecure", action="store_true", help="plain HTTP to a non-loopback host")
    group.add_argument("--ca-file", help="CA bundle for the registry's TLS certificate")
    return parser


def registry_options(args: argparse.Namespace) -> RegistryOptions:
    """``RegistryOptions`` from parsed flags."""
    return RegistryOptions(
        repository=args.repo or "",
        insecure=args.insecure,
        ca_file=args.ca_file,
    )
