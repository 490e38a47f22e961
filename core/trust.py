"""The trust policy: which keys and which Sigstore identities speak for which sender.

One JSON file, one list of entries. An entry's ``name`` is the sender string a
message must carry in ``dockercomms.sender`` (SPEC 5 step 6), so a valid signature
by a trusted party still cannot impersonate another trusted party. Key-pair and
keyless entries mix freely; a name may have several entries (key rotation).

Caveats first:

* One signer speaks for one name. A key (or a keyless identity and issuer) under
  two names could only ever send as the first, so :meth:`TrustPolicy.add_key` and
  :meth:`TrustPolicy.add_identity` refuse the second and say how to move it.
* New names follow ``core.names``. A file written before that rule, or before
  the one-signer rule, still loads and still verifies; :meth:`TrustPolicy.problems`
  says what is wrong, and :meth:`TrustPolicy.load` logs it once per process.
* Sealing facts are per *name*, not per signing entry (SPEC 9): a name's age
  recipient, where it came from, the ``created-at`` of the newest card accepted
  for it (a card older than that is a rollback and refused), and whether that
  name must send sealed. They live in :class:`Contact`; groups (``outbox/team/``)
  are names of names in ``groups``. A file without those sections loads as
  "no age key known, nothing required, no groups".
* A keyless entry may name its Sigstore instance (``sigstore_trust``), so senders
  on the public instance and on a private one can both be trusted; without one
  (and in entries written before the field) it is the receiver's own instance.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shlex
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from dockercomms.core import protocol
from dockercomms.core._internal.signing.keypair import PinnedKey, key_hint, load_public_key
from dockercomms.core.errors import ConfigError
from dockercomms.core.names import check_name, name_problem
from dockercomms.core.untrusted import shown

log = logging.getLogger(__name__)

TRUST_FILE_VERSION = 1

#: Problems already logged by :meth:`TrustPolicy.load` (path, text): a mount or
#: ``ls`` reloads the file often, and each problem is worth saying once.
_reported: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class TrustEntry:
    """One trusted signer.

    Attributes:
        name: the sender name this signer may send as.
        kind: ``key`` (pinned ECDSA P-256 key) or ``keyless`` (Sigstore identity).
        public_key: PEM, for ``key`` entries.
        fingerprint: the key's bundle hint (base64 sha256 of its DER SPKI).
        identity: certificate SAN (email or URI), for ``keyless`` entries.
        issuer: OIDC issuer URL, for ``keyless`` entries; required with identity.
        sigstore_trust: for ``keyless`` entries, the Sigstore instance whose trusted
            root verifies them (``public-good``, ``staging`` or an absolute file
            path); empty for the receiver's own (``sigstore_trust`` in config.toml),
            so moving that file needs one ``config set``, not one edit per entry.
    """

    name: str
    kind: Literal["key", "keyless"]
    public_key: str = ""
    fingerprint: str = ""
    identity: str = ""
    issuer: str = ""
    sigstore_trust: str = ""

    def describe(self) -> str:
        """One line for ``trust list``."""
        if self.kind == "key":
            return f"{self.name}\tkey\t{self.fingerprint}"
        instance = self.sigstore_trust or "mine"
        return f"{self.name}\tkeyless\t{self.identity} via {self.issuer}\t(sigstore: {instance})"

    @property
    def signer(self) -> tuple[str, ...]:
        """Who signs: the key, or the identity and issuer, whatever the name."""
        if self.kind == "key":
            return ("key", self.fingerprint)
        return ("keyless", self.identity, self.issuer)

    @property
    def match(self) -> str:
        """What ``trust remove NAME --match`` takes to pick this entry."""
        return self.fingerprint if self.kind == "key" else self.identity

    def describe_signer(self) -> str:
        """The signer in words, for messages."""
        if self.kind == "key":
            return f"key {self.fingerprint}"
        return f"{self.identity} via {self.issuer}"


@dataclass(frozen=True)
class Contact:
    """What I know about sealing to, and receiving from, one trusted name (SPEC 9).

    Attributes:
        name: the trusted name (the key of ``contacts`` in the trust file).
        age_recipient: the ``age1…`` recipient to seal to; empty when unknown.
        source: where that recipient came from: ``card`` (a card file given to
            ``trust add --card``), ``manual`` (``--age``) or ``repository`` (a
            signed card verified in the repository, SPEC 9.1); empty when unknown.
        card_created_at: the ``created-at`` (ISO 8601, UTC) of the newest card
            accepted for this name, from a file or the repository; for a
            recipient given by hand (``manual``), when it was given; empty when
            none. A card older than this is refused as a rollback.
        require_sealed: a plaintext message from this name is rejected.
    """

    name: str
    age_recipient: str = ""
    source: str = ""
    card_created_at: str = ""
    require_sealed: bool = False


@dataclass
class TrustPolicy:
    """All trust entries, contacts and groups, loaded from and saved to one file."""

    entries: list[TrustEntry] = field(default_factory=list)
    contacts: dict[str, Contact] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> TrustPolicy:
        """Read the trust file; a missing file is an empty policy."""
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read trust file {path}: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("version") != TRUST_FILE_VERSION:
            raise ConfigError(f"{path} is not a version {TRUST_FILE_VERSION} trust file")
        try:
            policy = cls(
                [TrustEntry(**entry) for entry in doc.get("entries", [])],
                {
                    name: Contact(name=name, **facts)
                    for name, facts in doc.get("contacts", {}).items()
                },
                {name: tuple(members) for name, members in doc.get("groups", {}).items()},
            )
        except (TypeError, AttributeError) as exc:
            raise ConfigError(f"{path}: malformed entry: {exc}") from exc
        for problem in policy.problems():
            if (str(path), problem) not in _reported:
                _reported.add((str(path), problem))
                log.warning("%s: %s", path, problem)
        return policy

    def save(self, path: Path) -> None:
        """Atomically replace the trust file."""
        doc: dict[str, object] = {
            "version": TRUST_FILE_VERSION,
            "entries": [asdict(e) for e in self.entries],
        }
        if self.contacts:
            doc["contacts"] = {
                name: {k: v for k, v in asdict(contact).items() if k != "name"}
                for name, contact in sorted(self.contacts.items())
            }
        if self.groups:
            doc["groups"] = {name: list(members) for name, members in sorted(self.groups.items())}
        write_atomic(path, json.dumps(doc, indent=2).encode() + b"\n", mode=0o644)

    @classmethod
    @contextmanager
    def editing(cls, path: Path) -> Iterator[TrustPolicy]:
        """Load, let the caller change, and save the trust file, under a lock.

        The mount refreshes contacts from cards while ``trust add`` may run in a
        shell: an ``flock`` on the trust file's folder keeps one from losing the
        other's change. Nothing is saved when the block raises.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            policy = cls.load(path)
            yield policy
            policy.save(path)
        finally:
            os.close(fd)  # releases the lock

    def add_key(self, name: str, pem: bytes) -> TrustEntry:
        """Trust a P-256 public key for ``name`` (idempotent; one name per key)."""
        key = load_public_key(pem)
        entry = TrustEntry(
            name=name, kind="key", public_key=pem.decode(), fingerprint=key_hint(key)
        )
        return self._add(entry)

    def add_identity(
        self, name: str, identity: str, issuer: str, *, sigstore_trust: str = ""
    ) -> TrustEntry:
        """Trust a Sigstore identity+issuer pair for ``name`` (both required).

        ``sigstore_trust`` is the instance whose trusted root verifies it, already
        checked by the caller (``core._internal.signing.keyless.check_trust_source``).
        """
        if not identity or not issuer:
            raise ConfigError("a keyless trust entry needs both --identity and --issuer")
        entry = TrustEntry(
            name=name,
            kind="keyless",
            identity=identity,
            issuer=issuer,
            sigstore_trust=sigstore_trust,
        )
        return self._add(entry)

    def _add(self, entry: TrustEntry) -> TrustEntry:
        check_name(entry.name, "trust name")
        if entry.name in self.groups:
            raise ConfigError(
                f"'{shown(entry.name)}' is a group; remove it first "
                f"('dockercomms group remove {_quoted(entry.name)}') or trust another name"
            )
        for other in self.entries:
            if other.signer == entry.signer and other.name != entry.name:
                raise ConfigError(
                    f"{entry.describe_signer()} is already trusted as '{shown(other.name)}', "
                    "and one signer speaks for one name; to move it, run "
                    f"'dockercomms trust remove {_quoted(other.name)} "
                    f"--match {_quoted(other.match)}' first"
                )
        if entry not in self.entries:
            self.entries.append(entry)
        return entry

    def problems(self) -> list[str]:
        """What is wrong with entries written before today's rules, one sentence each.

        Such entries keep verifying what they signed; these sentences say how to
        make them right.
        """
        found: dict[str, None] = {}  # ordered, without repeats
        owner: dict[tuple[str, ...], str] = {}
        for entry in self.entries:
            problem = name_problem(entry.name)
            if problem is not None:
                found[
                    f"trust entry '{shown(entry.name)}' is not a valid name ({problem}); it "
                    "still verifies, but give it a valid one: "
                    f"'dockercomms trust remove {_quoted(entry.name)}', then "
                    "'dockercomms trust add NEW-NAME ...' (the sender must send as NEW-NAME)"
                ] = None
            first = owner.setdefault(entry.signer, entry.name)
            if first != entry.name:
                found[
                    f"{entry.describe_signer()} is trusted as both '{shown(first)}' and "
                    f"'{shown(entry.name)}': only '{shown(first)}' can send; remove the other "
                    f"with 'dockercomms trust remove {_quoted(entry.name)} "
                    f"--match {_quoted(entry.match)}'"
                ] = None
        return list(found)

    def remove(self, name: str, *, match: str | None = None) -> list[TrustEntry]:
        """Remove ``name``'s entries (only those whose fingerprint/identity is ``match``)."""
        gone = [
            e
            for e in self.entries
            if e.name == name and (match is None or match in (e.fingerprint, e.identity))
        ]
        self.entries = [e for e in self.entries if e not in gone]
        return gone

    def contact(self, name: str) -> Contact:
        """The sealing facts for ``name`` (all empty when none were ever recorded)."""
        return self.contacts.get(name, Contact(name=name))

    def set_contact(self, contact: Contact) -> None:
        """Record ``contact`` (replacing what was known for its name)."""
        check_name(contact.name, "trust name")
        self.contacts[contact.name] = contact

    def is_trusted(self, name: str) -> bool:
        """Whether some entry lets ``name`` send (what a contact or group member needs)."""
        return any(entry.name == name for entry in self.entries)

    def accept_card(self, name: str, age_recipient: str, created_at: datetime, source: str) -> bool:
        """Record the age recipient of a card for ``name``, unless it is no newer than the last.

        Returns whether it was recorded. A card older than the newest accepted
        for ``name`` is a rollback and raises :class:`ConfigError` saying so, and
        so does one of the same date naming another key (which of the two is
        newer cannot be told); the same card again changes nothing.
        ``require_sealed`` is kept.
        """
        known = self.contact(name)
        if known.card_created_at:
            newest = protocol.parse_timestamp(known.card_created_at)
            if created_at < newest:
                raise ConfigError(
                    f"the card for '{shown(name)}' was made "
                    f"{protocol.format_timestamp(created_at)}, "
                    f"before the newest one accepted ({known.card_created_at}): refused as a "
                    "rollback"
                )
            if created_at == newest:
                if age_recipient == known.age_recipient:
                    return False
                raise ConfigError(
                    f"another card for '{shown(name)}' has the date of the one accepted "
                    f"({known.card_created_at}) but names another age key: refused, the "
                    "accepted one is kept"
                )
        self.set_contact(
            replace(
                known,
                age_recipient=age_recipient,
                source=source,
                card_created_at=protocol.format_timestamp(created_at),
            )
        )
        return True

    def set_require_sealed(self, name: str, required: bool) -> None:
        """Reject (or accept again) plaintext messages from ``name``."""
        self.set_contact(replace(self.contact(name), require_sealed=required))

    def forget(self, name: str) -> list[str]:
        """Drop ``name``'s contact and group memberships (its last entry is gone).

        Returns the groups it was taken out of; a group left empty is removed.
        """
        self.contacts.pop(name, None)
        left: list[str] = []
        for group, members in list(self.groups.items()):
            if name in members:
                left.append(group)
                rest = tuple(m for m in members if m != name)
                if rest:
                    self.groups[group] = rest
                else:
                    del self.groups[group]
        return left

    def set_group(self, group: str, members: list[str]) -> tuple[str, ...]:
        """Make ``group`` the names ``members`` (each trusted, in order, once each).

        A group name may not be a trusted name (``outbox/NAME/`` would mean two
        things), nor may a member be a group (one level: no cycles to follow).
        """
        check_name(group, "group name")
        if self.is_trusted(group):
            raise ConfigError(
                f"'{shown(group)}' is a trusted name; a group needs a name of its own"
            )
        if not members:
            raise ConfigError("a group needs at least one member")
        unique = tuple(dict.fromkeys(members))
        for member in unique:
            check_name(member, "group member")
            if member in self.groups:
                raise ConfigError(f"'{shown(member)}' is a group; a group's members are names")
            if not self.is_trusted(member):
                raise ConfigError(
                    f"'{shown(member)}' is not a trusted name; trust it first "
                    f"('dockercomms trust add {_quoted(member)} --card FILE')"
                )
        self.groups[group] = unique
        return unique

    def pinned_keys(self) -> list[PinnedKey]:
        """Every key entry as a verifier-ready key."""
        return [
            PinnedKey(e.name, load_public_key(e.public_key.encode()))
            for e in self.entries
            if e.kind == "key"
        ]

    def identities(self) -> list[TrustEntry]:
        """Every keyless entry."""
        return [e for e in self.entries if e.kind == "keyless"]


def _quoted(word: str) -> str:
    """``word`` as one shell word, safe to show (for commands we suggest)."""
    return shown(shlex.quote(word))


def issuer_problem(issuer: str) -> str | None:
    """Why ``issuer`` probably matches no certificate; ``None`` when it looks right.

    Fulcio writes the OIDC issuer URL into the certificate and verification
    compares it exactly, so ``github`` or a trailing ``/`` would match nothing.
    """
    parts = urlsplit(issuer)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        return (
            f"issuer '{shown(issuer)}' is not a URL; issuers look like "
            "https://github.com/login/oauth, https://accounts.google.com or "
            "https://token.actions.githubusercontent.com"
        )
    if issuer.endswith("/"):
        return (
            f"issuer '{shown(issuer)}' ends with '/'; certificates name issuers without "
            f"it ('{shown(issuer.rstrip('/'))}') and the match is exact"
        )
    return None


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` via a temp file, fsync and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
