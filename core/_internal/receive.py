"""Receiving: verify before expose, in the order of SPEC section 5.

Caveats first:

* ``verify_message`` covers steps 2-7 (manifest, bundle, signer, sender, TTL) and
  touches no chunk. ``fetch_chunk`` covers step 8 for one chunk: it downloads the
  compressed blob into a private spool (memory, or an unlinked temp file for big
  chunks), checks its digest, and only then decompresses into the caller's file.
  Nothing unverified reaches the caller.
* ``materialise`` (step 9) writes into a hidden 0600 temp file in the output
  folder, fsyncs, and links it to a free name (``os.link`` fails instead of
  overwriting), then fsyncs the folder.
* A bad message raises; the caller reports it and goes on with the others.
* Sealed messages (SPEC 9): :meth:`Receiver.open_message` runs only after steps
  4-7 passed (``verify_message`` calls it last) and is the only place that
  decrypts the ``sealed`` annotation; it also refuses plaintext where the
  sender's trust entry or the config requires sealed messages. A sealed chunk is
  opened only for a message it returned (``Message.sealed`` set), after the
  ciphertext's digest was checked, into the caller's private ``out``: the CLI's
  hidden temp file or a cache entry not yet committed, both dropped on failure.
  ``recv`` decrypts each chunk on the prefetch thread right after its download,
  so it overlaps the decompression, hashing and writing of the chunk before.
  A chunk too large for memory is decrypted in an unnamed file in the output
  folder or my private chunk-cache folder, never in the system's temp folder.
* My age identities (current and rotated-out ones) are read from the identity
  file at the first sealed message a receiver meets, not before: a plaintext-only
  user needs no age key, and a rotation applies from the next receiver on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from dockercomms.core import protocol
from dockercomms.core._internal import manifest
from dockercomms.core._internal.chunking import ByteSink, extract_layer
from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core._internal.sealed_message import (
    A_SEALED,
    SealedFacts,
    check_chunk,
    open_annotation,
)
from dockercomms.core._internal.sealing import AgeIdentity, open_in_place
from dockercomms.core._internal.signatures import DiscoveryMode, bundle_candidates
from dockercomms.core._internal.signing.verify import BundleVerifier, VerifiedSigner
from dockercomms.core.collision_names import suffixed_names
from dockercomms.core.errors import (
    DockerCommsError,
    ExpiredError,
    ManifestError,
    NotARecipientError,
    NotSealedError,
    OutputError,
    SenderMismatchError,
    SignatureError,
    VerificationError,
)
from dockercomms.core.trust import TrustPolicy

log = logging.getLogger(__name__)

CLOCK_SKEW = timedelta(minutes=5)
SPOOL_IN_MEMORY = 64 * 1024 * 1024
WRITEBACK_STEP = 8 * 1024 * 1024
BUFFER_ROUNDING = 1024 * 1024
#: Names tried in the output folder (the own name, then suffixed ones) before giving up.
MAX_NAME_CANDIDATES = 1000
Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class VerifiedMessage:
    """A message whose manifest, signature and signer verified (chunks not yet)."""

    message: manifest.Message
    signer: VerifiedSigner


@dataclass(frozen=True)
class InboxEntry:
    """One tag in my inbox: the parsed message, or why it could not be parsed.

    ``digest`` is the manifest digest whenever the manifest could be fetched, even
    if it did not parse, so a rejection can be remembered by it.
    """

    tag: str
    message: manifest.Message | None
    error: DockerCommsError | None
    digest: str | None = None


class SeenMessages:
    """The de-duplication rule of an inbox: among *verified* messages only.

    Two tags are the same message when they name the same manifest digest, or
    when the same verified signer sent the same message id (a re-send under a
    new date). Nothing unverified takes part: an unsigned decoy carrying someone's
    (public) message id hides nothing, and one trusted sender reusing another's
    message id is a different message.
    """

    def __init__(self) -> None:
        self._ids: set[tuple[str, str]] = set()
        self._digests: set[str] = set()

    def first_time(self, message: manifest.Message, signer: VerifiedSigner) -> bool:
        """True the first time this verified message (by digest, or sender and id) comes up."""
        key = (signer.name, message.message_id)
        if key in self._ids or message.digest in self._digests:
            return False
        self._ids.add(key)
        self._digests.add(message.digest)
        return True


class Opening:
    """What opening sealed messages needs (SPEC 9): my age identities, who must seal.

    Caveats first: ``identity_file`` is read at the first :meth:`identities` call
    and kept for the life of this object (one receiver, one call or one listing
    batch). A missing file means I have no age identity: a sealed message is then
    one I cannot open (:class:`~.errors.NotARecipientError`, naming the fix); an
    unreadable or loosely permitted one is my set-up (a ``ConfigError``, tried again).
    """

    def __init__(
        self,
        identity_file: Path | None = None,
        *,
        policy: TrustPolicy | None = None,
        require_all: bool = False,
        private_dir: Path | None = None,
    ) -> None:
        self._identity_file = identity_file
        self._private_dir = private_dir
        self._require_all = require_all
        self._required = frozenset(
            name
            for name, contact in (policy.contacts if policy else {}).items()
            if contact.require_sealed
        )
        self._identities: list[AgeIdentity] | None = None
        self._lock = threading.Lock()

    def requires_sealed(self, sender: str) -> bool:
        """Whether a plaintext message from ``sender`` is refused."""
        return self._require_all or sender in self._required

    @property
    def fingerprint(self) -> str:
        """What :meth:`requires_sealed` decides by; empty when nothing is required."""
        if not self._require_all and not self._required:
            return ""
        return "require_sealed:" + ("*" if self._require_all else ",".join(sorted(self._required)))

    def private_dir(self) -> Path:
        """My private (0700) folder for a sealed chunk too large for memory.

        The chunk cache's folder: decrypted bytes live there anyway (SEMANTICS.md).
        """
        if self._private_dir is None:
            raise OutputError("no private folder to open a sealed chunk larger than memory in")
        self._private_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._private_dir.stat().st_mode & 0o077:
            self._private_dir.chmod(0o700)
        return self._private_dir

    def identities(self) -> list[AgeIdentity]:
        """Every age identity of mine, current first (what opens a sealed piece)."""
        from dockercomms.core.age_keys import load_identity_file

        with self._lock:
            if self._identities is None:
                path = self._identity_file
                if path is None or not path.exists():
                    raise NotARecipientError(
                        "the message is sealed, and I have no age identity to open it with "
                        f"({path or 'none configured'}); run 'dockercomms init' to make one "
                        "and give senders my new card"
                    )
                self._identities = load_identity_file(path).identities
            return self._identities


class Receiver:
    """Reads and verifies messages addressed to ``me`` in one repository.

    ``opening`` holds my age identities and who must send sealed (SPEC 9); the
    default has neither, so a sealed message cannot be opened.
    """

    def __init__(
        self,
        client: RegistryClient,
        verifier: BundleVerifier,
        me: str,
        *,
        clock: Clock = _utcnow,
        bundle_mode: DiscoveryMode = "auto",
        opening: Opening | None = None,
    ) -> None:
        self.client = client
        self.verifier = verifier
        self.me = me
        self.clock = clock
        self.bundle_mode = bundle_mode
        self.opening = opening or Opening()

    @property
    def policy_fingerprint(self) -> str:
        """The trust policy's fingerprint, with who must seal when anyone must.

        A rejection that trust decided (signature, signer, a refused plaintext, a
        message sealed to none of my keys) is remembered under this, so it is
        retried when either changes. Without sealing requirements it is the
        verifier's own, so rejections remembered before sealing still count.
        """
        base = self.verifier.policy_fingerprint
        extra = self.opening.fingerprint
        if not extra:
            return base
        return hashlib.sha256(f"{base}\n{extra}".encode()).hexdigest()

    # Step 1.
    def inbox_tags(self) -> list[str]:
        """Every message tag addressed to me (names that break the tag grammar left out)."""
        tags = self.client.list_tags(protocol.inbox_prefix(self.me))
        # A registry may list anything; a name that is no tag is no message.
        return [tag for tag in tags if protocol.TAG_PATTERN.fullmatch(tag)]

    def inbox_entry(self, tag: str) -> InboxEntry:
        """One inbox tag's manifest, parsed, but neither verified nor de-duplicated.

        De-duplication needs what other tags named (the same digest verifies the
        same way) and, by message id, the verified sender (:class:`SeenMessages`).
        """
        try:
            raw, digest = self.client.fetch_manifest(tag)
        except DockerCommsError as exc:
            return InboxEntry(tag, None, exc)
        try:
            message = self.parse_message(raw, digest, tag)
        except DockerCommsError as exc:
            return InboxEntry(tag, None, exc, digest)
        return InboxEntry(tag, message, None, digest)

    # Steps 2-3.
    def fetch_message(self, reference: str, *, check_recipient: bool = True) -> manifest.Message:
        """Fetch and validate a message manifest by tag or digest."""
        raw, digest = self.client.fetch_manifest(reference)
        tag = None if protocol.DIGEST_PATTERN.fullmatch(reference) else reference
        return self.parse_message(raw, digest, tag, check_recipient=check_recipient)

    def parse_message(
        self, raw: bytes, digest: str, tag: str | None, *, check_recipient: bool = True
    ) -> manifest.Message:
        """Step 3 on manifest bytes already fetched."""
        return manifest.parse_message(
            raw,
            digest,
            tag=tag,
            me=self.me if check_recipient else None,
            limits=self.client.limits,
        )

    # Steps 4-7, then SPEC 9's opening.
    def verify_message(self, message: manifest.Message) -> VerifiedMessage:
        """Verify signature, signer and freshness, then open it if sealed; touches no chunk."""
        signer = self.verify_signer(message)
        self.check_fresh(message)
        return VerifiedMessage(self.open_message(message, signer), signer)

    def open_message(self, message: manifest.Message, signer: VerifiedSigner) -> manifest.Message:
        """SPEC 9 after steps 4-7: the message with its ``sealed`` facts and real name.

        ``signer`` is the verified signer (steps 4-6 passed; the caller checked
        step 7). A plaintext message comes back as it is unless ``signer``'s name
        or the config requires sealed ones (:class:`~.errors.NotSealedError`).
        """
        if signer.name != message.sender:
            raise SenderMismatchError("a message is opened only for its verified sender")
        if not message.encrypted:
            # My own messages (sent/, notes to myself) are not "received from" anyone.
            if self.opening.requires_sealed(signer.name) and message.sender != self.me:
                raise NotSealedError(
                    f"plaintext message from {message.sender!r}, who must send sealed "
                    "(its trust entry or the config require_sealed)"
                )
            return message
        if message.sealed is not None:
            return message
        facts = open_annotation(
            message.annotations[A_SEALED],
            self.opening.identities(),
            total_bytes=message.total_bytes,
            chunk_count=message.chunk_count,
            limits=self.client.limits,
        )
        return dataclasses.replace(message, filename=facts.filename, sealed=facts)

    def verify_signer(self, message: manifest.Message) -> VerifiedSigner:
        """Steps 4-6: a trusted signature, by exactly the claimed sender."""
        signer = self.verify_signature(message.digest)
        # 6. The signer must be trusted as exactly the claimed sender.
        if signer.name != message.sender:
            raise SenderMismatchError(
                f"message claims sender {message.sender!r} but is signed by {signer.identity} "
                f"(trusted as {signer.name!r})"
            )
        return signer

    def check_fresh(self, message: manifest.Message) -> None:
        """Step 7: refuse expired messages and those from the future (clock skew allowed).

        An expired message stays expired; one from the future may become valid.
        """
        now = self.clock()
        if message.expires_at + CLOCK_SKEW < now:
            raise ExpiredError(
                f"message expired at {protocol.format_timestamp(message.expires_at)}"
            )
        if message.created_at - CLOCK_SKEW > now:
            raise VerificationError(
                "message claims to be created in the future "
                f"({protocol.format_timestamp(message.created_at)})"
            )

    def verify_signature(self, subject_digest: str) -> VerifiedSigner:
        """Steps 4-5: the first bundle that verifies for ``subject_digest`` wins."""
        first_error: DockerCommsError | None = None
        for candidate in bundle_candidates(self.client, subject_digest, self.bundle_mode):
            if isinstance(candidate, DockerCommsError):
                first_error = first_error or candidate
                continue
            try:
                return self.verifier.verify(candidate, subject_digest)
            except VerificationError as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        raise SignatureError(f"no signature found for {subject_digest}")

    # Step 8, one chunk.
    def fetch_chunk(
        self,
        message: manifest.Message,
        index: int,
        out: ByteSink,
        *,
        on_progress: Callable[[int], None] | None = None,
        buffers: BufferPool | None = None,
    ) -> None:
        """Write chunk ``index``'s verified bytes to ``out`` (nothing on failure)."""
        with self.download_and_open(
            message, index, on_progress=on_progress, buffers=buffers
        ) as blob:
            self.extract_chunk(message, index, blob, out)

    def download_chunk(
        self,
        message: manifest.Message,
        index: int,
        *,
        on_progress: Callable[[int], None] | None = None,
        buffers: BufferPool | None = None,
        spill_dir: Path | None = None,
    ) -> BlobSpool:
        """The chunk's compressed blob, digest-checked, in a private :class:`BlobSpool`.

        A blob too large for memory spills to an unnamed file in ``spill_dir``
        (default: the system's temp folder).
        """
        layer = message.chunks[index]

        def attempt() -> BlobSpool:
            spool = BlobSpool(layer.size, buffers, spill_dir)
            try:
                self.client.fetch_blob(
                    layer.digest,
                    spool,
                    expected_size=layer.size,
                    on_progress=on_progress or (lambda _: None),
                )
            except BaseException:
                spool.close()
                raise
            return spool  # the caller owns and closes it

        return self.client.retry_broken_body(f"chunk {index}", attempt)

    def extract_chunk(
        self, message: manifest.Message, index: int, blob: BlobSpool, out: ByteSink
    ) -> None:
        """Decompress a verified blob from :meth:`download_chunk` into ``out``.

        A sealed chunk is decrypted in place first and its bytes checked against
        ``chunk_sha256`` (:func:`.sealed_message.open_chunk`); only a message
        :meth:`open_message` returned has those facts, so an unverified one is refused.
        """
        length = min(message.chunk_bytes, message.total_bytes - index * message.chunk_bytes)
        if message.encrypted:
            sealed = self._sealed_facts(message, index)
            if not blob.opened:
                blob.open_sealed(self.opening.identities(), what=f"chunk {index}")
            check_chunk(
                blob.contents(),
                index=index,
                expected_length=length,
                compression=message.compression,
                chunk_sha256=sealed.chunk_sha256[index],
                out=out,
            )
            return
        extract_layer(
            blob.contents(),
            index=index,
            expected_length=length,
            compression=message.compression,
            out=out,
        )

    def _sealed_facts(self, message: manifest.Message, index: int) -> SealedFacts:
        """The opened facts of a sealed message; refused for one that did not verify."""
        if message.sealed is None:
            raise VerificationError(
                f"chunk {index} of a sealed message asked for before the message verified"
            )
        return message.sealed

    def download_and_open(
        self,
        message: manifest.Message,
        index: int,
        *,
        on_progress: Callable[[int], None] | None = None,
        buffers: BufferPool | None = None,
        spill_dir: Path | None = None,
    ) -> BlobSpool:
        """:meth:`download_chunk`, then for a sealed message its decryption, in place.

        Run on the prefetch thread, so decrypting chunk *i+1* overlaps writing
        chunk *i* (pyrage holds the GIL, but hashing, decompressing and writing
        the other chunk mostly do not). A sealed blob too large for memory is
        decrypted in an unnamed file in ``spill_dir`` (the output folder), else
        in my private folder (``Opening.private_dir``), never in the system's
        temp folder: nothing decrypted lands outside those two.
        """
        if message.encrypted:
            self._sealed_facts(message, index)  # before a byte is fetched
            if spill_dir is None and message.chunks[index].size > SPOOL_IN_MEMORY:
                spill_dir = self.opening.private_dir()
        blob = self.download_chunk(
            message, index, on_progress=on_progress, buffers=buffers, spill_dir=spill_dir
        )
        if message.encrypted:
            try:
                blob.open_sealed(self.opening.identities(), what=f"chunk {index}")
            except BaseException:
                blob.close()
                raise
        return blob

    # Steps 8-9 for the CLI.
    def materialise(
        self,
        verified: VerifiedMessage,
        out_dir: Path,
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> Path:
        """Write the whole verified file into ``out_dir`` under a free name.

        The next chunk downloads and hashes while the current one decompresses,
        so the network, hashing and decompression overlap on two cores. The
        space is reserved first: a full disk fails before any download.
        """
        message = verified.message
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=".dockercomms-", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                _reserve(out.fileno(), message.total_bytes)
                self._write_chunks(message, EarlyWriteback(out), on_progress, out_dir)
                out.flush()
                if out.tell() != message.total_bytes:
                    raise ManifestError(
                        f"received {out.tell()} bytes, manifest says {message.total_bytes}"
                    )
                os.fsync(out.fileno())
            final = _link_to_free_name(tmp, out_dir, message)
        except OSError as exc:
            raise OutputError(f"cannot write into {out_dir}: {exc.strerror or exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(out_dir)
        return final

    def _write_chunks(
        self,
        message: manifest.Message,
        out: ByteSink,
        on_progress: Callable[[int], None] | None,
        out_dir: Path,
    ) -> None:
        if message.chunk_count == 0:
            return
        buffers = BufferPool()
        download = functools.partial(
            self.download_and_open,
            message,
            on_progress=on_progress,
            buffers=buffers,
            spill_dir=out_dir,
        )
        with ThreadPoolExecutor(1, thread_name_prefix="chunk-prefetch") as pool:
            pending = pool.submit(download, 0)
            for index in range(message.chunk_count):
                blob = pending.result()
                if index + 1 < message.chunk_count:
                    pending = pool.submit(download, index + 1)
                try:
                    with blob:
                        self.extract_chunk(message, index, blob, out)
                except BaseException:
                    _discard(pending)
                    raise


class BufferPool:
    """A few chunk-sized buffers reused across the chunks of one message.

    Fresh memory costs a page fault per 4 KiB on first touch (and far more on
    some VMs); a 1 GiB receive would otherwise touch 1 GiB of new memory just to
    spool its chunks. Scoped to one transfer (or cleared when idle) so a
    long-lived process keeps nothing.
    """

    def __init__(self, keep: int = 2) -> None:
        self._free: list[bytearray] = []
        self._keep = keep
        self._lock = threading.Lock()

    def take(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes (its contents are stale)."""
        with self._lock:
            for position, buffer in enumerate(self._free):
                if len(buffer) >= size:
                    return self._free.pop(position)
        # Rounded up, so the next chunk fits even if its blob is a little larger:
        # sealed blobs differ by a few hundred bytes (age's random "grease"
        # stanza), and a buffer too small for each next chunk would be one more
        # 32 MiB buffer per chunk in flight (measured: 181 MiB peak instead of 117).
        return bytearray(-(-size // BUFFER_ROUNDING) * BUFFER_ROUNDING)

    def give(self, buffer: bytearray) -> None:
        """Hand a buffer back once nothing reads it any more."""
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(buffer)

    def clear(self) -> None:
        """Let every free buffer go (a long-lived owner that has gone idle)."""
        with self._lock:
            self._free.clear()


class BlobSpool:
    """Private holder of one compressed chunk while its digest is checked, then read.

    Blobs up to ``SPOOL_IN_MEMORY`` go into one preallocated buffer (no growing
    copies, no disk write), from ``buffers`` when given; the decompressor later
    reads that buffer in place. Larger blobs spill to an unlinked temp file.
    """

    def __init__(
        self, size: int, buffers: BufferPool | None = None, directory: Path | None = None
    ) -> None:
        self._memory: bytearray | None = None
        self._file: BinaryIO | None = None
        self._buffers = buffers
        if size <= SPOOL_IN_MEMORY:
            self._memory = buffers.take(size) if buffers else bytearray(size)
        else:
            self._file = tempfile.TemporaryFile(  # noqa: SIM115
                prefix=".dockercomms-blob-", dir=directory
            )
        self._filled = 0
        #: The age file it held was decrypted over itself (SPEC 9).
        self.opened = False

    def write(self, piece: bytes | memoryview) -> int:
        """Append ``piece`` (the caller never writes more than the size given)."""
        if self._memory is None:
            assert self._file is not None
            return self._file.write(piece)
        end = self._filled + len(piece)
        if end > len(self._memory):
            raise ValueError("blob is larger than its spool")
        self._memory[self._filled : end] = piece
        self._filled = end
        return len(piece)

    def contents(self) -> BinaryIO | memoryview:
        """What was written: a view of the buffer, or the temp file from its start."""
        if self._memory is not None:
            return memoryview(self._memory)[: self._filled]
        assert self._file is not None
        self._file.seek(0)
        return self._file

    def open_sealed(self, identities: Sequence[AgeIdentity], *, what: str) -> None:
        """Decrypt the digest-checked age file held here over itself (SPEC 9).

        :meth:`contents` then gives the plaintext (the compressed tar); on an
        error the contents are garbage and the spool must be closed.
        """
        plain = open_in_place(self.contents(), identities, what=what)
        if isinstance(plain, memoryview):
            self._filled = len(plain)
        self.opened = True

    def close(self) -> None:
        """Free (or hand back) the buffer, or delete the temp file."""
        if self._memory is not None and self._buffers is not None:
            self._buffers.give(self._memory)
        self._memory = None
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> BlobSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EarlyWriteback:
    """A write-only file wrapper that starts the disk on every ``step`` bytes written.

    ``POSIX_FADV_DONTNEED`` on freshly written pages starts their writeback without
    waiting for it, so the disk works while later chunks download and the fsync
    before the rename (SPEC 5 step 9) finds little left to do.
    """

    def __init__(self, out: BinaryIO, step: int = WRITEBACK_STEP) -> None:
        self._out = out
        self._step = step
        self._position = out.tell()
        self._started = self._position

    def write(self, data: bytes | memoryview) -> int:
        """Write all of ``data``; every ``step`` bytes, start their writeback."""
        written = self._out.write(data)
        self._position += written
        if self._position - self._started >= self._step:
            self._out.flush()
            length = self._position - self._started
            os.posix_fadvise(self._out.fileno(), self._started, length, os.POSIX_FADV_DONTNEED)
            self._started = self._position
        return written


def _reserve(fd: int, size: int) -> None:
    """Allocate the whole output up front.

    A full disk fails here (ENOSPC) instead of after most of a download, and
    ext4 no longer allocates blocks during the early writeback, which otherwise
    stalls our own writes behind it (measured: 1 GiB written + fsynced in 1.25 s
    instead of 1.71 s). Filesystems without ``fallocate`` get glibc's emulation.
    """
    if size > 0:
        os.posix_fallocate(fd, 0, size)


def _discard(pending: Future[BlobSpool]) -> None:
    """Close a prefetched blob nobody will read (after a failure)."""
    try:
        pending.result().close()
    except BaseException:  # its own failure no longer matters
        return


def _link_to_free_name(tmp: Path, out_dir: Path, message: manifest.Message) -> Path:
    suffix = f"{message.created_at:%Y%m%d}-{message.digest.split(':')[1][:8]}"
    for name in suffixed_names(message.filename, suffix, count=MAX_NAME_CANDIDATES):
        with contextlib.suppress(FileExistsError):
            os.link(tmp, out_dir / name)
            return out_dir / name
    raise OutputError(f"no free name for {message.filename!r} in {out_dir}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
