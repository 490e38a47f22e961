"""What a sealed message adds to SPEC 2 (SPEC 9): names, the ``sealed`` annotation, chunk checks.

Caveats first:

* Open nothing here before SPEC 5 steps 1-7 passed (manifest, signature, signer,
  sender, freshness): the manifest digest covers the ``sealed`` annotation and the
  ciphertext digests, and that is what makes the age files the sender's. A chunk
  is opened only after its ciphertext digest was checked (step 8's download).
* :func:`open_annotation` is bounded before it decrypts: the annotation's length is
  checked against what ``chunk_count`` digests and a longest file name can take,
  then base64 (strict), then the age header (:mod:`.sealing`), then a plaintext
  cap, then JSON two levels deep, then every field. Unknown fields are refused:
  the sealed form is ours alone, so an unknown field is a newer version or a
  forgery, and both are better refused than half-read.
* :func:`open_chunk` writes the chunk's bytes into ``out`` *before* their sha256 is
  compared with ``chunk_sha256[i]`` (the digest needs all of them, and a chunk
  decompresses to more than its buffer holds). ``out`` must be private (the CLI's
  hidden temp file, a cache entry not yet committed) and dropped on any error.
* A sealed chunk's compressed tar is decrypted over its own ciphertext
  (:func:`.sealing.open_in_place`), so a sealed receive holds no more memory than
  a plain one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

from dockercomms.core._internal.chunking import PIECE, ByteSink, ChunkSpan, extract_layer
from dockercomms.core._internal.limits import DEFAULT_LIMITS, Limits, check_filename
from dockercomms.core._internal.sealing import (
    MAX_HEADER_BYTES,
    AgeIdentity,
    AgeRecipient,
    open_bytes,
    open_in_place,
    seal_bytes,
    sealed_length,
)
from dockercomms.core.errors import ChunkError, ManifestError, PlaintextMismatchError
from dockercomms.core.untrusted import parse_json_object

A_ENCRYPTION: Final = "dockercomms.encryption"
A_SEALED: Final = "dockercomms.sealed"
ENCRYPTION_AGE: Final = "age"
SEALED_CHUNK_MEDIA_TYPES: Final[dict[str, str]] = {
    "gzip": "application/vnd.dockercomms.chunk.v1.tar+gzip+age",
    "zstd": "application/vnd.dockercomms.chunk.v1.tar+zstd+age",
}
NEUTRAL_SUFFIX: Final = ".sealed"

_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
_FIELDS: Final = ("filename", "total_bytes", "chunk_sha256")
#: JSON around the fields, the longest total_bytes, and room for whitespace.
_FACTS_OVERHEAD: Final = 1024
#: Most bytes one file-name byte takes in JSON (a control character as ``\\u00XX``).
_JSON_BYTES_PER_NAME_BYTE: Final = 6
#: Bytes one chunk digest takes in the JSON array: quotes, 64 hex, comma, a space.
_JSON_BYTES_PER_DIGEST: Final = 68


def neutral_filename(message_id: str) -> str:
    """``<mid8>.sealed``: the ``dockercomms.filename`` a sealed message shows everyone."""
    return message_id.replace("-", "")[:8] + NEUTRAL_SUFFIX


@dataclass(frozen=True)
class SealedFacts:
    """What the ``dockercomms.sealed`` annotation hides from everyone but the recipients.

    Attributes:
        filename: the real, sanitised file name.
        total_bytes: the file's size (the same as the clear annotation's).
        chunk_sha256: lowercase hex sha256 of each chunk's bytes, in order.
    """

    filename: str
    total_bytes: int
    chunk_sha256: tuple[str, ...]

    def to_json(self) -> bytes:
        """The annotation's plaintext: compact JSON, fields in SPEC order."""
        doc = {
            "filename": self.filename,
            "total_bytes": self.total_bytes,
            "chunk_sha256": list(self.chunk_sha256),
        }
        return json.dumps(doc, separators=(",", ":")).encode("ascii")


def max_facts_bytes(chunk_count: int, limits: Limits = DEFAULT_LIMITS) -> int:
    """Largest plaintext the annotation of a ``chunk_count``-chunk message may have."""
    return (
        _FACTS_OVERHEAD
        + _JSON_BYTES_PER_NAME_BYTE * limits.max_filename_bytes
        + _JSON_BYTES_PER_DIGEST * chunk_count
    )


def max_annotation_chars(chunk_count: int, limits: Limits = DEFAULT_LIMITS) -> int:
    """Longest base64 annotation value that can hold :func:`max_facts_bytes` sealed."""
    sealed = sealed_length(max_facts_bytes(chunk_count, limits), MAX_HEADER_BYTES)
    return 4 * -(-sealed // 3)


def seal_annotation(facts: SealedFacts, recipients: Iterable[AgeRecipient]) -> str:
    """The ``dockercomms.sealed`` value: base64 (standard, padded) of the sealed JSON.

    Sealing is randomised: a retried send must reuse the value it made the first
    time, or its manifest digest changes. ``facts`` get the checks a receiver
    makes, so we never send what every recipient would refuse.
    """
    doc = json.loads(facts.to_json())
    _facts(
        doc,
        "the sealed annotation",
        total_bytes=facts.total_bytes,
        chunk_count=len(facts.chunk_sha256),
        limits=DEFAULT_LIMITS,
    )
    return base64.b64encode(seal_bytes(facts.to_json(), recipients)).decode("ascii")


def open_annotation(
    value: str,
    identities: Sequence[AgeIdentity],
    *,
    total_bytes: int,
    chunk_count: int,
    limits: Limits = DEFAULT_LIMITS,
) -> SealedFacts:
    """Decrypt and check a ``dockercomms.sealed`` value from a verified manifest.

    ``total_bytes`` and ``chunk_count`` are the manifest's own (already checked
    against ``limits``). Raises :class:`~.errors.NotARecipientError` when none of
    ``identities`` opens it (reject, exit 2), a :class:`~.errors.ProtocolError`
    for anything malformed or too large, :class:`~.errors.FilenameError` for an
    unsafe name.
    """
    what = "the sealed annotation"
    longest = max_annotation_chars(chunk_count, limits)
    if len(value) > longest:
        raise ManifestError(
            f"{what} is {len(value)} characters, more than {longest} for {chunk_count} chunks"
        )
    try:
        sealed = base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise ManifestError(f"{what} is not standard padded base64") from exc
    if base64.b64encode(sealed).decode("ascii") != value:
        raise ManifestError(f"{what} is not canonical standard padded base64")
    cap = max_facts_bytes(chunk_count, limits)
    plain = open_bytes(sealed, identities, max_plaintext=cap, what=what)
    doc = parse_json_object(plain, what, max_bytes=cap, max_depth=2)
    return _facts(doc, what, total_bytes=total_bytes, chunk_count=chunk_count, limits=limits)


def _facts(
    doc: dict[str, Any], what: str, *, total_bytes: int, chunk_count: int, limits: Limits
) -> SealedFacts:
    unknown = sorted(set(doc) - set(_FIELDS))
    missing = [name for name in _FIELDS if name not in doc]
    if unknown or missing:
        raise ManifestError(
            f"{what} must hold exactly {', '.join(_FIELDS)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(repr(name[:40]) for name in unknown[:5])}" if unknown else "")
        )
    filename = doc["filename"]
    if not isinstance(filename, str):
        raise ManifestError(f"{what}: filename is not a string")
    check_filename(filename, limits)
    size = doc["total_bytes"]
    if type(size) is not int or not 0 <= size <= limits.max_total_bytes:
        raise ManifestError(f"{what}: total_bytes is not a size within the limits")
    if size != total_bytes:
        raise ManifestError(f"{what} says {size} bytes, the manifest says {total_bytes}")
    digests = doc["chunk_sha256"]
    if not isinstance(digests, list):
        raise ManifestError(f"{what}: chunk_sha256 is not a list")
    if len(digests) != chunk_count:
        raise ManifestError(
            f"{what} has {len(digests)} chunk digests, the manifest has {chunk_count} chunks"
        )
    for index, digest in enumerate(digests):
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
            raise ManifestError(f"{what}: chunk_sha256[{index}] is not a lowercase hex sha256")
    return SealedFacts(filename, size, tuple(digests))


class DigestingSink:
    """A :class:`~.chunking.ByteSink` that hashes what it passes on to ``out``."""

    def __init__(self, out: ByteSink) -> None:
        self._out = out
        self._hash = hashlib.sha256()

    def write(self, data: bytes | memoryview, /) -> int:
        """Hash ``data``, then write it to ``out``."""
        self._hash.update(data)
        return self._out.write(data)

    def check(self, expected_hex: str, what: str) -> None:
        """Raise :class:`~.errors.PlaintextMismatchError` unless the bytes hash to that."""
        got = self._hash.hexdigest()
        if not hmac.compare_digest(got, expected_hex):
            raise PlaintextMismatchError(
                f"{what} hashes to {got}, the sealed annotation says {expected_hex}"
            )


def open_chunk(
    ciphertext: bytearray | memoryview | BinaryIO,
    identities: Sequence[AgeIdentity],
    *,
    index: int,
    expected_length: int,
    compression: str,
    chunk_sha256: str,
    out: ByteSink,
) -> None:
    """SPEC 9 receive, one chunk: age-decrypt, decompress, tar checks, sha256.

    ``ciphertext`` is a digest-checked ``BlobSpool.contents()``; it is decrypted in
    place (garbage afterwards). Writes the chunk's bytes to ``out`` and raises
    unless they hash to ``chunk_sha256``; see the caveats about ``out``.
    """
    plain = open_in_place(ciphertext, identities, what=f"chunk {index}")
    check_chunk(
        plain,
        index=index,
        expected_length=expected_length,
        compression=compression,
        chunk_sha256=chunk_sha256,
        out=out,
    )


def check_chunk(
    plain: memoryview | BinaryIO,
    *,
    index: int,
    expected_length: int,
    compression: str,
    chunk_sha256: str,
    out: ByteSink,
) -> None:
    """The second half of :func:`open_chunk`, on a chunk already decrypted in place.

    Split so the decryption can run on the thread that downloaded the chunk while
    the previous chunk is decompressed, hashed and written (``receive``).
    """
    what = f"chunk {index}"
    sink = DigestingSink(out)
    extract_layer(
        plain, index=index, expected_length=expected_length, compression=compression, out=sink
    )
    sink.check(chunk_sha256, what)


def span_sha256(fd: int, span: ChunkSpan) -> str:
    """Hex sha256 of one chunk's bytes of the open file ``fd`` (send side, ``chunk_sha256``)."""
    digest = hashlib.sha256()
    done = 0
    while done < span.length:
        piece = os.pread(fd, min(PIECE, span.length - done), span.offset + done)
        if not piece:
            raise ChunkError(f"file shrank while sending (chunk {span.index})")
        digest.update(piece)
        done += len(piece)
    return digest.hexdigest()
