"""Sealing: one age v1 file (SPEC 9) written and opened in bounded memory and bounded work.

Caveats first:

* Open only bytes whose digest was already checked against a signed manifest (the
  caller guarantees it; SPEC 5 steps 1-8). age authenticates every 64 KiB block,
  but with the file key, which every recipient knows: only the signed digest says
  that the sender made these bytes. age also hands out each block as soon as it
  authenticates, so a sink may hold a prefix of a file that fails further on:
  write into something private and throw it away on any error.
* Before pyrage sees a byte, :func:`inspect_header` checks the header by counting,
  with no crypto: the version line, at most :data:`MAX_STANZAS` recipient stanzas,
  at most :data:`MAX_HEADER_BYTES` bytes, and a length that an age payload can
  have. A 10,000-stanza header costs a scan of 64 KiB, never 10,000 X25519
  operations, and the plaintext size (exact, from the length) is checked against
  the caller's cap before anything is decrypted.
* Errors are ours, never pyrage's: :class:`NotARecipientError` (sealed to someone
  else, exit 2), :class:`SealedTruncatedError` (no age file has this length, or
  its last block fails: cut short, or its very end altered),
  :class:`SealedTamperedError` (the header MAC or an earlier block fails),
  :class:`SealedDataError` (anything else malformed), :class:`LimitExceededError`
  (header or plaintext too big). pyrage reports "not a recipient" only as the
  text ``No matching keys found``; a test pins it, so a pyrage that rewords it
  fails the suite instead of changing an exit code.
* pyrage holds the GIL while it works, except inside the Python ``read``/``write``
  callbacks it calls (every 8-64 KiB), where other threads get their turn. So a
  second thread downloading or hashing interleaves with a decrypt but does not run
  beside it on the other core; prefetching the next chunk still overlaps the
  network wait.
* :func:`open_in_place` decrypts a chunk into the very buffer (or temp file) that
  holds its ciphertext: a plaintext byte is written only after the block holding
  it was read, and plaintext blocks are shorter than ciphertext ones, so the
  writer never overtakes the reader (checked on every write anyway). A 32 MiB
  chunk is never held twice.
* :func:`seal_pieces` streams. It seals with the stock ``age`` binary in its own
  process when the machine has one (``age_process``: no GIL, ~1.7 GiB/s, output
  checked before the last piece is handed over); otherwise pyrage runs in a
  worker thread that reads the plaintext pieces and hands ciphertext back through
  a queue of two pieces. Either way a send holds a few MiB per chunk, not the chunk.

Measured in-process on this kind of machine (2 vCPU, shared with other work, load
~2.7; medians of 7), one 32 MiB chunk of random bytes: :func:`seal_pieces` from
1 MiB pieces 557 MiB/s (up to 900 on a quiet machine); :func:`open_in_place`
714 MiB/s on a memory buffer, 479 on a temp file; :func:`open_bytes` 373 (it
copies). A whole sealed chunk: send (``layer_stream`` zstd + :func:`seal_pieces` +
``span_sha256``) 465 MiB/s against 2.7 GiB/s plain; receive
(``sealed_message.open_chunk``: decrypt, decompress, sha256) 478 MiB/s against
9 GiB/s plain (zstd stores random bytes, so decompressing them is a copy). For
comparison sha256 alone is 1.1 GiB/s; sealing-notes.md measured pyrage file to
file at 473 (encrypt) and 322 MiB/s (decrypt).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Final, TypeAlias

import pyrage

from dockercomms.core._internal.age_process import (
    AGE_BINARY_ENV,
    AgeBinary,
    CheckOutput,
    find_age_binary,
    sealed_by_process,
)
from dockercomms.core._internal.chunking import ByteSink
from dockercomms.core.errors import (
    ConfigError,
    DockerCommsError,
    LimitExceededError,
    NotARecipientError,
    SealedDataError,
    SealedTamperedError,
    SealedTruncatedError,
)
from dockercomms.core.untrusted import shown

#: pyrage's X25519 identity and recipient (``pyrage.x25519.Identity``/``Recipient``).
AgeIdentity: TypeAlias = Any
AgeRecipient: TypeAlias = Any
#: A sealed file held in memory (digest-checked), or an open, seekable file.
Sealed: TypeAlias = bytes | bytearray | memoryview | BinaryIO

#: Most recipient stanzas a header may carry; each costs one X25519 per identity.
MAX_STANZAS: Final = 64
#: Largest header read before refusing; 64 X25519 stanzas take about 7 KiB.
MAX_HEADER_BYTES: Final = 64 * 1024
#: Most recipients we seal to: rage adds one "grease" stanza to every file.
MAX_SEAL_RECIPIENTS: Final = MAX_STANZAS - 1
#: Size of the ciphertext pieces :func:`seal_pieces` yields.
SEAL_PIECE: Final = 1024 * 1024

VERSION_LINE: Final = b"age-encryption.org/v1\n"
_STANZA_START: Final = b"\n-> "
_X25519_STANZA: Final = b"\n-> X25519 "
_MAC_START: Final = b"\n--- "
_MAC_LINE: Final = len(b"--- ") + 43 + 1  # 32-byte HMAC, unpadded base64, newline
_BASE64: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
NONCE_BYTES: Final = 16
BLOCK: Final = 64 * 1024
TAG_BYTES: Final = 16
SEALED_BLOCK: Final = BLOCK + TAG_BYTES
#: What rage says when no identity unwraps any stanza (DecryptError::NoMatchingKeys).
_NO_MATCH: Final = "No matching keys found"


@dataclass(frozen=True)
class AgeLayout:
    """What the header check learned about one age file, before any crypto.

    Attributes:
        header_bytes: length of the header, its MAC line included.
        stanzas: recipient stanzas in the header (rage's grease stanza counts).
        plaintext_bytes: exact plaintext length its total length implies.
    """

    header_bytes: int
    stanzas: int
    plaintext_bytes: int


def plaintext_length(payload_bytes: int) -> int | None:
    """Plaintext length of an age payload (after the nonce); None if none has that length.

    The payload is 64 KiB blocks of 64 KiB + 16 bytes; the last one is shorter or
    full, and empty only when it is the only one.
    """
    full, rest = divmod(payload_bytes, SEALED_BLOCK)
    if rest == 0:
        return full * BLOCK if full else None
    if rest < TAG_BYTES or (rest == TAG_BYTES and full):
        return None
    return full * BLOCK + rest - TAG_BYTES


def sealed_length(plaintext_bytes: int, header_bytes: int) -> int:
    """Length of an age file with this header and plaintext (the inverse of the above)."""
    blocks = max(1, -(-plaintext_bytes // BLOCK))
    return header_bytes + NONCE_BYTES + plaintext_bytes + blocks * TAG_BYTES


def inspect_header(prefix: bytes, total_bytes: int, *, what: str) -> AgeLayout:
    """Check an age file's header from its first bytes, before pyrage sees it.

    ``prefix`` is the file's first ``min(total_bytes, MAX_HEADER_BYTES)`` bytes (or
    more); ``total_bytes`` its length. Counting only: no base64, no crypto.
    """
    seen_all = len(prefix) >= total_bytes
    if not prefix.startswith(VERSION_LINE):
        if seen_all and VERSION_LINE.startswith(prefix):
            raise SealedTruncatedError(f"{what} is cut short inside its age version line")
        raise SealedDataError(f"{what} is not a binary age v1 file (no version line)")
    window = prefix[:MAX_HEADER_BYTES]
    mac_at = window.find(_MAC_START)
    header_bytes = mac_at + 1 + _MAC_LINE
    if mac_at < 0 or header_bytes > len(window):
        if seen_all and len(window) == len(prefix):
            raise SealedTruncatedError(f"{what} is cut short inside its age header")
        raise LimitExceededError(f"{what} has an age header larger than {MAX_HEADER_BYTES} bytes")
    stanzas = window.count(_STANZA_START, 0, mac_at + 1)
    if stanzas > MAX_STANZAS:
        raise LimitExceededError(
            f"{what} has more than {MAX_STANZAS} recipient stanzas in its age header"
        )
    if stanzas == 0:
        raise SealedDataError(f"{what} has no recipient stanza in its age header")
    mac = window[mac_at + len(_MAC_START) : header_bytes - 1]
    if window[header_bytes - 1 : header_bytes] != b"\n" or not _BASE64.issuperset(mac):
        raise SealedDataError(f"{what} has a malformed age header MAC line")
    payload = total_bytes - header_bytes - NONCE_BYTES
    plaintext = plaintext_length(payload) if payload >= 0 else None
    if plaintext is None:
        raise SealedTruncatedError(
            f"{what} is cut short or has bytes after its end: no age file is {total_bytes} "
            f"bytes long with a {header_bytes}-byte header"
        )
    return AgeLayout(header_bytes, stanzas, plaintext)


def recipient_list(recipients: Iterable[AgeRecipient]) -> list[AgeRecipient]:
    """``recipients`` without repeats, checked: at least one, at most the stanza budget."""
    chosen: dict[str, AgeRecipient] = {}
    for recipient in recipients:
        chosen.setdefault(str(recipient), recipient)
    if not chosen:
        raise ConfigError("cannot seal to nobody: no age recipient given")
    if len(chosen) > MAX_SEAL_RECIPIENTS:
        raise ConfigError(
            f"cannot seal to {len(chosen)} age recipients: receivers open at most "
            f"{MAX_SEAL_RECIPIENTS}; send to fewer recipients at a time"
        )
    return list(chosen.values())


def seal_bytes(data: bytes, recipients: Iterable[AgeRecipient]) -> bytes:
    """``data`` as one binary age file to ``recipients`` (small things: the annotation)."""
    sealed: bytes = pyrage.encrypt(data, recipient_list(recipients))
    return sealed


def seal_pieces(
    pieces: Iterable[bytes | memoryview],
    recipients: Iterable[AgeRecipient],
    *,
    piece_bytes: int = SEAL_PIECE,
) -> Iterator[bytes]:
    """Ciphertext pieces (about ``piece_bytes`` each) of one age file holding ``pieces``.

    Made for ``RegistryClient.push_blob_stream(seal_pieces(layer_stream(...), ...))``.
    ``pieces`` is consumed in a worker thread; an error it raises is raised here
    as it was. Closing the iterator early stops the worker and waits for it, so
    a caller whose upload fails should close it (``contextlib.closing``) rather
    than leave the worker parked until garbage collection. Sealing is randomised:
    the same pieces give another blob (and digest) every time.
    """
    chosen = recipient_list(recipients)  # now, not at the first next()
    binary = find_age_binary()
    if binary is None:
        return _sealed_stream(iter(pieces), chosen, piece_bytes)
    check = _binary_output_check(binary, len(chosen))
    return sealed_by_process(binary, iter(pieces), [str(r) for r in chosen], piece_bytes, check)


def _binary_output_check(binary: AgeBinary, recipients: int) -> CheckOutput:
    """The check of what the ``age`` binary wrote: the receiver's header count, and more.

    Exactly one X25519 stanza per recipient (an extra one would be a key we did
    not choose; rage, were it the binary, adds one "grease" stanza of another
    type, hence one spare) and a length that seals exactly what was fed.
    """

    def check(prefix: bytes, total: int, fed: int) -> None:
        what = f"the output of the age binary {binary.path}"
        try:
            layout = inspect_header(prefix, total, what=what)
        except DockerCommsError as exc:
            raise DockerCommsError(f"{exc}; set {AGE_BINARY_ENV}=none to seal in process") from exc
        x25519 = prefix.count(_X25519_STANZA, 0, layout.header_bytes)
        if layout.plaintext_bytes != fed or x25519 != recipients or layout.stanzas > recipients + 1:
            raise DockerCommsError(
                f"{what} seals {layout.plaintext_bytes} bytes to {x25519} X25519 stanzas "
                f"({layout.stanzas} in all), not the {fed} bytes given to {recipients} "
                "recipients; "
                f"set {AGE_BINARY_ENV}=none to seal in process"
            )

    return check


def open_bytes(
    sealed: bytes | bytearray | memoryview,
    identities: Sequence[AgeIdentity],
    *,
    max_plaintext: int,
    what: str,
) -> bytes:
    """The plaintext of a small age file in memory, at most ``max_plaintext`` bytes."""
    plain = bytearray()

    def append(_: int, data: bytes) -> None:
        plain.extend(data)

    _decrypt(_source(sealed), append, identities, max_plaintext, what)
    return bytes(plain)


def open_into(
    sealed: Sealed,
    out: ByteSink,
    identities: Sequence[AgeIdentity],
    *,
    what: str,
    max_plaintext: int | None = None,
) -> int:
    """Stream the plaintext of ``sealed`` into ``out``; return its length.

    A file is read from its start, wherever its position is. ``out`` may hold a
    prefix of the plaintext when this raises (see the caveats).
    """

    def forward(_: int, data: bytes) -> None:
        out.write(data)

    return _decrypt(_source(sealed), forward, identities, max_plaintext, what)


def open_in_place(
    sealed: bytearray | memoryview | BinaryIO,
    identities: Sequence[AgeIdentity],
    *,
    what: str,
    max_plaintext: int | None = None,
) -> memoryview | BinaryIO:
    """Decrypt ``sealed`` over itself; return its plaintext, the same kind of thing.

    A writable buffer (``BlobSpool.contents()`` in memory) gives a view of its
    plaintext prefix; a file (``BlobSpool.contents()`` spilled to disk) is cut to
    its plaintext and rewound. On an error the contents are garbage: discard them.
    """
    if isinstance(sealed, bytes) or (isinstance(sealed, memoryview) and sealed.readonly):
        raise TypeError("open_in_place needs a writable buffer or a file")
    source = _source(sealed)
    length = _decrypt(source, None, identities, max_plaintext, what)
    return source.finish(length)


# -- decrypting ---------------------------------------------------------------------


class _Source:
    """A sealed file of known length, read at offsets, that can take its plaintext back."""

    length: int

    def pread(self, offset: int, size: int) -> bytes:
        raise NotImplementedError

    def pwrite(self, offset: int, data: bytes) -> None:
        raise NotImplementedError

    def finish(self, length: int) -> memoryview | BinaryIO:
        """The plaintext once it was written over the ciphertext, ``length`` bytes."""
        raise NotImplementedError


class _MemorySource(_Source):
    def __init__(self, view: memoryview) -> None:
        self._view = view if view.format == "B" and view.ndim == 1 else view.cast("B")
        self.length = len(self._view)

    def pread(self, offset: int, size: int) -> bytes:
        return bytes(self._view[offset : offset + size])

    def pwrite(self, offset: int, data: bytes) -> None:
        self._view[offset : offset + len(data)] = data

    def finish(self, length: int) -> memoryview:
        return self._view[:length]


class _FileSource(_Source):
    def __init__(self, file: BinaryIO) -> None:
        file.flush()
        self._file = file
        self._fd = file.fileno()
        self.length = os.fstat(self._fd).st_size

    def pread(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, min(size, max(self.length - offset, 0)), offset)

    def pwrite(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def finish(self, length: int) -> BinaryIO:
        os.ftruncate(self._fd, length)
        self._file.seek(0)
        return self._file


def _source(sealed: Sealed) -> _Source:
    if isinstance(sealed, bytes):
        return _MemorySource(memoryview(sealed))  # read-only: open_in_place refuses it
    if isinstance(sealed, bytearray | memoryview):
        return _MemorySource(memoryview(sealed))
    return _FileSource(sealed)


class _PyrageReader:
    """``read`` for pyrage over a source; keeps our own exception for us to raise."""

    def __init__(self, source: _Source) -> None:
        self._source = source
        self.offset = 0
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        want = self._source.length - self.offset if size < 0 else size
        if want <= 0:
            return b""
        try:
            data = self._source.pread(self.offset, want)
        except BaseException as exc:
            self.error = exc
            raise
        self.offset += len(data)
        return data


class _PyrageWriter:
    """``write`` for pyrage into ``put(offset, data)``, refusing more than ``cap`` bytes.

    pyrage flushes its last buffer while being torn down and ignores a failure
    there, so every failure is kept in ``error`` and raised by us afterwards.
    """

    def __init__(self, put: Callable[[int, bytes], None], cap: int, what: str) -> None:
        self._put = put
        self._cap = cap
        self._what = what
        self.written = 0
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        if self.written + len(data) > self._cap:
            self.error = LimitExceededError(f"{self._what} decrypts to more than {self._cap} bytes")
            raise self.error
        try:
            self._put(self.written, data)
        except BaseException as exc:
            self.error = exc
            raise
        self.written += len(data)
        return len(data)

    def flush(self) -> None:
        return None


def _decrypt(
    source: _Source,
    put: Callable[[int, bytes], None] | None,
    identities: Sequence[AgeIdentity],
    max_plaintext: int | None,
    what: str,
) -> int:
    """The one decrypt path: header check, plaintext cap, pyrage, our errors.

    ``put(offset, data)`` takes the plaintext; None writes it over the source.
    """
    if not identities:
        raise ConfigError(f"cannot open {what}: no age identity to open it with")
    layout = inspect_header(source.pread(0, MAX_HEADER_BYTES), source.length, what=what)
    cap = layout.plaintext_bytes if max_plaintext is None else max_plaintext
    if layout.plaintext_bytes > cap:
        raise LimitExceededError(
            f"{what} holds {layout.plaintext_bytes} bytes of plaintext, more than {cap}"
        )
    reader = _PyrageReader(source)

    def behind(offset: int, data: bytes) -> None:
        # Why this always holds is in the module docstring; it is checked all the same.
        if offset + len(data) > reader.offset:
            raise AssertionError("in-place decryption would overwrite unread ciphertext")
        source.pwrite(offset, data)

    writer = _PyrageWriter(put or behind, cap, what)
    try:
        pyrage.decrypt_io(reader, writer, list(identities))
    except Exception as exc:
        ours = reader.error or writer.error
        if ours is not None:
            raise ours from None
        raise _pyrage_error(exc, what, layout, writer.written) from exc
    if writer.error is not None:
        raise writer.error
    if writer.written != layout.plaintext_bytes:
        raise SealedDataError(
            f"{what} decrypted to {writer.written} bytes, its length says {layout.plaintext_bytes}"
        )
    return writer.written


def _pyrage_error(exc: Exception, what: str, layout: AgeLayout, released: int) -> Exception:
    """Our error for what pyrage raised (header stage: DecryptError; blocks: OSError).

    age releases each block's plaintext once it authenticates, so ``released`` (the
    plaintext bytes we were given) says which block failed. Cutting a file short
    can only make its last block fail; a failure before it is an alteration.
    """
    if isinstance(exc, pyrage.DecryptError):
        text = str(exc)
        if text == _NO_MATCH:
            return NotARecipientError(
                f"{what} is sealed to someone else: none of my age identities opens it"
            )
        if "MAC" in text:
            return SealedTamperedError(f"{what} has an age header that fails authentication")
        return SealedDataError(f"{what} has an invalid age header ({shown(text)})")
    if isinstance(exc, OSError):
        blocks = max(1, -(-layout.plaintext_bytes // BLOCK))
        failed = released // BLOCK
        if failed >= blocks - 1:
            return SealedTruncatedError(
                f"{what} ends early: its last age block fails authentication "
                "(cut short, or its end altered)"
            )
        return SealedTamperedError(
            f"{what} is altered: age block {failed + 1} of {blocks} fails authentication"
        )
    return exc


# -- sealing ------------------------------------------------------------------------

_END: Final = object()


class _Cancelled(Exception):
    """The consumer of :func:`seal_pieces` went away; stop encrypting."""


class _IterReader:
    """``read`` for pyrage over an iterator of pieces; keeps the iterator's exception."""

    def __init__(self, pieces: Iterator[bytes | memoryview], cancelled: threading.Event) -> None:
        self._pieces = pieces
        self._cancelled = cancelled
        self._current = memoryview(b"")
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        if self._cancelled.is_set():
            self.error = _Cancelled()
            raise self.error
        while not self._current:
            try:
                piece = next(self._pieces, None)
            except BaseException as exc:
                self.error = exc
                raise
            if piece is None:
                return b""
            self._current = memoryview(piece).cast("B")
        take = len(self._current) if size < 0 else size
        data = bytes(self._current[:take])
        self._current = self._current[take:]
        return data


class _QueueWriter:
    """``write`` for pyrage that hands ``piece_bytes`` pieces to the consumer."""

    def __init__(
        self, handoff: queue.Queue[object], cancelled: threading.Event, piece_bytes: int
    ) -> None:
        self._handoff = handoff
        self._cancelled = cancelled
        self._piece_bytes = piece_bytes
        self._buffer = bytearray()
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        self._buffer += data
        if len(self._buffer) >= self._piece_bytes:
            self._hand_over()
        return len(data)

    def flush(self) -> None:
        return None

    def finish(self) -> None:
        if self._buffer:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._cancelled.is_set():
            self.error = _Cancelled()
            raise self.error
        self._handoff.put(bytes(self._buffer))
        self._buffer.clear()


def _sealed_stream(
    pieces: Iterator[bytes | memoryview], recipients: list[AgeRecipient], piece_bytes: int
) -> Iterator[bytes]:
    handoff: queue.Queue[object] = queue.Queue(maxsize=2)
    cancelled = threading.Event()
    reader = _IterReader(pieces, cancelled)
    writer = _QueueWriter(handoff, cancelled, piece_bytes)

    def work() -> None:
        outcome: object = _END
        try:
            pyrage.encrypt_io(reader, writer, recipients)
            writer.finish()
        except BaseException as exc:
            outcome = reader.error or writer.error or exc
        handoff.put(outcome)  # the consumer, or the drain below, always takes it

    worker = threading.Thread(target=work, name="age-seal", daemon=True)
    worker.start()
    done = False
    try:
        while True:
            item = handoff.get()
            if item is _END:
                done = True
                return
            if isinstance(item, BaseException):
                done = True
                if isinstance(item, pyrage.EncryptError):
                    raise DockerCommsError(f"age encryption failed: {shown(item)}") from item
                raise item
            assert isinstance(item, bytes)
            yield item
    finally:
        if not done:
            cancelled.set()
            while True:
                item = handoff.get()
                if item is _END or isinstance(item, BaseException):
                    break
        worker.join()
