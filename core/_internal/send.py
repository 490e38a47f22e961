"""Sending a file: chunks, manifest, signature, and only then the inbox tag (SPEC 2-3).

Caveats first:

* The order is fixed: chunks -> untagged manifest -> bundle (+ fallback index)
  -> inbox tag. A reader can never list a message that is not signed yet.
* Every input of the manifest (message id, session id, created_at) can be passed
  in, so a durable queue that retries a send produces the *same* manifest digest
  and tag: a retry is idempotent, never a second message.
* Chunks already uploaded (``known_chunks``) are reused after a HEAD, so an
  interrupted send never re-sends what the registry already has.
* Two chunks upload at a time: compression, hashing and the network overlap on
  two cores, and memory stays at a few MiB per chunk.
"""

from __future__ import annotations

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
from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core._internal.registry.retry import Attempts, RetryPolicy
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


@dataclass
class SendRequest:
    """One file to send, with every input that decides the manifest's bytes.

    Attributes:
        known_chunks: chunk index -> layer descriptor uploaded by an earlier try.
    """

    path: Path
    recipient: str
    filename: str | None = None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    compression: str = "zstd"
    ttl_seconds: int = protocol.DEFAULT_TTL_SECONDS
    session_id: str | None = None
    message_id: str | None = None
    created_at: datetime | None = None
    known_chunks: dict[int, manifest.Descriptor] = field(default_factory=dict)


@dataclass(frozen=True)
class SentMessage:
    """The result of a send, as printed by the CLI and kept by the queue."""

    message_id: str
    digest: str
    tag: str
    recipient: str
    filename: str
    total_bytes: int
    bundle_digest: str
    created_at: datetime


ChunkDone = Callable[[int, manifest.Descriptor], None]


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
    ) -> SentMessage:
        """Send ``request.path``; see the module docstring for the order of pushes."""
        if request.compression not in protocol.COMPRESSIONS:
            raise ConfigError(f"unknown compression {request.compression!r}")
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
            layers = self._upload_chunks(fd, spans, request, on_progress, on_chunk)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise OutputError(f"{request.path} changed while it was being sent; send it again")
        annotations = manifest.message_annotations(
            sender=self.identity,
            recipient=request.recipient,
            created_at=created_at,
            ttl_seconds=request.ttl_seconds,
            message_id=message_id,
            filename=filename,
            total_bytes=total,
            chunk_bytes=chunk_bytes,
            chunk_count=len(spans),
            compression=request.compression,
        )
        raw = manifest.build_message(annotations, layers)
        tag = protocol.message_tag(request.recipient, created_at, session_id, message_id)
        pushed = self.client.push_manifest(raw)
        subject = manifest.Descriptor(protocol.OCI_MANIFEST, pushed.digest, len(raw))
        bundle_digest = attach_bundle(self.client, subject, self.signer.sign_digest(pushed.digest))
        self.client.push_manifest(raw, tag)
        log.info("sent %s to %s as %s (%s)", filename, request.recipient, tag, pushed.digest)
        return SentMessage(
            message_id,
            pushed.digest,
            tag,
            request.recipient,
            filename,
            total,
            bundle_digest,
            created_at,
        )

    def _upload_chunks(
        self,
        fd: int,
        spans: list[ChunkSpan],
        request: SendRequest,
        on_progress: Callable[[int], None] | None,
        on_chunk: ChunkDone | None,
    ) -> list[manifest.Descriptor]:
        lock = threading.Lock()

        def progress(n: int) -> None:
            if on_progress is not None:
                with lock:
                    on_progress(n)

        def one(span: ChunkSpan) -> manifest.Descriptor:
            layer = self._upload_chunk(fd, span, request, progress)
            if on_chunk is not None:
                with lock:
                    on_chunk(span.index, layer)
            return layer

        if len(spans) <= 1:
            return [one(span) for span in spans]
        with ThreadPoolExecutor(UPLOAD_WORKERS, thread_name_prefix="chunk-upload") as pool:
            return list(pool.map(one, spans))

    def _upload_chunk(
        self, fd: int, span: ChunkSpan, request: SendRequest, progress: Callable[[int], None]
    ) -> manifest.Descriptor:
        media_type = protocol.CHUNK_MEDIA_TYPES[request.compression]
        annotations = {protocol.A_CHUNK_INDEX: str(span.index)}
        known = request.known_chunks.get(span.index)
        if (
            known is not None
            and known.media_type == media_type
            and self.client.has_blob(known.digest)
        ):
            progress(span.length)
            return manifest.Descriptor(media_type, known.digest, known.size, annotations)
        attempts = Attempts(CHUNK_RETRY, f"upload of chunk {span.index}")
        while True:
            attempts.start()
            try:
                blob = self.client.push_blob_stream(
                    layer_stream(fd, span, request.compression), media_type
                )
            except RegistryUnavailableError as exc:
                if attempts.again(f"{exc}; restarting that chunk"):
                    continue
                raise
            progress(span.length)
            return manifest.Descriptor(media_type, blob.digest, blob.size, annotations)
