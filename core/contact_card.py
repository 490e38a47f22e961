"""Contact cards: who someone is, how their signatures verify, and how to seal to them.

One small text file serves ``key export`` / ``trust add --card`` (SPEC 9: a peer's
age recipient is part of what you trust about it) and the signed card in the
repository (SPEC 9.1), whose manifest annotations are this card minus the
signer, which the card's signature itself establishes there.

Caveats first:

* The format is fixed ``key: value`` lines, not JSON, YAML or TOML: a person reads
  it, pastes it into a chat and compares it by eye, and it has nothing a parser
  could be talked into (no nesting, quoting, escapes, anchors, includes or type
  guessing). Every value is from a small alphabet without spaces (names,
  base64, ``age1…``, URLs), so none needs escaping. Unknown keys, repeated keys,
  a missing or wrong ``dockercomms-card: 1`` first line, leading spaces and
  non-ASCII are refused; ``#`` comments, blank lines, trailing spaces and CRLF
  line ends are allowed (mail and chat add them). At most :data:`MAX_CARD_BYTES`
  and :data:`MAX_CARD_LINES`.
* The signing key is the DER SubjectPublicKeyInfo in base64 on one line, turned
  back into the PEM ``trust add --key`` reads and loaded by the same loader.
* A keyless card may name its Sigstore instance, but only ``public-good`` or
  ``staging``: a trusted-root *file* is a path on its owner's machine and means
  nothing on the reader's (who names their own with ``--sigstore-trust``).
* A card says who someone claims to be. ``trust add --card`` makes it true for
  you; in the repository only a card whose signature verifies against your trust
  entry for that name counts (SPEC 9.1), and :func:`parse_card_annotations`
  checks only the form of what an unverified manifest says.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import string
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from cryptography.hazmat.primitives import serialization

from dockercomms.core import protocol
from dockercomms.core._internal.signing.keypair import key_hint, load_public_key, public_pem
from dockercomms.core.age_keys import recipient_problem
from dockercomms.core.errors import ConfigError, ManifestError
from dockercomms.core.names import check_name, name_problem
from dockercomms.core.trust import TrustEntry, TrustPolicy, issuer_problem
from dockercomms.core.untrusted import shown

CARD_VERSION: Final = "1"
MAX_CARD_BYTES: Final = 8 * 1024
MAX_CARD_LINES: Final = 64
MAX_KEYLESS_IDENTITY_CHARS: Final = 1024
#: ``core.signing.keyless.PUBLIC_GOOD`` / ``STAGING`` (not imported: that loads sigstore).
CARD_SIGSTORE_INSTANCES: Final = ("public-good", "staging")

# The card file's keys, in the order a card is written.
K_VERSION: Final = "dockercomms-card"
K_NAME: Final = "name"
K_CREATED_AT: Final = "created-at"
K_AGE_RECIPIENT: Final = "age-recipient"
K_SIGNING_KEY: Final = "signing-key"
K_KEYLESS_IDENTITY: Final = "keyless-identity"
K_KEYLESS_ISSUER: Final = "keyless-issuer"
K_SIGSTORE: Final = "sigstore"
_KEYS: Final = (
    K_VERSION,
    K_NAME,
    K_CREATED_AT,
    K_AGE_RECIPIENT,
    K_SIGNING_KEY,
    K_KEYLESS_IDENTITY,
    K_KEYLESS_ISSUER,
    K_SIGSTORE,
)
_HEADER: Final = "# dockercomms contact card: 'dockercomms trust add --card FILE' trusts it\n"

# SPEC 9.1: the card manifest.
CARD_ARTIFACT_TYPE: Final = "application/vnd.dockercomms.card.v1"
A_IDENTITY: Final = "dockercomms.identity"
A_AGE_RECIPIENT: Final = "dockercomms.age.recipient"
#: Longest annotation value read from a card manifest (a name is 128, a recipient 62).
_MAX_ANNOTATION_CHARS: Final = 256

_PEM_BEGIN: Final = "-----BEGIN PUBLIC KEY-----"
_PEM_END: Final = "-----END PUBLIC KEY-----"
_BASE64: Final = frozenset(string.ascii_letters + string.digits + "+/=")
_VISIBLE: Final = frozenset(chr(code) for code in range(0x21, 0x7F))


@dataclass(frozen=True)
class CardClaim:
    """What a card manifest says (SPEC 9.1), believed only once its signature verified.

    Attributes:
        identity: the name, exactly as messages carry it in ``dockercomms.sender``.
        age_recipient: the ``age1…`` recipient to seal to.
        created_at: when the card was made; a newer verified card replaces an older one.
    """

    identity: str
    age_recipient: str
    created_at: datetime


@dataclass(frozen=True)
class ContactCard:
    """One identity's card; every field is checked when the card is made.

    Attributes:
        name: the identity's name (``core.names`` grammar).
        age_recipient: its current ``age1…`` recipient.
        created_at: when the card was made (UTC, whole seconds).
        signing_key: PEM P-256 public key, for key-pair identities; else empty.
        keyless_identity: certificate identity (e-mail or URI), for keyless ones.
        keyless_issuer: the OIDC issuer URL that goes with it.
        sigstore: ``public-good`` or ``staging`` for keyless; empty for the reader's own.
    """

    name: str
    age_recipient: str
    created_at: datetime
    signing_key: str = ""
    keyless_identity: str = ""
    keyless_issuer: str = ""
    sigstore: str = ""

    def __post_init__(self) -> None:
        check_name(self.name, "card name")
        problem = recipient_problem(self.age_recipient)
        if problem is not None:
            raise ConfigError(f"card age recipient '{shown(self.age_recipient)}': {problem}")
        if self.created_at.tzinfo is None or self.created_at.microsecond:
            raise ConfigError("card creation time must be UTC and in whole seconds")
        keyless = bool(self.keyless_identity or self.keyless_issuer or self.sigstore)
        if bool(self.signing_key) == keyless:
            raise ConfigError(
                "a card names either a signing key or a keyless identity and issuer, not both"
            )
        if self.signing_key:
            canonical = public_pem(load_public_key(self.signing_key.encode("ascii"))).decode()
            if canonical != self.signing_key:
                raise ConfigError("card signing key is not in canonical PEM form")
        else:
            _check_keyless(self.keyless_identity, self.keyless_issuer, self.sigstore)

    @classmethod
    def for_key(
        cls, name: str, public_key_pem: bytes, age_recipient: str, created_at: datetime
    ) -> ContactCard:
        """The card of a key-pair identity (``public_key_pem`` as ``key export`` prints it)."""
        pem = public_pem(load_public_key(public_key_pem)).decode("ascii")
        return cls(name, age_recipient, _whole_seconds(created_at), signing_key=pem)

    @classmethod
    def for_keyless(
        cls,
        name: str,
        identity: str,
        issuer: str,
        age_recipient: str,
        created_at: datetime,
        *,
        sigstore: str = "",
    ) -> ContactCard:
        """The card of a keyless (Sigstore) identity."""
        return cls(
            name,
            age_recipient,
            _whole_seconds(created_at),
            keyless_identity=identity,
            keyless_issuer=issuer,
            sigstore=sigstore,
        )

    @property
    def kind(self) -> str:
        """``key`` or ``keyless``, as in a trust entry."""
        return "key" if self.signing_key else "keyless"

    @property
    def signer(self) -> tuple[str, ...]:
        """Who signs for this card, in the shape of ``TrustEntry.signer``."""
        if self.signing_key:
            return ("key", key_hint(load_public_key(self.signing_key.encode("ascii"))))
        return ("keyless", self.keyless_identity, self.keyless_issuer)

    @property
    def claim(self) -> CardClaim:
        """What this card's manifest in the repository says (SPEC 9.1)."""
        return CardClaim(self.name, self.age_recipient, self.created_at)

    def text(self) -> str:
        """The card file: a comment, then one ``key: value`` line per field, in order."""
        fields = [
            (K_VERSION, CARD_VERSION),
            (K_NAME, self.name),
            (K_CREATED_AT, protocol.format_timestamp(self.created_at)),
            (K_AGE_RECIPIENT, self.age_recipient),
        ]
        if self.signing_key:
            fields.append((K_SIGNING_KEY, _der_base64(self.signing_key)))
        else:
            fields.append((K_KEYLESS_IDENTITY, self.keyless_identity))
            fields.append((K_KEYLESS_ISSUER, self.keyless_issuer))
            if self.sigstore:
                fields.append((K_SIGSTORE, self.sigstore))
        return _HEADER + "".join(f"{key}: {value}\n" for key, value in fields)


def parse_card(data: bytes | str) -> ContactCard:
    """Read a card file (see the caveats for the rules); :class:`ConfigError` if it breaks one."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    if len(raw) > MAX_CARD_BYTES:
        raise ConfigError(f"a contact card is at most {MAX_CARD_BYTES} bytes; this is larger")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError("a contact card is plain ASCII text; this is not") from None
    lines = text.split("\n")
    if len(lines) > MAX_CARD_LINES:
        raise ConfigError(f"a contact card has at most {MAX_CARD_LINES} lines")
    fields: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        line = line.rstrip(" \t\r")
        if not line or line.startswith("#"):
            continue
        key, separator, value = line.partition(": ")
        if not separator or key not in _KEYS:
            raise ConfigError(
                f"card line {number} is not 'key: value' with a known key ('{shown(key, 40)}')"
            )
        if key in fields:
            raise ConfigError(f"card line {number} repeats '{key}'")
        if not fields and key != K_VERSION:
            raise ConfigError(f"a contact card starts with '{K_VERSION}: {CARD_VERSION}'")
        fields[key] = value
    if fields.get(K_VERSION) != CARD_VERSION:
        raise ConfigError(f"not a version {CARD_VERSION} contact card")
    missing = [key for key in (K_NAME, K_CREATED_AT, K_AGE_RECIPIENT) if key not in fields]
    if missing:
        raise ConfigError(f"the contact card lacks {', '.join(missing)}")
    try:
        created_at = _timestamp(fields[K_CREATED_AT])
    except ValueError:
        raise ConfigError(
            f"card {K_CREATED_AT} is not an RFC 3339 UTC time such as 2026-05-01T10:00:00Z"
        ) from None
    signing_key = ""
    if K_SIGNING_KEY in fields:
        signing_key = _pem_from_base64(fields[K_SIGNING_KEY])
    return ContactCard(
        fields[K_NAME],
        fields[K_AGE_RECIPIENT],
        created_at,
        signing_key=signing_key,
        keyless_identity=fields.get(K_KEYLESS_IDENTITY, ""),
        keyless_issuer=fields.get(K_KEYLESS_ISSUER, ""),
        sigstore=fields.get(K_SIGSTORE, ""),
    )


def trust_card(policy: TrustPolicy, name: str, card: ContactCard) -> TrustEntry:
    """Trust ``card``'s signer as ``name`` and take its age recipient (newer cards only).

    What ``trust add NAME --card FILE`` does; the caller saves ``policy``. The signer
    is added first: a signer already trusted under another name is the clearer
    refusal. A card is trusted only under the name it carries.
    """
    if card.signing_key:
        entry = policy.add_key(name, card.signing_key.encode("ascii"))
    else:
        entry = policy.add_identity(
            name, card.keyless_identity, card.keyless_issuer, sigstore_trust=card.sigstore
        )
    if card.name != name:
        raise ConfigError(
            f"the card is for '{shown(card.name)}', not '{shown(name)}': its messages carry "
            f"the sender name '{shown(card.name)}', so trust it as that "
            f"('dockercomms trust add {shown(card.name)} ...')"
        )
    policy.accept_card(name, card.age_recipient, card.created_at, "card")
    return entry


def card_annotations(claim: CardClaim) -> dict[str, str]:
    """The annotations of a card manifest (SPEC 9.1) for ``claim`` (``card.claim``)."""
    return {
        protocol.A_VERSION: protocol.PROTOCOL_VERSION,
        A_IDENTITY: claim.identity,
        A_AGE_RECIPIENT: claim.age_recipient,
        protocol.A_CREATED_AT: protocol.format_timestamp(claim.created_at),
    }


def parse_card_annotations(annotations: Mapping[str, object]) -> CardClaim:
    """The claim of an untrusted card manifest's annotations; :class:`ManifestError` if malformed.

    Other annotations are ignored (tools add their own). This checks form only:
    believe the claim once the manifest's signature verified against the trust
    entry for ``identity``, with that entry's signer.
    """
    values: dict[str, str] = {}
    for key in (protocol.A_VERSION, A_IDENTITY, A_AGE_RECIPIENT, protocol.A_CREATED_AT):
        value = annotations.get(key)
        if not isinstance(value, str):
            raise ManifestError(f"card manifest lacks the string annotation {key}")
        if len(value) > _MAX_ANNOTATION_CHARS:
            raise ManifestError(f"card annotation {key} is longer than {_MAX_ANNOTATION_CHARS}")
        values[key] = value
    if values[protocol.A_VERSION] != protocol.PROTOCOL_VERSION:
        raise ManifestError(f"card manifest version is not {protocol.PROTOCOL_VERSION}")
    problem = name_problem(values[A_IDENTITY])
    if problem is not None:
        raise ManifestError(f"card identity '{shown(values[A_IDENTITY])}' is not a name: {problem}")
    problem = recipient_problem(values[A_AGE_RECIPIENT])
    if problem is not None:
        raise ManifestError(f"card age recipient '{shown(values[A_AGE_RECIPIENT])}': {problem}")
    try:
        created_at = _timestamp(values[protocol.A_CREATED_AT])
    except ValueError:
        raise ManifestError("card created_at is not an RFC 3339 UTC time in seconds") from None
    return CardClaim(values[A_IDENTITY], values[A_AGE_RECIPIENT], created_at)


def card_tag(identity: str, created_at: datetime) -> str:
    """``card-<rt>-<unix>-<rand6>`` for a card manifest (SPEC 9.1)."""
    unix = int(created_at.timestamp())
    return protocol.check_tag(f"{card_tag_prefix(identity)}{unix}-{secrets.token_hex(3)}")


def card_tag_prefix(identity: str) -> str:
    """The tag prefix under which ``identity``'s cards are listed."""
    return f"card-{protocol.recipient_tag(identity)}-"


def _check_keyless(identity: str, issuer: str, sigstore: str) -> None:
    if not identity or not issuer:
        raise ConfigError("a keyless card needs both a keyless identity and an issuer")
    if len(identity) > MAX_KEYLESS_IDENTITY_CHARS or not _VISIBLE.issuperset(identity):
        raise ConfigError(
            f"card keyless identity '{shown(identity)}' is not an e-mail address or URI "
            f"of at most {MAX_KEYLESS_IDENTITY_CHARS} visible ASCII characters"
        )
    problem = issuer_problem(issuer) if _VISIBLE.issuperset(issuer) else "not visible ASCII"
    if problem is not None:
        raise ConfigError(f"card keyless issuer: {problem}")
    if sigstore and sigstore not in CARD_SIGSTORE_INSTANCES:
        raise ConfigError(
            f"card sigstore instance '{shown(sigstore)}' is not one of "
            f"{', '.join(CARD_SIGSTORE_INSTANCES)} (a trusted-root file is set by the reader)"
        )


def _timestamp(text: str) -> datetime:
    moment = protocol.parse_timestamp(text)
    if protocol.format_timestamp(moment) != text:
        raise ValueError("not in canonical form")
    return moment


def _whole_seconds(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(microsecond=0)


def _der_base64(pem: str) -> str:
    key = load_public_key(pem.encode("ascii"))
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


def _pem_from_base64(value: str) -> str:
    """The PEM ``trust add --key`` reads, from a card's one-line base64 DER."""
    if len(value) > 1024 or not _BASE64.issuperset(value):
        raise ConfigError(f"card {K_SIGNING_KEY} is not base64 of a public key")
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"card {K_SIGNING_KEY} is not valid base64") from None
    body = "\n".join(textwrap.wrap(value, 64))
    pem = public_pem(load_public_key(f"{_PEM_BEGIN}\n{body}\n{_PEM_END}\n".encode("ascii")))
    if _der_base64(pem.decode("ascii")) != value:
        raise ConfigError(f"card {K_SIGNING_KEY} is not in canonical base64")
    return pem.decode("ascii")
