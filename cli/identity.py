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
from dockercomms.core.errors import ConfigError, DockerCommsError

if TYPE_CHECKING:
    from dockercomms.core.config import Settings
    from dockercomms.core.contact_card import ContactCard
    from dockercomms.core.paths import Paths
    from dockercomms.core.trust import Contact, TrustEntry, TrustPolicy
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
    if args.storage_config is not None:
        asked["storage_config"] = setting_value("storage_config", args.storage_config, base)
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
        result: dict[str, object] = {"identity": identity, "config": str(paths.config_file)}
        result |= _age_key_and_card(args, publish_existing=False)
        emit(args, result, _already)
        return 0

    settings = replace(base, identity=identity, **asked).validate()  # type: ignore[arg-type]
    policy = TrustPolicy.load(paths.trust_file)
    result = {"identity": identity, "config": str(paths.config_file)}
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
    result |= _age_key_and_card(args, publish_existing=True)
    emit(args, result, lambda r: "\n".join(f"{k}: {v}" for k, v in r.items()))
    return 0


def _age_key_and_card(args: argparse.Namespace, *, publish_existing: bool) -> dict[str, object]:
    """Make my age identity if I have none; publish my card if asked or the key is new.

    A card that cannot be published (no registry yet, no credentials, no
    Sigstore token) is not a failed ``init``: it says how to publish it later.
    """
    from dockercomms.core.cards import age_identity, publish_my_card, quick

    workspace = _workspace()
    keys, made = age_identity(workspace)
    result: dict[str, object] = {
        "age_key": str(workspace.paths.age_identity_file),
        "age_recipient": keys.recipient,
    }
    if made and not publish_existing and not args.json:
        warn(f"dockercomms: made an age key to open sealed messages: {keys.recipient}")
    if args.no_publish or not (made or publish_existing):
        return result
    try:
        published = publish_my_card(workspace, quick(None), keys)
    except DockerCommsError as exc:
        warn(
            f"dockercomms: warning: my card is not published ({exc.diagnostics()}); "
            "publish it with 'dockercomms card publish'"
        )
        result["card"] = None
    else:
        result["card"] = published.tag
    return result


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


def _already(result: dict[str, object]) -> str:
    lines = [f"already set up as {result['identity']} ({result['config']})"]
    if "card" in result:
        lines.append(f"card: {result['card'] or 'not published'}")
    return "\n".join(lines)


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
    """Print my contact card (or, with ``--pem``, only my public key) for others to trust."""
    from dockercomms.core.cards import my_card
    from dockercomms.core.keys import signing_key

    workspace = _workspace()
    if args.pem:
        if workspace.settings.signing != "key":
            raise ConfigError("a keyless identity has no public key; 'key export' writes its card")
        sys.stdout.write(signing_key(workspace.paths.key_file).public_pem.decode())
        return 0
    if not workspace.paths.age_identity_file.exists():
        raise ConfigError(
            f"no age key yet at {workspace.paths.age_identity_file}, so no card: "
            f"'dockercomms init --identity {workspace.identity}' adds one "
            "('key export --pem' prints only the signing key)"
        )
    sys.stdout.write(my_card(workspace).text())
    return 0


def cmd_key_rotate(args: argparse.Namespace) -> int:
    """A new age key (the old ones kept), then my card with it published."""
    from dockercomms.core.cards import publish_my_card, rotate_age_identity

    if not args.age:
        raise ConfigError("key rotate needs --age (the signing key does not rotate here)")
    workspace = _workspace()
    workspace.identity_token = args.identity_token
    keys = rotate_age_identity(workspace)
    result: dict[str, object] = {
        "age_recipient": keys.recipient,
        "kept": len(keys.keys) - 1,
        "card": None,
    }
    try:
        result["card"] = publish_my_card(workspace, None, keys).tag
    except DockerCommsError as exc:
        warn(
            f"dockercomms: warning: my new card is not published ({exc.diagnostics()}); "
            "publish it with 'dockercomms card publish', and until then give peers "
            "'dockercomms key export'"
        )
    emit(
        args,
        result,
        lambda r: (
            f"age key: {r['age_recipient']} (kept {r['kept']} older to open older "
            f"messages)\ncard: {r['card'] or 'not published'}"
        ),
    )
    return 0


def cmd_key_fingerprint(args: argparse.Namespace) -> int:
    """Print my key's fingerprint (the bundle hint)."""
    from dockercomms.core.keys import signing_key

    workspace = _workspace()
    print(signing_key(workspace.paths.key_file).fingerprint)
    return 0


def cmd_trust_add(args: argparse.Namespace) -> int:
    """Trust a card, a key or a keyless identity for a sender name; and its sealing facts.

    ``--key FILE`` takes a card too (``key export`` writes one). A card names
    its sender, which must be NAME: a message from it carries that name. With
    neither a card, a key nor an identity, NAME must be trusted already and
    only ``--age`` and ``--require-sealed`` change.
    """
    from dockercomms.core.contact_card import trust_card
    from dockercomms.core.names import check_name
    from dockercomms.core.trust import TrustPolicy

    name = check_name(args.name, "trust name")
    workspace = _workspace()
    keyless = args.identity or args.issuer or args.sigstore_trust
    if args.card and (args.key or keyless):
        raise ConfigError("--card does not go with --key, --identity, --issuer or --sigstore-trust")
    if args.key and keyless:
        raise ConfigError("--key does not go with --identity, --issuer or --sigstore-trust")
    card = _card_file(args.card) if args.card else None
    pem = None
    if args.key:
        card, pem = _key_file(args.key)
    if card is not None and args.age:
        raise ConfigError("a card names its age key; --age goes with --key PEM or alone")
    age = _age_recipient(args.age) if args.age else None
    with TrustPolicy.editing(workspace.paths.trust_file) as policy:
        if card is not None:
            entry = trust_card(policy, name, card)
            if entry.kind == "keyless":
                _warn_about_issuer(entry.issuer)
        elif pem is not None:
            entry = policy.add_key(name, pem)
        elif args.identity or args.issuer:
            entry = policy.add_identity(
                name, args.identity or "", args.issuer or "", sigstore_trust=_instance(args)
            )
            _warn_about_issuer(entry.issuer)
        elif age is None and args.require_sealed is None:
            raise ConfigError(
                "trust add needs --card FILE, --key FILE, or --identity and --issuer "
                "(or, for a trusted name, --age or --require-sealed)"
            )
        elif not policy.is_trusted(name):
            raise ConfigError(
                f"'{name}' is not trusted yet: give its card (--card FILE) or its signing "
                "key (--key FILE) first"
            )
        else:
            entry = None
        if age is not None:
            from datetime import UTC, datetime

            # A recipient typed by hand beats repository cards made before now.
            policy.accept_card(name, age, datetime.now(UTC).replace(microsecond=0), "manual")
        if args.require_sealed is not None:
            policy.set_require_sealed(name, args.require_sealed)
        contact = policy.contact(name)
    result = (asdict(entry) if entry is not None else {"name": name}) | {"contact": asdict(contact)}
    emit(args, result, lambda _: _trusted_text(entry, contact))
    return 0


def _trusted_text(entry: TrustEntry | None, contact: Contact) -> str:
    lines = [f"trusted {entry.describe()}"] if entry is not None else []
    lines.append(f"{contact.name}: {_sealing(contact)}")
    return "\n".join(lines)


def _sealing(contact: Contact) -> str:
    """What ``trust list`` says of a name's sealing facts."""
    if contact.age_recipient:
        text = f"sealed to {contact.age_recipient} ({contact.source}"
        if contact.card_created_at:
            text += f", {contact.card_created_at}"
        text += ")"
    else:
        text = "no age key: cannot receive sealed messages"
    if contact.require_sealed:
        text += "; requires sealed messages"
    return text


def _instance(args: argparse.Namespace) -> str:
    """The Sigstore instance of a keyless entry; empty for my own, whatever it becomes."""
    if not args.sigstore_trust:
        return ""
    from dockercomms.core.config import check_sigstore_trust

    return check_sigstore_trust(args.sigstore_trust, signing=False)


def _read(where: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if where == "-" else Path(where).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror}") from None


def _card_file(where: str) -> ContactCard:
    from dockercomms.core.contact_card import MAX_CARD_BYTES, parse_card

    data = _read(where)[: MAX_CARD_BYTES + 1]
    try:
        return parse_card(data)
    except ConfigError as exc:
        raise ConfigError(f"{'standard input' if where == '-' else where}: {exc}") from None


def _key_file(where: str) -> tuple[ContactCard | None, bytes | None]:
    """The card or the PEM in ``where`` ('-' for stdin): one plain sentence if it is neither."""
    from dockercomms.core.contact_card import K_VERSION, MAX_CARD_BYTES, parse_card
    from dockercomms.core.keys import check_public_key

    data = _read(where)
    what = "standard input" if where == "-" else where
    if f"{K_VERSION}:".encode() in data[: MAX_CARD_BYTES + 1]:
        try:
            return parse_card(data[: MAX_CARD_BYTES + 1]), None
        except ConfigError as exc:
            raise ConfigError(f"{what}: {exc}") from None
    try:
        check_public_key(data)
    except ConfigError as exc:
        raise ConfigError(
            f"{what}: {exc}; nor a contact card ('dockercomms key export' writes one)"
        ) from None
    return None, data


def _age_recipient(text: str) -> str:
    from dockercomms.core.age_keys import recipient_problem

    problem = recipient_problem(text)
    if problem is not None:
        raise ConfigError(f"--age: {problem}")
    return text


def cmd_trust_list(args: argparse.Namespace) -> int:
    """List trust entries, with each name's sealing facts (who can receive sealed)."""
    workspace = _workspace()
    policy = workspace.trust_policy()
    contacts = {e.name: policy.contact(e.name) for e in policy.entries}
    mine = _my_contact(workspace)
    if mine is not None:
        contacts[mine.name] = mine
    rows = [
        asdict(e)
        | {"public_key": None}
        | {k: v for k, v in asdict(contacts[e.name]).items() if k != "name"}
        for e in policy.entries
    ]

    def text(_: object) -> str:
        lines = []
        for entry in policy.entries:
            lines.append(f"{entry.describe()}\t{_sealing(contacts[entry.name])}")
        for group, members in sorted(policy.groups.items()):
            lines.append(f"{group}\tgroup\t{' '.join(members)}")
        return "\n".join(lines) or "(no trusted signers)"

    emit(args, rows, text)
    return 0


def _my_contact(workspace: Workspace) -> Contact | None:
    """Me as ``trust list`` shows me: sealed to my own current age key (source ``mine``)."""
    from dockercomms.core.age_keys import load_identity_file

    try:
        keys = load_identity_file(workspace.paths.age_identity_file)
    except ConfigError:
        return None
    known = workspace.trust_policy().contact(workspace.identity)
    return replace(known, age_recipient=keys.recipient, source="mine", card_created_at="")


def cmd_trust_remove(args: argparse.Namespace) -> int:
    """Remove a sender's entries (or one of them with --match)."""
    from dockercomms.core.trust import TrustPolicy

    workspace = _workspace()
    left: list[str] = []
    with TrustPolicy.editing(workspace.paths.trust_file) as policy:
        gone = policy.remove(args.name, match=args.match)
        if not gone:
            raise ConfigError(f"no trust entry for {args.name!r}")
        if not policy.is_trusted(args.name):
            left = policy.forget(args.name)  # its age key and groups go with its last entry
    lines = [f"removed {e.describe()}" for e in gone]
    lines += [f"left group {group}" for group in left]
    emit(args, [asdict(e) for e in gone], lambda _: "\n".join(lines))
    return 0


def add_parsers(sub: Subcommands, common: CommandParser) -> None:
    """Register the identity commands."""
    _add_init(sub, common)
    _add_config(sub, common)

    key = sub.add_parser(
        "key",
        help="my keys and contact card",
        description="My contact card (name, signing key or keyless identity, age key) for\n"
        "peers to trust, and a new age key.",
    ).add_subparsers(dest="key_cmd", required=True, metavar="ACTION")
    k = key.add_parser(
        "export",
        parents=[common],
        help="print my contact card",
        description="Print my contact card on standard output: my name, my signing key (or\n"
        "keyless identity and issuer) and my age key, one small text file. Give it to the\n"
        "people you send to: 'dockercomms trust add YOU --card FILE' (or --key FILE)\n"
        "trusts it, and they can seal to you at once. --pem prints only the signing key.",
        examples=["dockercomms key export > alice.card", "dockercomms key export --pem"],
    )
    k.add_argument(
        "--pem", action="store_true", help="only my public signing key, as PEM (key pairs)"
    )
    k.set_defaults(func=cmd_key_export)
    k = key.add_parser(
        "rotate",
        parents=[common],
        help="make a new age key and publish my card with it",
        description="Make a new age key, keeping the old ones in the same file to open\n"
        "messages sealed to them, and publish my card with the new key to the repository:\n"
        "peers who trust me take it from there before their next sealed message.",
        examples=["dockercomms key rotate --age"],
    )
    k.add_argument("--age", action="store_true", help="rotate my age key (required)")
    k.add_argument(
        "--identity-token",
        metavar="JWT",
        help="keyless: OIDC token to sign the new card (default: $SIGSTORE_ID_TOKEN, then "
        "the CI's ambient token)",
    )
    k.set_defaults(func=cmd_key_rotate)
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
        "there first). A name may have several signers (key rotation). A card also\n"
        "gives NAME's age key, so messages to NAME are sealed; without one, NAME's card\n"
        "in the repository gives it, once it verifies as NAME.",
        examples=[
            "dockercomms trust add bob@example.com --card bob.card",
            "dockercomms trust add bob@example.com --key bob.pub --age age1...",
            "dockercomms trust add bob@example.com --require-sealed",
            "dockercomms trust add ci --identity "
            "https://github.com/ORG/REPO/.github/workflows/send.yml@refs/heads/main "
            "--issuer https://token.actions.githubusercontent.com",
        ],
    )
    t.add_argument("name", help="the sender name this signer may send as (the peer's --identity)")
    t.add_argument(
        "--card",
        metavar="FILE",
        help="a contact card ('dockercomms key export' writes one), '-' for standard input",
    )
    t.add_argument(
        "--key",
        metavar="FILE",
        help="PEM public key file, or a contact card; '-' for standard input",
    )
    t.add_argument(
        "--age",
        metavar="AGE1...",
        help="the age recipient to seal to (with --key PEM, or alone for a trusted name)",
    )
    sealed = t.add_mutually_exclusive_group()
    sealed.add_argument(
        "--require-sealed",
        dest="require_sealed",
        action="store_true",
        default=None,
        help="reject plaintext messages from NAME (exit 2)",
    )
    sealed.add_argument(
        "--no-require-sealed",
        dest="require_sealed",
        action="store_false",
        help="accept plaintext messages from NAME again",
    )
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
        "identity, issuer and Sigstore instance; then whether NAME can receive sealed\n"
        "messages: its age key, where it came from (card, manual, repository) and the\n"
        "card's date; and whether NAME must send sealed. Then the groups. Problems with\n"
        "entries written by older versions (invalid names, one signer under two names)\n"
        "are reported on stderr.",
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
        "default) or keyless Sigstore signing, trust in my own signer, an age key to open\n"
        "sealed messages, and my signed card in the repository (so peers who trust me\n"
        "can seal to me). NAME is how others address me and trust me: letters, digits\n"
        "and . _ - + @, such as an e-mail address. Run again, init changes no setting\n"
        "(use 'config set') but adds an age key if there is none and publishes its card;\n"
        "with --force it rewrites what this command line gives and keeps everything else.",
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
        help="default repository: host[:port]/name, https://host/name, oci-layout:DIR or "
        "storage:NAME (default: the embedded registry)",
    )
    p.add_argument(
        "--storage-config",
        metavar="FILE",
        help="for a storage:NAME repository: a distribution config.yml whose storage: "
        "section says where (stored as an absolute path)",
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
    p.add_argument(
        "--no-publish",
        action="store_true",
        help="do not publish my card to the repository now ('dockercomms card publish' "
        "does it later)",
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
