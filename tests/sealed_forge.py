"""Building sealed messages (SPEC 9) from the spec, for the receiving tests.

The receiving side must not wait for our own sender: these messages are
assembled piece by piece from SPEC 9 with ``core._internal.sealed_message`` (or
the stock ``age`` binary), pushed through the real registry client and signed
with the test parties' real keys, the way ``tests.forge`` builds hostile ones.
Every piece can be swapped, so the hostile tests change exactly one thing.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyrage
from pyrage import x25519

from dockercomms.core import protocol as p
from dockercomms.core._internal import manifest as m
from dockercomms.core._internal import sealed_message as sm
from dockercomms.core.age_keys import AgeKeys, create_identity_file, load_identity_file
from tests import age_cli
from tests.conftest import Party
from tests.forge import Forge, honest_layer

#: Encrypts bytes to ``age1…`` recipients: pyrage (our library) or the stock ``age`` tool.
Seal = Callable[[bytes, list[str]], bytes]


def seal_with_pyrage(data: bytes, recipients: list[str]) -> bytes:
    """One binary age file of ``data`` to ``recipients``."""
    return bytes(pyrage.encrypt(data, [x25519.Recipient.from_str(r) for r in recipients]))


@dataclass
class Sealed:
    """A sealed message as pushed: enough to take it apart for the hostile tests.

    Attributes:
        digests: manifest digest per recipient (one manifest each, SPEC 9).
        layers: the sealed chunk layers (shared by every manifest).
        layer_blobs: their bytes.
        sealed_value: the ``dockercomms.sealed`` annotation.
        plain_layers: the section 2 compressed tars before sealing.
    """

    message_id: str
    facts: sm.SealedFacts
    digests: dict[str, str] = field(default_factory=dict)
    layers: list[m.Descriptor] = field(default_factory=list)
    layer_blobs: list[bytes] = field(default_factory=list)
    sealed_value: str = ""
    plain_layers: list[bytes] = field(default_factory=list)


@dataclass
class SealedForge:
    """Pushes sealed messages as ``forge.sender``, signed with ``forge.signer``."""

    forge: Forge
    seal: Seal = seal_with_pyrage

    def layer(self, blob: bytes, index: int, compression: str = "zstd") -> m.Descriptor:
        """Upload a sealed chunk blob as chunk ``index``."""
        pushed = self.forge.client.push_blob_bytes(blob, sm.SEALED_CHUNK_MEDIA_TYPES[compression])
        return m.Descriptor(
            pushed.media_type, pushed.digest, pushed.size, {p.A_CHUNK_INDEX: str(index)}
        )

    def build(
        self,
        data: bytes,
        age_recipients: list[str],
        *,
        filename: str = "report.pdf",
        chunk_bytes: int | None = None,
        compression: str = "zstd",
        message_id: str | None = None,
    ) -> Sealed:
        """Seal and upload the layers and make the annotation (no manifest yet)."""
        chunk = chunk_bytes or max(len(data), 1)
        pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
        facts = sm.SealedFacts(
            filename, len(data), tuple(hashlib.sha256(piece).hexdigest() for piece in pieces)
        )
        built = Sealed(message_id or p.new_message_id(), facts)
        for index, piece in enumerate(pieces):
            plain = honest_layer(piece, index, compression)
            blob = self.seal(plain, age_recipients)
            built.plain_layers.append(plain)
            built.layer_blobs.append(blob)
            built.layers.append(self.layer(blob, index, compression))
        built.sealed_value = base64.b64encode(self.seal(facts.to_json(), age_recipients)).decode()
        return built

    def annotations(
        self, built: Sealed, recipient: str, *, chunk_bytes: int | None = None, **overrides: str
    ) -> dict[str, str]:
        """SPEC 9 annotations of ``built`` for ``recipient``, then ``overrides``."""
        total = built.facts.total_bytes
        annotations = m.message_annotations(
            sender=self.forge.sender,
            recipient=recipient,
            created_at=datetime.now(UTC),
            ttl_seconds=p.DEFAULT_TTL_SECONDS,
            message_id=built.message_id,
            filename=sm.neutral_filename(built.message_id),
            total_bytes=total,
            chunk_bytes=chunk_bytes or max(total, 1),
            chunk_count=len(built.layers),
            compression="zstd",
        )
        annotations[sm.A_ENCRYPTION] = sm.ENCRYPTION_AGE
        annotations[sm.A_SEALED] = built.sealed_value
        annotations.update(overrides)
        return annotations

    def push(
        self,
        built: Sealed,
        recipient: str,
        *,
        chunk_bytes: int | None = None,
        layers: list[m.Descriptor] | None = None,
        sign: Callable[[str], bytes] | None = None,
        **overrides: str,
    ) -> str:
        """One signed manifest of ``built`` to ``recipient`` (layers swappable); its digest."""
        raw = m.build_message(
            self.annotations(built, recipient, chunk_bytes=chunk_bytes, **overrides),
            layers if layers is not None else built.layers,
        )
        digest = self.forge.push(raw, recipient, sign=sign)
        built.digests[recipient] = digest
        return digest

    def send(
        self,
        data: bytes,
        recipients: list[str],
        age_recipients: list[str],
        *,
        filename: str = "report.pdf",
        chunk_bytes: int | None = None,
    ) -> Sealed:
        """What our sender will do: seal once to every age recipient, a manifest each."""
        built = self.build(data, age_recipients, filename=filename, chunk_bytes=chunk_bytes)
        for recipient in recipients:
            self.push(built, recipient, chunk_bytes=chunk_bytes)
        return built


def age_keys(party: Party) -> AgeKeys:
    """The party's age identities, made if ``init`` did not make them."""
    path = party.workspace().paths.age_identity_file
    return load_identity_file(path) if path.exists() else create_identity_file(path)


def sealer(party: Party, *, stock_age: bool = False) -> SealedForge:
    """A sealed forge sending as ``party`` (sealing with pyrage, or the stock ``age``)."""
    workspace = party.workspace()
    forge = Forge(workspace.client(), workspace.signer(), workspace.identity)
    return SealedForge(forge, age_cli.encrypt) if stock_age else SealedForge(forge)
