"""``init``, ``config``, ``key`` and ``trust``: who I am, how I work, whom I believe.

Every CLI call builds this module's parsers, so its top imports stay at the
argparse level; the commands import config, keys and trust when they run.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from dockercomms.cli.output import emit, warn
from dockercomms.cli.parsing import CommandParser, Subcommands
from dockercomms.core.errors import ConfigError

if TYPE_CHECKING:
    from dockercomms.core.config import Settings
    from dockercomms.core.paths import Paths
    from dockercomms.core.trust import TrustPolicy
    from dockercomms.core.workspace import Workspace


def _workspace() -> Workspace:
    """The configured identity; imports the engine, so only once a command runs."""
    from dockercomms.core.workspace import Workspace

    return Workspace.load()


def cmd_init(args: argparse.Namespace) -> int:
    """Create config, a signing key (key mode) and trust in my own signer.

    Run again, it changes nothing: with the same values it says so, with others it
    refuses and names the ``config set`` commands that make each change. With
    ``--force`` it rewrites what the command line gives and keeps the rest.
    """
    from dockercomms.core.config import Settings, load_settings, save_settings, setting_value
    from dockercomms.core.paths import resolve_paths
    from dockercomms.core.trust import TrustPolicy
    from dockercomms.core.workspace import require_identity

    paths = resolve_paths()
    identity = require_identity(args.identity)
    existing = load_settings(paths) if paths.config_file.exists() else None
    base = existing or Settings(identity=identity)
    asked: dict[str, str | int | bool] = {}
    if args.repo is not None:
        asked["repository"] = setting_value("repository", args.repo, base)
    if args.signing is not None:
        asked["signing"] = args.signing
    signing = str(asked.get("signing", base.signing))
    if args.sigstore_trust is not None:
        trust_base = replace(base, signing=signing)
        asked["sigstore_trust"] = setting_value("sigstore_trust", args.sigstore_trust, trust_base)
    elif "signing" in asked and signing == "keyless":
        setting_value("signing", "keyless", base)  # can my trust config sign?
    if signing != "keyless" and (args.cert_identity or args.issuer):
        raise ConfigError("--cert-identity and --issuer go with --signing keyless")

    if existing is not None and not args.force:
        _refuse_changes(paths.config_file, existing, identity, asked, args)
        emit(args, {"identity": identity, "config": str(paths.config_file)}, _already)
        return 0

    settings = replace(base, identity=identity, **asked).validate()  # type: ignore[arg-type]
    policy = TrustPolicy.load(paths.trust_file)
    result: dict[str, object] = {"identity": identity, "config": str(paths.config_file)}
    old_name = existing.identity if existing is not None else None
    if settings.signing == "key":
        result |= _trust_my_key(paths, policy, identity, old_name)
    else:
        result |= _trust_my_keyless_identity(args, policy, settings, old_name)
    save_settings(paths, settings)
    policy.save(paths.trust_file)
    result["signing"] = settings.signing
    if settings.signing == "keyless" or settings.sigstore_trust != "public-good":
        result["sigstore_trust"] = settings.sigstore_trust
    result["repository"] = settings.repository or paths.default_repository
    emit(args, result, lambda r: "\n".join(f"{k}: {v}" for k, v in r.items()))
    return 0


def _refuse_changes(
    config_file: Path,
    existing: Settings,
    identity: str,
    asked: dict[str, str | int],
    args: argparse.Namespace,
) -> None:
    """``init`` over an existing identity: refuse anything it would silently ignore."""
    if existing.identity != identity:
        raise ConfigError(
            f"{config_file} is set up for '{existing.identity}'; "
            f"'dockercomms init --force --identity {identity}' starts over as {identity} "
            "(keys, trust and received messages are kept)"
        )
    changes = [(k, v) for k, v in asked.items() if getattr(existing, k) != v]
    if changes:
        commands = "; ".join(
            f"dockercomms config set {k} {shlex.quote(str(v))}" for k, v in changes
        )
        raise ConfigError(
            f"already set up as {identity}, and init does not change settings; "
            f"change them with: {commands}"
        )
    if args.cert_identity or args.issuer:
        raise ConfigError(
            f"already set up as {identity}, and init does not change trust; to trust "
            f"another signer for yourself: dockercomms trust add {identity} "
            "--identity CERT-IDENTITY --issuer URL"
        )


def _trust_my_key(
    paths: Paths, policy: TrustPolicy, identity: str, old_name: str | None
) -> dict[str, object]:
    """Make (or reuse) my P-256 key and trust it as me, as every peer will."""
    from dockercomms.core.keys import signing_key

    key = signing_key(paths.key_file, create=True)
    fingerprint = key.fingerprint
    if old_name is not None and old_name != identity:
        policy.remove(old_name, match=fingerprint)  # my key moves to my new name
    policy.add_key(identity, key.public_pem)
    return {"key": str(paths.key_file), "fingerprint": fingerprint}


def _trust_my_keyless_identity(
    args: argparse.Namespace, policy: TrustPolicy, settings: Settings, old_name: str | None
) -> dict[str, object]:
    """Trust my own certificate identity, as key-pair ``init`` trusts my own key.

    Without ``--issuer`` a re-run (``--force``) keeps the keyless entry I have;
    a first run needs it, since no issuer can be guessed.
    """
    identity = settings.identity
    mine = [e for e in policy.identities() if e.name in (identity, old_name)]
    if not args.issuer:
        if mine:
            return {"trusted": mine[0].describe_signer()}
        raise ConfigError(
            "keyless init trusts your own signatures, so it needs the OIDC issuer that "
            "vouches for you: --issuer URL, e.g. https://github.com/login/oauth, "
            "https://accounts.google.com, https://login.microsoftonline.com, or "
            "https://token.actions.githubusercontent.com in GitHub Actions "
            "(and --cert-identity if your certificate names you other than as "
            f"{identity!r})"
        )
    cert_identity = args.cert_identity or identity
    if "@" not in cert_identity and not args.cert_identity:
        raise ConfigError(
            f"{identity!r} is not an e-mail address: say what your signing certificate "
            "names, --cert-identity EMAIL or, in CI, the workflow URI"
        )
    _warn_about_issuer(args.issuer)
    if old_name is not None and old_name != identity:
        policy.remove(old_name, match=cert_identity)
    entry = policy.add_identity(identity, cert_identity, args.issuer)  # on my own instance
    return {"trusted": entry.describe_signer()}


def _warn_about_issuer(issuer: str) -> None:
    from dockercomms.core.trust import issuer_problem

    problem = issuer_problem(issuer)
    if problem is not None:
        warn(f"dockercomms: warning: {problem}")


def _already(result: dict[str, str]) -> str:
    return f"already set up as {result['identity']} ({result['config']})"


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print every setting and where it is stored."""
    from dockercomms.core.config import load_settings
    from dockercomms.core.paths import resolve_paths

    paths = resolve_paths()
    settings = asdict(load_settings(paths))
    emit(
        args,
        settings | {"config": str(paths.config_file)},
        lambda s: "\n".join(f"{k} = {v!r}" for k, v in s.items()),
    )
    return 0


def cmd_config_set(args: argparse.Namespace) -> int:
    """Change one setting, checked first; every other setting stays as it is."""
    from dockercomms.core.config import load_settings, save_settings, setting_value
    from dockercomms.core.paths import resolve_paths
    from dockercomms.core.trust import TrustPolicy

    paths = resolve_paths()
    settings = load_settings(paths)
    key = args.key.replace("-", "_")
    value = setting_value(key, args.value, settings)
    before = getattr(settings, key)
    changed = replace(settings, **{key: value}).validate()  # type: ignore[arg-type]
    if key == "signing" and value == "key":
        policy = TrustPolicy.load(paths.trust_file)
        _trust_my_key(paths, policy, settings.identity, None)
        policy.save(paths.trust_file)
    save_settings(paths, changed)
    if key == "signing" and value == "keyless":
        policy = TrustPolicy.load(paths.trust_file)
        if not [e for e in policy.identities() if e.name == settings.identity]:
            warn(
                "dockercomms: note: to verify your own keyless messages, trust yourself: "
                f"dockercomms trust add {settings.identity} --identity CERT-IDENTITY "
                "--issuer URL"
            )
    emit(args, {"setting": key, "before": before, "after": value}, _changed)
    return 0


def _changed(result: dict[str, object]) -> str:
    return f"{result['setting']}: {result['before']!r} -> {result['after']!r}"


def cmd_key_export(args: argparse.Namespace) -> int:
    """Print my public key (PEM) for others to ``trust add``."""
    from dockercomms.core.keys import signing_key

    workspace = _workspace()
    sys.stdout.write(signing_key(workspace.paths.key_file).public_pem.decode())
    return 0


def cmd_key_fingerprint(args: argparse.Namespace) -> int:
    """Print my key's fingerprint (the bundle hint)."""
    from dockercomms.core.keys import signing_key

    workspace = _workspace()
    print(signing_key(workspace.paths.key_file).fingerprint)
    return 0


def cmd_trust_add(args: argparse.Namespace) -> int:
    """Trust a key or a keyless identity for a sender name."""
    from dockercomms.core.names import check_name

    name = check_name(args.name, "trust name")
    workspace = _workspace()
    policy = workspace.trust_policy()
    if args.key:
        if args.identity or args.issuer or args.sigstore_trust:
            raise ConfigError("--key does not go with --identity, --issuer or --sigstore-trust")
        entry = policy.add_key(name, _public_key_file(args.key))
    elif args.identity or args.issuer:
        from dockercomms.core.config import check_sigstore_trust

        # Empty: my own instance, whatever my settings name now or later.
        instance = ""
        if args.sigstore_trust:
            instance = check_sigstore_trust(args.sigstore_trust, signing=False)
        entry = policy.add_identity(
            name, args.identity or "", args.issuer or "", sigstore_trust=instance
        )
        _warn_about_issuer(entry.issuer)
    else:
        raise ConfigError("trust add needs --key FILE, or --identity and --issuer")
    policy.save(workspace.paths.trust_file)
    emit(args, asdict(entry), lambda e: f"trusted {entry.describe()}")
    return 0


def _public_key_file(where: str) -> bytes:
    """The PEM in ``where`` ('-' for stdin), checked: one plain sentence if it is not one."""
    from dockercomms.core.keys import check_public_key

    try:
        pem = sys.stdin.buffer.read() if where == "-" else Path(where).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror}") from None
    try:
        check_public_key(pem)
    except ConfigError as exc:
        raise ConfigError(f"{'standard input' if where == '-' else where}: {exc}") from None
    return pem


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


def add_parsers(sub: Subcommands, common: CommandParser) -> None:
    """Register the identity commands."""
    _add_init(sub, common)
    _add_config(sub, common)

    key = sub.add_parser(
        "key",
        help="my signing key",
        description="Show the public half of my key-pair signing key, for peers to trust.",
    ).add_subparsers(dest="key_cmd", required=True, metavar="ACTION")
    k = key.add_parser(
        "export",
        parents=[common],
        help="print my public key (PEM)",
        description="Print my public key as PEM on standard output. Give the file to the\n"
        "people you send to: they trust it with 'dockercomms trust add YOU --key FILE'.",
        examples=["dockercomms key export > alice.pub"],
    )
    k.set_defaults(func=cmd_key_export)
    k = key.add_parser(
        "fingerprint",
        parents=[common],
        help="print my key's fingerprint",
        description="Print my key's fingerprint (base64 SHA-256 of the public key), the\n"
        "hint in every bundle I sign. Read it to a peer to check the key they trust.",
        examples=["dockercomms key fingerprint"],
    )
    k.set_defaults(func=cmd_key_fingerprint)

    trust = sub.add_parser(
        "trust",
        help="whom I trust",
        description="Whose signatures I accept, and as which sender name.",
    ).add_subparsers(dest="trust_cmd", required=True, metavar="ACTION")
    t = trust.add_parser(
        "add",
        parents=[common],
        help="trust a signer for a sender name",
        description="Accept messages from NAME when they are signed by this key, or by this\n"
        "Sigstore identity AND issuer on this Sigstore instance. One signer speaks for\n"
        "one name: a signer already trusted under another name is refused (remove it\n"
        "there first). A name may have several signers (key rotation).",
        examples=[
            "dockercomms trust add bob@example.com --key bob.pub",
            "dockercomms trust add ci --identity "
            "https://github.com/ORG/REPO/.github/workflows/send.yml@refs/heads/main "
            "--issuer https://token.actions.githubusercontent.com",
        ],
    )
    t.add_argument("name", help="the sender name this signer may send as (the peer's --identity)")
    t.add_argument("--key", metavar="FILE", help="PEM public key file, '-' for standard input")
    t.add_argument(
        "--identity",
        "--cert-identity",
        metavar="CERT-IDENTITY",
        help="keyless: the e-mail or URI the signer's Sigstore certificate names",
    )
    t.add_argument(
        "--issuer",
        metavar="URL",
        help="keyless: the OIDC issuer URL, exactly as in the certificate "
        "(required with --identity)",
    )
    t.add_argument(
        "--sigstore-trust",
        metavar="SOURCE",
        help="keyless: the signer's Sigstore instance: public-good, staging, or a "
        "ClientTrustConfig or trusted_root.json file (default: my own, the "
        "sigstore_trust setting)",
    )
    t.set_defaults(func=cmd_trust_add)
    t = trust.add_parser(
        "list",
        parents=[common],
        help="list trusted signers",
        description="List every trust entry: name, kind, and the key fingerprint or the\n"
        "identity, issuer and Sigstore instance. Problems with entries written by older\n"
        "versions (invalid names, one signer under two names) are reported on stderr.",
        examples=["dockercomms trust list --json"],
    )
    t.set_defaults(func=cmd_trust_list)
    t = trust.add_parser(
        "remove",
        parents=[common],
        help="stop trusting a sender",
        description="Remove NAME's trust entries, or only the one --match picks. Messages\n"
        "already received stay; new ones from that signer are rejected.",
        examples=["dockercomms trust remove bob@example.com --match 'z0ej+3Ud...='"],
    )
    t.add_argument("name", help="the sender name, as 'trust list' shows it")
    t.add_argument(
        "--match",
        metavar="FINGERPRINT-OR-IDENTITY",
        help="only the entry with this key fingerprint or certificate identity "
        "(default: all of NAME's entries)",
    )
    t.set_defaults(func=cmd_trust_remove)


def _add_init(sub: Subcommands, common: CommandParser) -> None:
    p = sub.add_parser(
        "init",
        parents=[common],
        help="create my identity, config and key",
        description="Set up this identity: config.toml, and a signing key (key pair, the\n"
        "default) or keyless Sigstore signing, and trust in my own signer. NAME is how\n"
        "others address me and trust me: letters, digits and . _ - + @, such as an\n"
        "e-mail address. Run again, init changes nothing (use 'config set'); with\n"
        "--force it rewrites what this command line gives and keeps everything else.",
        examples=[
            "dockercomms init --identity alice@example.com",
            "dockercomms init --identity alice@example.com --signing keyless "
            "--issuer https://github.com/login/oauth",
        ],
    )
    p.add_argument(
        "--identity",
        required=True,
        metavar="NAME",
        help="my name as sender and recipient, e.g. alice@example.com",
    )
    p.add_argument(
        "--repo",
        help="default repository: host[:port]/name, https://host/name or oci-layout:DIR "
        "(default: the embedded registry)",
    )
    p.add_argument(
        "--signing",
        choices=["key", "keyless"],
        help="key: a local ECDSA P-256 key; keyless: Sigstore, signed as my OIDC "
        "identity and logged publicly (default: key)",
    )
    p.add_argument(
        "--sigstore-trust",
        metavar="SOURCE",
        help="Sigstore instance: public-good, staging, or a ClientTrustConfig JSON file "
        "(a bare trusted_root.json will do for key-pair identities) (default: public-good)",
    )
    p.add_argument(
        "--cert-identity",
        metavar="EMAIL-OR-URI",
        help="keyless: what my signing certificate names, trusted as me "
        "(default: my NAME, if it is an e-mail address)",
    )
    p.add_argument(
        "--issuer",
        metavar="URL",
        help="keyless: the OIDC issuer that vouches for me, e.g. "
        "https://github.com/login/oauth (no default: required with --signing keyless)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="rewrite the settings given here, even for another NAME (default: refuse)",
    )
    p.set_defaults(func=cmd_init)


def _add_config(sub: Subcommands, common: CommandParser) -> None:
    config = sub.add_parser(
        "config",
        help="show or change my settings",
        description="Show or change the settings in config.toml, one at a time.",
    ).add_subparsers(dest="config_cmd", required=True, metavar="ACTION")
    c = config.add_parser(
        "show",
        parents=[common],
        help="print every setting",
        description="Print every setting of this identity and the file it is stored in.",
        examples=["dockercomms config show --json"],
    )
    c.set_defaults(func=cmd_config_show)
    c = config.add_parser(
        "set",
        parents=[common],
        help="change one setting",
        description="Change one setting after checking its value; the others stay as they\n"
        "are. Settings: repository, signing (key|keyless), sigstore_trust (public-good,\n"
        "staging or a file), chunk_bytes (bytes), compression (zstd|gzip), ttl_seconds\n"
        "(seconds). Paths are stored absolute. The identity changes with init --force.",
        examples=[
            "dockercomms config set sigstore_trust ~/private-sigstore.json",
            "dockercomms config set ttl_seconds 86400",
        ],
    )
    c.add_argument("key", metavar="KEY", help="the setting, e.g. sigstore_trust")
    c.add_argument("value", metavar="VALUE", help="its new value ('' resets repository)")
    c.set_defaults(func=cmd_config_set)
