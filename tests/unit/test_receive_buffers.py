"""The receive path's spool buffers: reused across chunks whose blobs differ by a few bytes."""

from __future__ import annotations

from dockercomms.core._internal.receive import BlobSpool, BufferPool


def test_a_slightly_larger_next_chunk_reuses_the_buffer() -> None:
    # Sealed blobs of equal chunks differ by a few hundred bytes (age's grease stanza);
    # a fresh 32 MiB buffer for each would add one per chunk in flight to the peak RSS.
    pool = BufferPool()
    first = pool.take(32 * 1024 * 1024 + 8_000)
    pool.give(first)
    assert pool.take(32 * 1024 * 1024 + 8_300) is first


def test_a_spool_in_a_larger_buffer_holds_exactly_what_was_written() -> None:
    pool = BufferPool()
    with BlobSpool(10, pool) as spool:
        spool.write(b"0123456789")
        assert bytes(spool.contents()) == b"0123456789"
