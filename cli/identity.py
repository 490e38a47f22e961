"""``init``, ``key`` and ``trust``: who I am and whom I believe.

Every CLI call builds this module's parsers, so its top imports stay at the
argparse level; the commands import config, keys and trust when they run.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from dockercomms.cli.output import emit
from dockercomms.core.errors import ConfigError

if TYPE_CHECKING:
    from dockercomms.core.workspace import Workspace


def _workspace() -> Workspace:
    """The configured identity; imports the engine, so only once a command runs."""
    from dockercomms.core.workspace import Workspace

    return Workspace.load()


def cmd_init(args: argparse.Namespace) -> int:
    """Create config, a signing key (key mode) and trust my own key."""
    from dockercomms.core.config import Settings, load_settings, resolve_paths, save_settings
    from dockercomms.core.signing.keypair import (
        generate_key,
        key_hint,
        load_private_key,
        public_pem,
    )
    from dockercomms.core.trust import TrustPolicy
    from dockercomms.core.workspace import require_identity

    paths = resolve_paths()
    identity = require_identity(args.identity)
    if paths.config_file.exists() and not args.force:
        existing = load_settings(paths)
        if existing.identity != identity:
            raise ConfigError(
                f"{paths.config_file} is set up for {existing.identity!r}; "
                "pass --force to rewrite the settings"
            )
        emit(args, {"identity": identity, "config": str(paths.config_file)}, _already)
        return 0
    settings = Settings(
        identity=identity,
        repository=args.repo or "",
        signing=args.signing,
        sigstore_trust=args.sigstore_trust,
    ).validate()
    save_settings(paths, settings)
    result: dict[str, object] = {"identity": identity, "config": str(paths.config_file)}
    if settings.signing == "key":
        if paths.key_file.exists():
            key = load_private_key(paths.key_file)
        else:
            key = generate_key(paths.key_file)
        policy = TrustPolicy.load(paths.trust_file)
        policy.add_key(identity, public_pem(key.public_key()))
        policy.save(paths.trust_file)
        result |= {"key": str(paths.key_file), "fingerprint": key_hint(key.public_key())}
    result["repository"] = settings.repository or paths.default_repository
    emit(args, result, lambda r: "\n".join(f"{k}: {v}" for k, v in r.items()))
    return 0


def _already(result: dict[str, str]) -> str:
    return f"already set up as {result['identity']} ({result['config']})"


def cmd_key_export(args: argparse.Namespace) -> int:
    """Print my public key (PEM) for others to ``trust add``."""
    from dockercomms.core.signing.keypair import load_private_key, public_pem

    workspace = _workspace()
    key = load_private_key(workspace.paths.key_file).public_key()
    sys.stdout.write(public_pem(key).decode())
    return 0


def cmd_key_fingerprint(args: argparse.Namespace) -> int:
    """Print my key's fingerprint (the bundle hint)."""
    from dockercomms.core.signing.keypair import key_hint, load_private_key

    workspace = _workspace()
    print(key_hint(load_private_key(workspace.paths.key_file).public_key()))
    return 0


def cmd_trust_add(args: argparse.Namespace) -> int:
    """Trust a key or a keyless identity for a sender name."""
    workspace = _workspace()
    policy = workspace.trust_policy()
    if args.key:
        try:
            pem = sys.stdin.buffer.read() if args.key == "-" else Path(args.key).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {args.key}: {exc.strerror}") from exc
        entry = policy.add_key(args.name, pem)
    elif args.identity or args.issuer:
        entry = policy.add_identity(args.name, args.identity or "", args.issuer or "")
    else:
        raise ConfigError("trust add needs --key FILE, or --identity and --issuer")
    policy.save(workspace.paths.trust_file)
    emit(args, asdict(entry), lambda e: f"trusted {entry.describe()}")
    return 0


def cmd_trust_list(args: argparse.Namespace) -> int:
    """List trust entries."""
    policy = _workspace().trust_policy()
    emit(
        args,
        [asdict(e) | {"public_key": None} for e in policy.entries],
        lambda _: "\n".join(e.describe() for e in policy.entries) or "(no trusted signers)",
    )
    return 0


def cmd_trust_remove(args: argparse.Namespace) -> int:
    """Remove a sender's entries (or one of them with --match)."""
    workspace = _workspace()
    policy = workspace.trust_policy()
    gone = policy.remove(args.name, match=args.match)
    if not gone:
        raise ConfigError(f"no trust entry for {args.name!r}")
    policy.save(workspace.paths.trust_file)
    emit(
        args,
        [asdict(e) for e in gone],
        lambda _: "\n".join(f"removed {e.describe()}" for e in gone),
    )
    return 0


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register the identity commands."""
    p = sub.add_parser("init", parents=[common], help="create my identity, config and key")
    p.add_argument("--identity", required=True, help="my name as sender and recipient")
    p.add_argument("--repo", help="default repository (default: the embedded registry)")
    p.add_argument("--signing", choices=["key", "keyless"], default="key")
    p.add_argument(
        "--sigstore-trust",
        default="public-good",
        help="public-good, staging, or a ClientTrustConfig JSON file",
    )
    p.add_argument("--force", action="store_true", help="rewrite existing settings")
    p.set_defaults(func=cmd_init)

    key = sub.add_parser("key", help="my signing key").add_subparsers(dest="key_cmd", required=True)
    k = key.add_parser("export", parents=[common], help="print my public key (PEM)")
    k.set_defaults(func=cmd_key_export)
    k = key.add_parser("fingerprint", parents=[common], help="print my key's fingerprint")
    k.set_defaults(func=cmd_key_fingerprint)

    trust = sub.add_parser("trust", help="whom I trust").add_subparsers(
        dest="trust_cmd", required=True
    )
    t = trust.add_parser("add", parents=[common], help="trust a signer for a sender name")
    t.add_argument("name", help="the sender name this signer may use")
    t.add_argument("--key", help="PEM public key file ('-' for stdin)")
    t.add_argument("--identity", help="Sigstore certificate identity (email or URI)")
    t.add_argument("--issuer", help="OIDC issuer URL (required with --identity)")
    t.set_defaults(func=cmd_trust_add)
    t = trust.add_parser("list", parents=[common], help="list trusted signers")
    t.set_defaults(func=cmd_trust_list)
    t = trust.add_parser("remove", parents=[common], help="stop trusting a sender")
    t.add_argument("name")
    t.add_argument("--match", help="only the entry with this fingerprint or identity")
    t.set_defaults(func=cmd_trust_remove)
