"""Age identities on disk: the X25519 keys that open sealed messages (SPEC 9), and rotation.

Caveats first:

* One identity file, in the form the ``age`` tool reads and writes: per identity a
  ``# created:`` and a ``# public key:`` comment, then ``AGE-SECRET-KEY-1…``. It
  lists identities newest first; the first is the *current* one (the recipient
  we publish and seal to), the others are rotated out and kept only to open what
  was sealed to them (older messages, ``sent/`` copies). One file, not a current
  key plus a folder of old ones, because ``age -d -i age.key`` then opens anything
  ever sealed to us with the stock tool, there is one file to back up and one
  mode to check, and nothing decides which files count as old keys.
* Creation is ``O_EXCL`` with ``fchmod 0600`` on the descriptor, so neither an
  existing file nor the umask changes what is made. Rotation writes the whole new
  file the same way beside the old one, fsyncs it and renames it over, then
  fsyncs the folder: a crash leaves the old file or the new one, never half of
  one. Rotations take an ``flock`` on the folder, so two cannot lose each other's
  key.
* Loading refuses a file other users can read or change (and says which
  ``chmod`` fixes it), anything but a regular file, more than
  :data:`MAX_IDENTITY_FILE_BYTES` or :data:`MAX_IDENTITIES`, and any line that is
  not a comment, empty or an X25519 identity (plugin identities included). Errors
  name the line, never its text: it may be a secret key.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import pyrage
from pyrage import x25519

from dockercomms.core._internal.sealing import AgeIdentity, AgeRecipient
from dockercomms.core.errors import ConfigError
from dockercomms.core.protocol import format_timestamp
from dockercomms.core.untrusted import shown

#: Where the integration keeps it: beside ``keys/signing.key``.
IDENTITY_FILE_NAME: Final = "age.key"
MAX_IDENTITY_FILE_BYTES: Final = 64 * 1024
#: Current plus rotated-out identities a file may hold (a rotation a week for two years).
MAX_IDENTITIES: Final = 100
SECRET_PREFIX: Final = "AGE-SECRET-KEY-1"
RECIPIENT_PREFIX: Final = "age1"
#: An X25519 recipient is ``age1`` and 58 Bech32 characters; anything longer is refused unread.
_MAX_RECIPIENT_CHARS: Final = 90
_CREATED: Final = "# created: "
_PUBLIC: Final = "# public key: "


@dataclass(frozen=True)
class AgeKey:
    """One X25519 identity of the file.

    Attributes:
        identity: the secret key (``str()`` of it is the secret: never log it).
        recipient: its public ``age1…`` recipient.
        created: the ``# created:`` comment above it, as written; empty if none.
    """

    identity: AgeIdentity
    recipient: str
    created: str = ""

    def __repr__(self) -> str:
        return f"AgeKey(recipient={self.recipient!r}, created={self.created!r})"


@dataclass(frozen=True)
class AgeKeys:
    """The identities of one identity file, newest (current) first."""

    keys: tuple[AgeKey, ...]

    @property
    def current(self) -> AgeKey:
        """The identity we publish and seal to."""
        return self.keys[0]

    @property
    def recipient(self) -> str:
        """The current identity's ``age1…`` recipient."""
        return self.current.recipient

    @property
    def identities(self) -> list[AgeIdentity]:
        """Every identity, current first: what opening a sealed piece tries."""
        return [key.identity for key in self.keys]

    def text(self) -> str:
        """The file's contents, as ``age-keygen`` writes each identity."""
        blocks = []
        for key in self.keys:
            created = f"{_CREATED}{key.created}\n" if key.created else ""
            blocks.append(f"{created}{_PUBLIC}{key.recipient}\n{key.identity}\n")
        return "\n".join(blocks)


def new_age_key(now: datetime | None = None) -> AgeKey:
    """A fresh X25519 identity, stamped with ``now`` (UTC, seconds)."""
    identity = x25519.Identity.generate()
    created = format_timestamp(now or datetime.now(UTC))
    return AgeKey(identity, str(identity.to_public()), created)


def create_identity_file(path: Path, *, now: datetime | None = None) -> AgeKeys:
    """Create ``path`` (0600, never overwriting) holding one new identity."""
    keys = AgeKeys((new_age_key(now),))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        _write_new(path, keys.text().encode("ascii"))
    except FileExistsError as exc:
        raise ConfigError(
            f"an age identity file already exists at {path}; rotate it instead of replacing it"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot create age identity file {path}: {exc.strerror}") from exc
    _fsync_dir(path.parent)
    return keys


def rotate_identity_file(path: Path, *, now: datetime | None = None) -> AgeKeys:
    """Put a new current identity first in ``path``, keeping every older one."""
    with _folder_lock(path.parent):
        old = load_identity_file(path)
        if len(old.keys) >= MAX_IDENTITIES:
            raise ConfigError(
                f"{path} already holds {len(old.keys)} age identities; move the oldest "
                "(last) ones to a backup file before rotating again"
            )
        keys = AgeKeys((new_age_key(now), *old.keys))
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            _write_new(temporary, keys.text().encode("ascii"))
            os.replace(temporary, path)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise ConfigError(f"cannot rotate age identity file {path}: {exc.strerror}") from exc
        _fsync_dir(path.parent)
    return keys


def load_identity_file(path: Path) -> AgeKeys:
    """Read ``path``: every identity, current first (see the caveats for what is refused)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"no age identity file at {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read age identity file {path}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"age identity file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(
                f"age identity file {path} can be read or changed by other users "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
            )
        data = os.read(fd, MAX_IDENTITY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_IDENTITY_FILE_BYTES:
        raise ConfigError(
            f"age identity file {path} is larger than {MAX_IDENTITY_FILE_BYTES} bytes"
        )
    return parse_identities(data, str(path))


def parse_identities(data: bytes, where: str) -> AgeKeys:
    """The X25519 identities of an identity file's contents, in file order.

    The rules are ``age -i``'s: lines starting with ``#`` are comments, empty lines
    are skipped, every other line is one identity, exactly (no trimming).
    """
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not an age identity file (not ASCII)") from None
    keys: list[AgeKey] = []
    created = ""
    for number, line in enumerate(text.split("\n"), start=1):
        if line.startswith(_CREATED):
            created = line[len(_CREATED) :]
            continue
        if not line or line.startswith("#"):
            continue
        keys.append(_identity_line(line, f"{where} line {number}", created))
        created = ""
        if len(keys) > MAX_IDENTITIES:
            raise ConfigError(f"{where} holds more than {MAX_IDENTITIES} age identities")
    if not keys:
        raise ConfigError(f"{where} holds no age identity")
    return AgeKeys(tuple(keys))


def _identity_line(line: str, where: str, created: str) -> AgeKey:
    if line.startswith("AGE-PLUGIN-"):
        raise ConfigError(f"{where} is an age plugin identity; only X25519 identities are used")
    if not line.startswith(SECRET_PREFIX):
        raise ConfigError(f"{where} is not an age identity ({SECRET_PREFIX}…) nor a comment")
    try:
        identity = x25519.Identity.from_str(line)
    except pyrage.IdentityError:
        raise ConfigError(f"{where} is not a valid age X25519 identity (damaged?)") from None
    return AgeKey(identity, str(identity.to_public()), created)


def recipient_problem(text: str) -> str | None:
    """Why ``text`` is not an X25519 recipient in its one canonical spelling; None if it is."""
    if len(text) > _MAX_RECIPIENT_CHARS:
        return "it is too long for an age X25519 recipient"
    if not text.startswith(RECIPIENT_PREFIX):
        return f"an age X25519 recipient starts with {RECIPIENT_PREFIX!r}"
    try:
        recipient = x25519.Recipient.from_str(text)
    except pyrage.RecipientError:
        return "it is not a valid age X25519 recipient (a typo?)"
    if str(recipient) != text:
        return "it is not in the canonical lowercase form"
    return None


def parse_recipient(text: str, what: str) -> AgeRecipient:
    """``text`` as a recipient to seal to, or :class:`ConfigError` naming ``what``."""
    problem = recipient_problem(text)
    if problem is not None:
        raise ConfigError(f"{what} '{shown(text)}' is not an age recipient: {problem}")
    return x25519.Recipient.from_str(text)


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` exclusively, mode exactly 0600, with ``data``, fsynced."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may have taken bits away; it must be exactly 0600
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot open the key folder {folder}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
