"""Every error dockercomms raises on purpose: the exit code each means, and what it decides.

The hierarchy (catch at the level you care about)::

    DockerCommsError                 exit 1  deferred   generic failure
    ├── ConfigError                  exit 1  deferred   missing/invalid configuration or keys
    │   └── NoAgeRecipientError                         cannot seal: a recipient's age key unknown
    ├── VerificationError            exit 2  rejected   the artifact is not what it claims
    │   ├── SignatureError                              no bundle verifies / signature invalid
    │   ├── UntrustedSignerError                        valid signature by someone not trusted
    │   ├── SenderMismatchError                         trusted signer, but not as this sender
    │   ├── DigestMismatchError                         bytes do not hash to the signed digest
    │   │   └── PlaintextMismatchError                  opened chunk != its sealed chunk_sha256
    │   ├── ExpiredError                                created_at + ttl is in the past
    │   ├── NotARecipientError                          sealed (age) to none of my identities
    │   └── NotSealedError                              plaintext where sealed is required
    ├── RegistryError                exit 1  deferred   the registry failed us
    │   ├── RegistryUnavailableError         temporary  connection refused/reset, 5xx, timeouts
    │   ├── AuthError                exit 3  deferred   401/403, bad credentials
    │   └── NotFoundError            exit 5  deferred   manifest/blob/tag does not exist
    ├── ProtocolError                exit 4  rejected   the artifact breaks SPEC.md
    │   ├── ManifestError                               malformed or invalid manifest/annotations
    │   ├── ChunkError                                  chunk layer is not the tar it must be
    │   ├── LimitExceededError                          a size or count cap was hit (bombs too)
    │   ├── FilenameError                               unsafe file name
    │   └── SealedDataError                             a sealed piece is not a well-formed age file
    │       ├── SealedTruncatedError                    it ends early (its last block fails)
    │       └── SealedTamperedError                     an earlier block or its header MAC fails
    └── OutputError                  exit 1  deferred   cannot write the result locally (disk full)

Both columns are class attributes, so nothing decides from message text. The exit
code is what the CLI exits with. The :class:`Disposition` is the one rule for what
a failure means to the message or send it met: the receive loop (``recv``,
``sync``), the mount's inbox and the push queue all read it (:func:`disposition_of`),
and the filesystem maps the same classes to errno values in ``dockercomms.fsmount``.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Disposition(enum.Enum):
    """What a failure means to the message (or queued send) it happened to.

    Attributes:
        TEMPORARY: the registry may answer soon: the push queue waits (with
            backoff) and tries again; a receive defers the message.
        DEFERRED: not a verdict on the message (my set-up, my disk, the registry
            refusing or missing something): a receive tries again next run, the
            mount at the next poll; a send fails for good (it keeps its bytes).
        REJECTED: the message itself is bad: a receive reports (and may
            remember) a rejection, the mount lists it in ``inbox/.rejected/``.
    """

    TEMPORARY = "temporary"
    DEFERRED = "deferred"
    REJECTED = "rejected"


class DockerCommsError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with; ``disposition`` what it decides."""

    exit_code: ClassVar[int] = 1
    disposition: ClassVar[Disposition] = Disposition.DEFERRED

    def diagnostics(self) -> str:
        """Human text for the CLI, including the cause chain when there is one."""
        text = str(self) or type(self).__name__
        cause = self.__cause__
        if cause is not None and str(cause) and str(cause) not in text:
            text = f"{text} (cause: {type(cause).__name__}: {cause})"
        return text


class ConfigError(DockerCommsError):
    """Configuration, identity, key or trust file is missing or invalid."""


class NoAgeRecipientError(ConfigError):
    """A sealed send needs an age recipient (SPEC 9) that is not known: nothing was pushed."""


class OutputError(DockerCommsError):
    """A local write failed (disk full, permissions, name collision we refuse)."""


class VerificationError(DockerCommsError):
    """The artifact failed signature, identity, digest or freshness checks."""

    exit_code = 2
    disposition = Disposition.REJECTED


class SignatureError(VerificationError):
    """No signature bundle verifies for the manifest digest."""


class UntrustedSignerError(VerificationError):
    """The signature is valid, but the signer is not in the trust policy."""


class SenderMismatchError(VerificationError):
    """The signer is trusted, but under another name than the sender annotation."""


class DigestMismatchError(VerificationError):
    """Downloaded bytes do not hash to the digest that was signed or referenced."""


class PlaintextMismatchError(DigestMismatchError):
    """A sealed chunk opened to bytes that do not hash to its signed ``chunk_sha256``.

    The ciphertext matched the signed digest, so the sender made it so: unlike a
    plain digest mismatch (the registry served other bytes) it never gets better.
    """


class ExpiredError(VerificationError):
    """The message's time to live has passed."""


class NotARecipientError(VerificationError):
    """A sealed piece is encrypted to age recipients none of my identities match.

    Sealed to someone else, or to an identity of mine I no longer have.
    """


class NotSealedError(VerificationError):
    """A plaintext message where sealed ones are required (the sender's trust entry, or config)."""


class RegistryError(DockerCommsError):
    """The registry answered with an error we cannot classify more precisely."""


class RegistryUnavailableError(RegistryError):
    """Connection refused/reset, timeout, 5xx or 429 after the retry budget."""

    disposition = Disposition.TEMPORARY


class AuthError(RegistryError):
    """Authentication or authorisation failed (401/403)."""

    exit_code = 3


class NotFoundError(RegistryError):
    """The manifest, blob or tag does not exist."""

    exit_code = 5


class ProtocolError(DockerCommsError):
    """The artifact does not follow the DockerComms v1 protocol."""

    exit_code = 4
    disposition = Disposition.REJECTED


class ManifestError(ProtocolError):
    """The manifest is malformed or its annotations are invalid."""


class ChunkError(ProtocolError):
    """A chunk layer is not the single-file tar the protocol requires."""


class LimitExceededError(ProtocolError):
    """A size or count limit was exceeded (decompression bombs land here)."""


class FilenameError(ProtocolError):
    """A file name is unsafe (traversal, control characters, too long)."""


class SealedDataError(ProtocolError):
    """A sealed (age-encrypted) chunk or annotation is not a well-formed age file.

    Only raised for bytes whose digest was already verified, so the signer made them.
    """


class SealedTruncatedError(SealedDataError):
    """The age file ends early: no age file has its length, or its last block fails.

    A last block whose bytes were altered looks the same, and lands here too.
    """


class SealedTamperedError(SealedDataError):
    """The age file is altered: its header MAC or a block before the last fails."""


def exit_code_for(error: BaseException) -> int:
    """The process exit code for any exception: ours by type, anything else 1."""
    if isinstance(error, DockerCommsError):
        return error.exit_code
    return 1


def disposition_of(error: BaseException) -> Disposition:
    """The :class:`Disposition` of any exception: ours by type.

    A local ``OSError`` (requests' exceptions are ``OSError`` too) is a network
    or disk that may come back: temporary. Anything else is a bug or a parser
    that choked on this one input: a rejection of what it was handling.
    """
    if isinstance(error, DockerCommsError):
        return error.disposition
    if isinstance(error, OSError):
        return Disposition.TEMPORARY
    return Disposition.REJECTED
