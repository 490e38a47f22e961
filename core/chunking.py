"""Chunk layers: a compressed tar holding exactly one ``chunk_<i>.bin`` (SPEC 2).

Caveats first:

* Both directions stream in fixed-size pieces; nothing holds a whole chunk in
  memory, so chunk size does not drive memory use.
* Extraction trusts nothing: the decompressed stream is capped at what one tar
  entry of the expected size can occupy, so a zstd or gzip bomb fails after at
  most that many bytes, and anything but the one regular file named for its index
  is refused.
* We write tar the way Go's ``archive/tar`` does (USTAR header, two zero blocks,
  no record padding); we read anything ``tarfile`` reads, PAX headers included.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import zstandard

from dockercomms.core.errors import ChunkError, LimitExceededError, ProtocolError

PIECE = 1024 * 1024
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


def layer_stream(fd: int, span: ChunkSpan, compression: str) -> Iterator[bytes]:
    """Yield the compressed tar layer for ``span`` of the open file ``fd``.

    Reads with ``os.pread`` so several chunks of one file can be produced by
    several threads at once without sharing a file position.
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
        out = compressor.compress(piece)
        if out:
            yield out
    padding = (-span.length) % TAR_BLOCK
    out = compressor.compress(b"\0" * (padding + 2 * TAR_BLOCK))
    out += compressor.flush()
    if out:
        yield out


class _CappedReader:
    """File-like reader over a decompressor that refuses to produce more than ``cap``.

    The cap is what turns a decompression bomb into a prompt ``LimitExceededError``.
    """

    def __init__(self, source: BinaryIO, compression: str, cap: int) -> None:
        self._source = source
        self._cap = cap
        self._produced = 0
        self._zstd: zstandard.ZstdDecompressionReader | None = None
        self._zlib: zlib._Decompress | None = None
        self._pending = b""
        if compression == "zstd":
            self._zstd = zstandard.ZstdDecompressor().stream_reader(
                source, read_size=PIECE, read_across_frames=True
            )
        elif compression == "gzip":
            self._zlib = zlib.decompressobj(31)
        else:
            raise ProtocolError(f"unknown compression {compression!r}")

    def read(self, size: int = -1) -> bytes:
        want = PIECE if size is None or size < 0 else min(size, PIECE)
        try:
            data = self._read_some(want)
        except zstandard.ZstdError as exc:
            raise ChunkError(f"corrupt zstd stream: {exc}") from exc
        except zlib.error as exc:
            raise ChunkError(f"corrupt gzip stream: {exc}") from exc
        self._produced += len(data)
        if self._produced > self._cap:
            raise LimitExceededError(
                f"chunk decompresses to more than {self._cap} bytes (decompression bomb?)"
            )
        return data

    def _read_some(self, want: int) -> bytes:
        if self._zstd is not None:
            return bytes(self._zstd.read(want))
        assert self._zlib is not None
        while True:
            if self._zlib.eof:
                # Another gzip member may follow; gzip allows concatenation.
                leftover = self._zlib.unused_data or self._source.read(PIECE)
                if not leftover:
                    return b""
                self._zlib = zlib.decompressobj(31)
                self._pending = leftover
            if not self._pending:
                self._pending = self._source.read(PIECE)
                if not self._pending:
                    raise ChunkError("gzip stream ends early")
            data = self._zlib.decompress(self._pending, want)
            self._pending = self._zlib.unconsumed_tail
            if data:
                return data


def extract_layer(
    compressed: BinaryIO,
    *,
    index: int,
    expected_length: int,
    compression: str,
    out: BinaryIO,
) -> None:
    """Decompress a chunk layer and write its one file's bytes to ``out``.

    Only call this on a blob whose digest was already checked: it enforces the
    tar shape and size, not authenticity.
    """
    padded = expected_length + (-expected_length) % TAR_BLOCK
    cap = TAR_BLOCK * 4 + padded + _TAR_SLACK
    reader = _CappedReader(compressed, compression, cap)
    try:
        # A large bufsize: tarfile's default (10 KiB) makes the data path crawl.
        with tarfile.open(fileobj=reader, mode="r|", bufsize=PIECE) as archive:  # type: ignore[call-overload]
            member = archive.next()
            _check_member(member, index, expected_length)
            assert member is not None
            source = archive.extractfile(member)
            if source is None:
                raise ChunkError(f"chunk {index}: entry has no data")
            written = _copy(source, out)
            if written != expected_length:
                raise ChunkError(f"chunk {index}: {written} bytes, expected {expected_length}")
            extra = archive.next()
            if extra is not None:
                raise ChunkError(f"chunk {index}: tar has more than one entry ({extra.name!r})")
    except tarfile.TarError as exc:
        raise ChunkError(f"chunk {index}: not a valid tar stream: {exc}") from exc
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


def _copy(source: BinaryIO, out: BinaryIO) -> int:
    written = 0
    while piece := source.read(PIECE):
        out.write(piece)
        written += len(piece)
    return written
