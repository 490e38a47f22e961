"""Sending a file: chunks, manifests, signatures, and only then the inbox tags (SPEC 2-3, 9).

Caveats first:

* The order is fixed: chunks -> untagged manifest -> bundle (+ fallback index)
  -> inbox tag, per recipient. A reader can never list a message that is not
  signed yet.
* Every input of the manifest (message id, session id, created_at, and for a
  sealed send the recipient plan and the ``sealed`` value) can be passed in, so a
  durable queue that retries a send produces the *same* manifest digests and
  tags: a retry is idempotent, never a second message.
* Sealing is random (SPEC 9): the same chunk sealed twice is another blob, and
  the same facts sealed twice another ``sealed`` value. So a retry reuses the
  chunks (``known_chunks``, with their plaintext ``known_sha256``) and the
  ``sealed`` value that the callbacks reported the first time, and the caller
  must keep the recipient plan that made them: chunks sealed to one recipient
  set are never reused for another.
* Several recipients: the layers are sealed and uploaded once; every recipient
  gets its own manifest (its ``dockercomms.recipient``), signature and tag over
  those same layers and the same ``sealed`` value. The message id is shared; the
  tags differ by recipient. Recipients already tagged by an earlier try
  (``delivered``) are skipped.
* Chunks already uploaded (``known_chunks``) are reused after a HEAD, so an
  interrupted send never re-sends what the registry already has.
* Two chunks upload at a time: compression, sealing, hashing and the network
  overlap on two cores, and memory stays at a few MiB per chunk.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from dockercomms.core import protocol
from dockercomms.core._internal import manifest
from dockercomms.core._internal.chunking import ChunkSpan, layer_stream, plan_chunks
from dockercomms.core._internal.limits import DEFAULT_LIMITS, Limits, sanitize_filename
from dockercomms.core._internal.recipients import RecipientPlan
from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core._internal.registry.retry import Attempts, RetryPolicy
from dockercomms.core._internal.sealed_message import (
    A_ENCRYPTION,
    A_SEALED,
    ENCRYPTION_AGE,
    SEALED_CHUNK_MEDIA_TYPES,
    SealedFacts,
    neutral_filename,
    seal_annotation,
)
from dockercomms.core._internal.sealing import AgeRecipient, seal_pieces
from dockercomms.core._internal.signatures import attach_bundle, push_empty_config
from dockercomms.core.config import DEFAULT_CHUNK_BYTES
from dockercomms.core.errors import ConfigError, OutputError, RegistryUnavailableError

log = logging.getLogger(__name__)

#: A streamed chunk cannot be replayed by the client, so a chunk whose upload failed
#: is started again from its first byte, at once (the client already waited).
CHUNK_RETRY = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0, total_budget=math.inf)
UPLOAD_WORKERS = 2


class DigestSigner(Protocol):
    """Anything that turns a manifest digest into Sigstore bundle JSON."""

    def sign_digest(self, manifest_digest: str) -> bytes:
        """Bundle JSON signing ``manifest_digest``."""
        ...


@dataclass(frozen=True)
class Delivery:
    """One recipient's manifest of a send: pushed, signed and tagged."""

    recipient: str
    digest: str
    tag: str
    bundle_digest: str = ""


@dataclass
class SendRequest:
    """One file to send, with every input that decides the manifests' bytes.

    Attributes:
        recipient: the one target (a name or a group); or use ``recipients``.
        recipients: the targets (names or groups, see ``recipients.expand``);
            ``(recipient,)`` when empty.
        plaintext: send unsealed even when every age recipient is known.
        plan: the resolved recipients, pinned by an earlier try (the outbox
            resolves the targets when it is None).
        sealed: the ``sealed`` annotation value an earlier try made.
        known_chunks: chunk index -> layer descriptor uploaded by an earlier try.
        known_sha256: chunk index -> plaintext sha256 of those chunks (sealed).
        delivered: recipients an earlier try already tagged.
    """

    path: Path
    recipient: str = ""
    filename: str | None = None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    compression: str = "zstd"
    ttl_seconds: int = protocol.DEFAULT_TTL_SECONDS
    session_id: str | None = None
    message_id: str | None = None
    created_at: datetime | None = None
    known_chunks: dict[int, manifest.Descriptor] = field(default_factory=dict)
    recipients: tuple[str, ...] = ()
    plaintext: bool = False
    plan: RecipientPlan | None = None
    sealed: str | None = None
    known_sha256: dict[int, str] = field(default_factory=dict)
    delivered: dict[str, Delivery] = field(default_factory=dict)

    @property
    def targets(self) -> tuple[str, ...]:
        """Whom the caller named (names or groups)."""
        if self.recipients:
            return self.recipients
        return (self.recipient,) if self.recipient else ()


@dataclass(frozen=True)
class SentMessage:
    """The result of a send, as printed by the CLI and kept by the queue.

    ``digest``, ``tag``, ``recipient`` and ``bundle_digest`` are the first
    recipient's; ``deliveries`` has one entry per recipient.
    """

    message_id: str
    digest: str
    tag: str
    recipient: str
    filename: str
    total_bytes: int
    bundle_digest: str
    created_at: datetime
    sealed: bool = False
    deliveries: tuple[Delivery, ...] = ()


#: A chunk is uploaded: its index, layer descriptor and (sealed) plaintext sha256 hex.
ChunkDone = Callable[[int, manifest.Descriptor, str], None]


@dataclass(frozen=True)
class SendJournal:
    """Callbacks a durable queue keeps, so a retry rebuilds the very same manifests.

    Each is called (from upload threads, serialised) once its fact is final and
    before anything depends on it: ``sealed`` before the first manifest push,
    ``delivered`` once that recipient's inbox tag is pushed.
    """

    chunk: ChunkDone | None = None
    sealed: Callable[[str], None] | None = None
    delivered: Callable[[Delivery], None] | None = None


class Sender:
    """Pushes signed messages from one identity to one repository."""

    def __init__(
        self,
        client: RegistryClient,
        signer: DigestSigner,
        identity: str,
        *,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.client = client
        self.signer = signer
        self.identity = identity
        self.limits = limits

    def send(
        self,
        request: SendRequest,
        *,
        on_progress: Callable[[int], None] | None = None,
        on_chunk: ChunkDone | None = None,
        journal: SendJournal | None = None,
    ) -> SentMessage:
        """Send ``request.path``; see the module docstring for the order of pushes.

        Without ``request.plan`` the targets are taken as recipient names as they
        are, and the message is plaintext (the outbox resolves groups and keys).
        """
        journal = journal or SendJournal(chunk=on_chunk)
        if request.compression not in protocol.COMPRESSIONS:
            raise ConfigError(f"unknown compression {request.compression!r}")
        plan = request.plan or RecipientPlan(request.targets)
        if not plan.names:
            raise ConfigError("no recipient given")
        seal_to = plan.age_recipients() if plan.sealed else []
        filename = sanitize_filename(request.filename or request.path.name, self.limits)
        created_at = (request.created_at or datetime.now(UTC)).replace(microsecond=0)
        message_id = request.message_id or protocol.new_message_id()
        session_id = request.session_id or protocol.new_message_id()
        try:
            fd = os.open(request.path, os.O_RDONLY)
        except OSError as exc:
            raise OutputError(f"cannot read {request.path}: {exc.strerror}") from exc
        try:
            before = os.fstat(fd)
            total = before.st_size
            chunk_bytes = max(request.chunk_bytes, -(-total // self.limits.max_chunks))
            spans = plan_chunks(total, chunk_bytes)
            push_empty_config(self.client)
            uploaded = self._upload_chunks(fd, spans, request, seal_to, on_progress, journal)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise OutputError(f"{request.path} changed while it was being sent; send it again")
        layers = [layer for layer, _ in uploaded]
        extra: dict[str, str] = {}
        announced = filename
        if seal_to:
            sealed = request.sealed
            if sealed is None:
                facts = SealedFacts(filename, total, tuple(sha for _, sha in uploaded))
                sealed = seal_annotation(facts, seal_to)
                if journal.sealed is not None:
                    journal.sealed(sealed)
            extra = {A_ENCRYPTION: ENCRYPTION_AGE, A_SEALED: sealed}
            announced = neutral_filename(message_id)
        deliveries = []
        for name in plan.names:
            done = request.delivered.get(name)
            if done is None:
                annotations = manifest.message_annotations(
                    sender=self.identity,
                    recipient=name,
                    created_at=created_at,
                    ttl_seconds=request.ttl_seconds,
                    message_id=message_id,
                    filename=announced,
                    total_bytes=total,
                    chunk_bytes=chunk_bytes,
                    chunk_count=len(spans),
                    compression=request.compression,
                )
                tag = protocol.message_tag(name, created_at, session_id, message_id)
                done = self._publish(manifest.build_message(annotations | extra, layers), tag, name)
                if journal.delivered is not None:
                    journal.delivered(done)
            deliveries.append(done)
        first = deliveries[0]
        log.info(
            "sent %s%s to %s",
            filename,
            " sealed" if seal_to else "",
            ", ".join(f"{d.recipient} as {d.tag} ({d.digest})" for d in deliveries),
        )
        return SentMessage(
            message_id,
            first.digest,
            first.tag,
            first.recipient,
            filename,
            total,
            first.bundle_digest,
            created_at,
            bool(seal_to),
            tuple(deliveries),
        )

    def _publish(self, raw: bytes, tag: str, recipient: str) -> Delivery:
        """Untagged manifest, its signature, then the inbox tag."""
        pushed = self.client.push_manifest(raw)
        subject = manifest.Descriptor(protocol.OCI_MANIFEST, pushed.digest, len(raw))
        bundle_digest = attach_bundle(self.client, subject, self.signer.sign_digest(pushed.digest))
        self.client.push_manifest(raw, tag)
        return Delivery(recipient, pushed.digest, tag, bundle_digest)

    def _upload_chunks(
        self,
        fd: int,
        spans: list[ChunkSpan],
        request: SendRequest,
        seal_to: list[AgeRecipient],
        on_progress: Callable[[int], None] | None,
        journal: SendJournal,
    ) -> list[tuple[manifest.Descriptor, str]]:
        lock = threading.Lock()

        def progress(n: int) -> None:
            if on_progress is not None:
                with lock:
                    on_progress(n)

        def one(span: ChunkSpan) -> tuple[manifest.Descriptor, str]:
            layer, sha = self._upload_chunk(fd, span, request, seal_to, progress)
            if journal.chunk is not None:
                with lock:
                    journal.chunk(span.index, layer, sha)
            return layer, sha

        if len(spans) <= 1:
            return [one(span) for span in spans]
        with ThreadPoolExecutor(UPLOAD_WORKERS, thread_name_prefix="chunk-upload") as pool:
            return list(pool.map(one, spans))

    def _upload_chunk(
        self,
        fd: int,
        span: ChunkSpan,
        request: SendRequest,
        seal_to: list[AgeRecipient],
        progress: Callable[[int], None],
    ) -> tuple[manifest.Descriptor, str]:
        """One layer: reused if an earlier try uploaded it, else compressed (sealed) and pushed.

        Returns the descriptor and, for a sealed send, the chunk's plaintext
        sha256 (empty for plaintext, which needs none).
        """
        media_types = SEALED_CHUNK_MEDIA_TYPES if seal_to else protocol.CHUNK_MEDIA_TYPES
        media_type = media_types[request.compression]
        annotations = {protocol.A_CHUNK_INDEX: str(span.index)}
        known = request.known_chunks.get(span.index)
        known_sha = request.known_sha256.get(span.index, "")
        if (
            known is not None
            and known.media_type == media_type
            and (known_sha or not seal_to)
            and self.client.has_blob(known.digest)
        ):
            progress(span.length)
            return manifest.Descriptor(media_type, known.digest, known.size, annotations), known_sha
        attempts = Attempts(CHUNK_RETRY, f"upload of chunk {span.index}")
        while True:
            attempts.start()
            plain = hashlib.sha256() if seal_to else None
            pieces = layer_stream(fd, span, request.compression, plain_digest=plain)
            stream = seal_pieces(pieces, seal_to) if seal_to else pieces
            try:
                try:
                    blob = self.client.push_blob_stream(stream, media_type)
                finally:
                    # Stops the sealing thread of a failed upload now, not at GC.
                    close = getattr(stream, "close", None)
                    if close is not None:
                        close()
            except RegistryUnavailableError as exc:
                if attempts.again(f"{exc}; restarting that chunk"):
                    continue
                raise
            progress(span.length)
            sha = plain.hexdigest() if plain is not None else ""
            return manifest.Descriptor(media_type, blob.digest, blob.size, annotations), sha
