"""The trust policy: which keys and which Sigstore identities speak for which sender.

One JSON file, one list of entries. An entry's ``name`` is the sender string a
message must carry in ``dockercomms.sender`` (SPEC 5 step 6), so a valid signature
by a trusted party still cannot impersonate another trusted party. Key-pair and
keyless entries mix freely; a name may have several entries (key rotation).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from dockercomms.core.errors import ConfigError
from dockercomms.core.signing.keypair import PinnedKey, key_hint, load_public_key

TRUST_FILE_VERSION = 1


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
    """

    name: str
    kind: Literal["key", "keyless"]
    public_key: str = ""
    fingerprint: str = ""
    identity: str = ""
    issuer: str = ""

    def describe(self) -> str:
        """One line for ``trust list``."""
        if self.kind == "key":
            return f"{self.name}\tkey\t{self.fingerprint}"
        return f"{self.name}\tkeyless\t{self.identity} via {self.issuer}"


@dataclass
class TrustPolicy:
    """All trust entries, loaded from and saved to one file."""

    entries: list[TrustEntry] = field(default_factory=list)

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
            return cls([TrustEntry(**entry) for entry in doc.get("entries", [])])
        except TypeError as exc:
            raise ConfigError(f"{path}: malformed entry: {exc}") from exc

    def save(self, path: Path) -> None:
        """Atomically replace the trust file."""
        doc = {"version": TRUST_FILE_VERSION, "entries": [asdict(e) for e in self.entries]}
        write_atomic(path, json.dumps(doc, indent=2).encode() + b"\n", mode=0o644)

    def add_key(self, name: str, pem: bytes) -> TrustEntry:
        """Trust a P-256 public key for ``name`` (idempotent)."""
        key = load_public_key(pem)
        entry = TrustEntry(
            name=name, kind="key", public_key=pem.decode(), fingerprint=key_hint(key)
        )
        return self._add(entry)

    def add_identity(self, name: str, identity: str, issuer: str) -> TrustEntry:
        """Trust a Sigstore identity+issuer pair for ``name`` (both required)."""
        if not identity or not issuer:
            raise ConfigError("a keyless trust entry needs both --identity and --issuer")
        return self._add(TrustEntry(name=name, kind="keyless", identity=identity, issuer=issuer))

    def _add(self, entry: TrustEntry) -> TrustEntry:
        if not entry.name:
            raise ConfigError("a trust entry needs a name")
        if entry not in self.entries:
            self.entries.append(entry)
        return entry

    def remove(self, name: str, *, match: str | None = None) -> list[TrustEntry]:
        """Remove ``name``'s entries (only those whose fingerprint/identity is ``match``)."""
        gone = [
            e
            for e in self.entries
            if e.name == name and (match is None or match in (e.fingerprint, e.identity))
        ]
        self.entries = [e for e in self.entries if e not in gone]
        return gone

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
