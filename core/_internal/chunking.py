"""Chunk layers: a compressed tar holding exactly one ``chunk_<i>.bin`` (SPEC 2).

Caveats first:

* Both directions stream in fixed-size pieces; nothing holds a whole chunk in
  memory, so chunk size does not drive memory use.
* Extraction trusts nothing: the decompressed stream is capped at what one tar
  entry of the expected size can occupy, so a zstd or gzip bomb fails after at
  most that many bytes, and anything but the one regular file named for its index
  is refused.
* We write tar the way Go's ``archive/tar`` does (USTAR header, two zero blocks,
  no record padding). Reading, a plain header takes a fast path (the entry is
  copied from the decompressor straight to the output); PAX or GNU extended
  headers go through ``tarfile``. Either way, after the one entry only zero
  blocks may follow.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Protocol, TypeAlias

import zstandard

from dockercomms.core.errors import ChunkError, LimitExceededError, ProtocolError

PIECE = 1024 * 1024
# A blob already in memory (digest-checked): read in place, never copied whole.
Buffer: TypeAlias = bytes | bytearray | memoryview
TAR_BLOCK = 512
# Python's tarfile pads archives to 20 blocks; Go writes two zero blocks. Allow both.
_TAR_SLACK = 20 * TAR_BLOCK + 2 * TAR_BLOCK
GZIP_LEVEL = 6
ZSTD_LEVEL = 3
# Already-compressed or random chunks gain nothing from real compression, which would
# then be the slowest stage of a send; a sample decides per chunk.
GZIP_STORE_LEVEL = 0
ZSTD_FAST_LEVEL = -5
SAMPLE_BYTES = 256 * 1024
INCOMPRESSIBLE_RATIO = 0.95


@dataclass(frozen=True)
class ChunkSpan:
    """One chunk of a file: bytes ``[offset, offset + length)``, layer ``index``."""

    index: int
    offset: int
    length: int


def plan_chunks(total_bytes: int, chunk_bytes: int) -> list[ChunkSpan]:
    """Split ``total_bytes`` into spans of ``chunk_bytes`` (the last may be short)."""
    if chunk_bytes <= 0:
        raise ValueError("chunk size must be positive")
    return [
        ChunkSpan(index, offset, min(chunk_bytes, total_bytes - offset))
        for index, offset in enumerate(range(0, total_bytes, chunk_bytes))
    ]


def chunk_entry_name(index: int) -> str:
    """The one file name a chunk layer may contain."""
    return f"chunk_{index}.bin"


class ByteSink(Protocol):
    """Where verified bytes go: an output file, a blob spool, a cache writer.

    Only ``write`` is used, so a spool or a writeback wrapper needs no file API.
    """

    def write(self, data: bytes | memoryview, /) -> int: ...


class _Hash(Protocol):
    """A hashlib object (``hashlib.sha256()``)."""

    def update(self, data: bytes, /) -> None: ...


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes | memoryview: ...


class _Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


def _compressor(compression: str, sample: bytes) -> _Compressor:
    incompressible = _is_incompressible(sample)
    if compression == "zstd":
        level = ZSTD_FAST_LEVEL if incompressible else ZSTD_LEVEL
        return zstandard.ZstdCompressor(level=level).compressobj()
    if compression == "gzip":
        level = GZIP_STORE_LEVEL if incompressible else GZIP_LEVEL
        return zlib.compressobj(level, zlib.DEFLATED, 31)
    raise ProtocolError(f"unknown compression {compression!r}")


def _is_incompressible(sample: bytes) -> bool:
    if not sample:
        return False
    packed = zstandard.ZstdCompressor(level=1).compress(sample)
    return len(packed) > INCOMPRESSIBLE_RATIO * len(sample)


def _tar_header(index: int, length: int) -> bytes:
    info = tarfile.TarInfo(chunk_entry_name(index))
    info.size = length
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


def layer_stream(
    fd: int, span: ChunkSpan, compression: str, *, plain_digest: _Hash | None = None
) -> Iterator[bytes]:
    """Yield the compressed tar layer for ``span`` of the open file ``fd``.

    Reads with ``os.pread`` so several chunks of one file can be produced by
    several threads at once without sharing a file position. ``plain_digest``
    (a fresh hash object) is fed the chunk's own bytes as they are read: a
    sealed send's ``chunk_sha256`` (SPEC 9) without a second read of the file.
    """
    sample = os.pread(fd, min(SAMPLE_BYTES, span.length), span.offset)
    compressor = _compressor(compression, sample)
    out = compressor.compress(_tar_header(span.index, span.length))
    if out:
        yield out
    done = 0
    while done < span.length:
        piece = os.pread(fd, min(PIECE, span.length - done), span.offset + done)
        if not piece:
            raise ChunkError(f"file shrank while sending (chunk {span.index})")
        done += len(piece)
        if plain_digest is not None:
            plain_digest.update(piece)
        out = compressor.compress(piece)
        if out:
            yield out
    padding = (-span.length) % TAR_BLOCK
    out = compressor.compress(b"\0" * (padding + 2 * TAR_BLOCK))
    out += compressor.flush()
    if out:
        yield out


class _CappedReader:
    """Reader over a decompressor that refuses to produce more than ``cap`` bytes.

    The cap is what turns a decompression bomb into a prompt ``LimitExceededError``.
    ``source`` is a file-like object with ``read`` or, for a blob already in memory,
    any buffer (zstd then reads it in place, without a copy).
    """

    def __init__(self, source: BinaryIO | Buffer, compression: str, cap: int) -> None:
        self._cap = cap
        self._produced = 0
        self._zstd: zstandard.ZstdDecompressionReader | None = None
        self._zlib: zlib._Decompress | None = None
        self._gzip_input: _Readable | None = None
        self._pending: bytes | memoryview = b""
        if compression == "zstd":
            self._zstd = zstandard.ZstdDecompressor().stream_reader(
                source, read_size=PIECE, read_across_frames=True
            )
        elif compression == "gzip":
            self._zlib = zlib.decompressobj(31)
            self._gzip_input = _MemoryReader(source) if isinstance(source, Buffer) else source
        else:
            raise ProtocolError(f"unknown compression {compression!r}")

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` (at most one piece of) decompressed bytes; b"" at the end."""
        want = PIECE if size is None or size < 0 else min(size, PIECE)
        with _decoding_errors():
            data = self._zstd.read(want) if self._zstd is not None else self._inflate(want)
        self._count(len(data))
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Fill ``buffer`` with decompressed bytes (zstd writes there directly)."""
        if self._zstd is None:
            data = self.read(len(buffer))
            buffer[: len(data)] = data
            return len(data)
        with _decoding_errors():
            produced: int = self._zstd.readinto(buffer)
        self._count(produced)
        return produced

    def _count(self, produced: int) -> None:
        self._produced += produced
        if self._produced > self._cap:
            raise LimitExceededError(
                f"chunk decompresses to more than {self._cap} bytes (decompression bomb?)"
            )

    def _inflate(self, want: int) -> bytes:
        assert self._zlib is not None and self._gzip_input is not None
        while True:
            if self._zlib.eof:
                # Another gzip member may follow; gzip allows concatenation.
                leftover = self._zlib.unused_data or self._gzip_input.read(PIECE)
                if not leftover:
                    return b""
                self._zlib = zlib.decompressobj(31)
                self._pending = leftover
            if not self._pending:
                self._pending = self._gzip_input.read(PIECE)
                if not self._pending:
                    raise ChunkError("gzip stream ends early")
            data = self._zlib.decompress(self._pending, want)
            self._pending = self._zlib.unconsumed_tail
            if data:
                return data


class _MemoryReader:
    """``read`` over a buffer, returning slices of it rather than copies."""

    def __init__(self, buffer: Buffer) -> None:
        self._view = memoryview(buffer).cast("B")
        self._offset = 0

    def read(self, size: int = -1) -> memoryview:
        end = len(self._view) if size < 0 else min(self._offset + size, len(self._view))
        piece = self._view[self._offset : end]
        self._offset = end
        return piece


@contextmanager
def _decoding_errors() -> Iterator[None]:
    """Corrupt compressed data is a chunk error, whichever codec noticed."""
    try:
        yield
    except zstandard.ZstdError as exc:
        raise ChunkError(f"corrupt zstd stream: {exc}") from exc
    except zlib.error as exc:
        raise ChunkError(f"corrupt gzip stream: {exc}") from exc


class _Prefixed:
    """A reader that first returns ``head`` (already read) and then the rest of ``reader``."""

    def __init__(self, head: bytes, reader: _CappedReader) -> None:
        self._head = head
        self._reader = reader

    def read(self, size: int = -1) -> bytes:
        if self._head:
            take = len(self._head) if size < 0 else size
            piece, self._head = self._head[:take], self._head[take:]
            return piece
        return self._reader.read(size)


def extract_layer(
    compressed: BinaryIO | Buffer,
    *,
    index: int,
    expected_length: int,
    compression: str,
    out: ByteSink,
) -> None:
    """Decompress a chunk layer and write its one file's bytes to ``out``.

    Only call this on a blob whose digest was already checked: it enforces the
    tar shape and size, not authenticity. ``compressed`` is a file-like object
    or the blob itself in memory.

    A plain USTAR header (what Go's ``archive/tar`` and we write) is parsed by
    ``tarfile.TarInfo.frombuf`` and the entry's bytes are copied straight from
    the decompressor into ``out``; anything with extended headers (PAX, GNU long
    names) goes through ``tarfile`` itself, slower but just as strict.
    """
    padded = expected_length + (-expected_length) % TAR_BLOCK
    cap = TAR_BLOCK * 4 + padded + _TAR_SLACK
    reader = _CappedReader(compressed, compression, cap)
    try:
        header = _read_exact(reader, TAR_BLOCK)
        info = _plain_header(header, index)
        if info is None:
            _extract_with_tarfile(_Prefixed(header, reader), index, expected_length, out)
            return
        _check_member(info, index, expected_length)
        _copy_entry(reader, expected_length, index, out)
        _check_trailer(reader, (-expected_length) % TAR_BLOCK, index)
    except tarfile.TarError as exc:
        raise ChunkError(f"chunk {index}: not a valid tar stream: {exc}") from exc


_EXTENDED_TYPES = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
        tarfile.GNUTYPE_SPARSE,
    }
)


def _plain_header(header: bytes, index: int) -> tarfile.TarInfo | None:
    """The entry a plain header describes; None when extended headers need ``tarfile``."""
    if len(header) < TAR_BLOCK or not any(header):
        raise ChunkError(f"chunk {index}: tar is empty or truncated")
    info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    return None if info.type in _EXTENDED_TYPES else info


def _copy_entry(reader: _CappedReader, length: int, index: int, out: ByteSink) -> None:
    """Copy exactly ``length`` decompressed bytes to ``out`` through one reused buffer."""
    buffer = bytearray(min(PIECE, max(length, 1)))
    view = memoryview(buffer)
    left = length
    while left:
        got = reader.readinto(view[: min(left, len(view))])
        if not got:
            raise ChunkError(f"chunk {index}: {length - left} bytes, expected {length}")
        out.write(view[:got])
        left -= got


def _check_trailer(reader: _CappedReader, padding: int, index: int) -> None:
    """After the entry: its padding, then only zero blocks (or nothing) may follow."""
    _read_exact(reader, padding)
    while block := _read_exact(reader, TAR_BLOCK):
        if not any(block):
            continue
        try:
            extra = tarfile.TarInfo.frombuf(block.ljust(TAR_BLOCK, b"\0"), "utf-8", "replace")
        except tarfile.TarError:
            raise ChunkError(f"chunk {index}: unexpected data after its tar entry") from None
        raise ChunkError(f"chunk {index}: tar has more than one entry ({extra.name!r})")


def _read_exact(reader: _CappedReader, size: int) -> bytes:
    """``size`` bytes, or fewer only at the end of the stream."""
    parts = []
    while size:
        piece = reader.read(size)
        if not piece:
            break
        parts.append(piece)
        size -= len(piece)
    return b"".join(parts)


def _extract_with_tarfile(
    source: _Prefixed, index: int, expected_length: int, out: ByteSink
) -> None:
    try:
        # A large bufsize: tarfile's default (10 KiB) makes the data path crawl.
        with tarfile.open(fileobj=source, mode="r|", bufsize=PIECE) as archive:  # type: ignore[call-overload]
            member = archive.next()
            _check_member(member, index, expected_length)
            assert member is not None
            data = archive.extractfile(member)
            if data is None:
                raise ChunkError(f"chunk {index}: entry has no data")
            written = _copy(data, out)
            if written != expected_length:
                raise ChunkError(f"chunk {index}: {written} bytes, expected {expected_length}")
            extra = archive.next()
            if extra is not None:
                raise ChunkError(f"chunk {index}: tar has more than one entry ({extra.name!r})")
    except EOFError as exc:
        raise ChunkError(f"chunk {index}: truncated: {exc}") from exc


def _check_member(member: tarfile.TarInfo | None, index: int, expected_length: int) -> None:
    if member is None:
        raise ChunkError(f"chunk {index}: tar is empty")
    if not member.isreg():
        raise ChunkError(f"chunk {index}: entry {member.name!r} is not a regular file")
    if member.name != chunk_entry_name(index):
        raise ChunkError(
            f"chunk {index}: entry is named {member.name!r}, expected {chunk_entry_name(index)!r}"
        )
    if member.size != expected_length:
        raise ChunkError(
            f"chunk {index}: entry has {member.size} bytes, expected {expected_length}"
        )


def _copy(source: BinaryIO, out: ByteSink) -> int:
    written = 0
    while piece := source.read(PIECE):
        out.write(piece)
        written += len(piece)
    return written
