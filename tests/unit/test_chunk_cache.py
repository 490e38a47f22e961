"""The mount's chunk cache on real files: ranges, the in-memory path, damage, restarts."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import zlib
from pathlib import Path

import pytest

from dockercomms.fsmount.chunk_cache import BLOCK_BYTES, CacheCorruptError, ChunkCache, ChunkKey

KEY = ChunkKey("sha256:" + "ab" * 32, 3)


def cached(root: Path, data: bytes, **options: int) -> ChunkCache:
    """A cache in ``root`` holding ``data`` under KEY, written in uneven pieces."""
    cache = ChunkCache(root, **options)
    writer = cache.writer()
    view, rng = memoryview(data), random.Random(7)
    while view:
        piece = rng.randint(1, 300_000)
        writer.write(bytes(view[:piece]))
        view = view[piece:]
    cache.commit(KEY, writer)
    return cache


def test_ranges_across_blocks_match_from_disk_and_from_memory(tmp_path: Path) -> None:
    data = os.urandom(3 * BLOCK_BYTES + 12345)
    cache = cached(tmp_path, data)
    rng = random.Random(1)
    for _ in range(200):
        offset = rng.randrange(len(data))
        size = rng.randint(1, 2 * BLOCK_BYTES)
        assert cache.read(KEY, offset, size) == data[offset : offset + size]
        # read() left every block it touched verified in memory
        assert cache.read_from_memory(KEY, offset, size) == data[offset : offset + size]


def test_memory_path_says_none_for_a_block_it_has_not_verified(tmp_path: Path) -> None:
    data = os.urandom(2 * BLOCK_BYTES)
    cache = cached(tmp_path, data)
    assert cache.read_from_memory(KEY, 0, 10) is None  # written, never read back
    assert cache.read(KEY, 0, 10) == data[:10]
    assert cache.read_from_memory(KEY, BLOCK_BYTES - 5, 10) is None  # spans block 1
    assert cache.read_from_memory(ChunkKey(KEY.layer_digest, 4), 0, 10) is None


def test_a_damaged_block_is_refused_and_the_entry_dropped(tmp_path: Path) -> None:
    data = os.urandom(2 * BLOCK_BYTES)
    cache = cached(tmp_path, data)
    path = tmp_path / f"{KEY.name}.bin"
    with path.open("r+b") as handle:
        handle.seek(BLOCK_BYTES + 99)
        handle.write(b"\x00" if data[BLOCK_BYTES + 99] else b"\x01")
    assert cache.read(KEY, 0, 100) == data[:100]  # block 0 is still good
    with pytest.raises(CacheCorruptError, match="block 1"):
        cache.read(KEY, BLOCK_BYTES, 100)
    assert not path.exists()
    assert cache.statistics().corruptions == 1
    assert cache.read_from_memory(KEY, 0, 100) is None  # its verified blocks went too


def test_a_restart_keeps_good_entries_and_drops_torn_or_old_ones(tmp_path: Path) -> None:
    data = os.urandom(BLOCK_BYTES + 1)
    cached(tmp_path, data)
    assert ChunkCache(tmp_path).read(KEY, 0, len(data)) == data

    with (tmp_path / f"{KEY.name}.bin").open("r+b") as handle:
        handle.truncate(BLOCK_BYTES)  # as a crash before writeback might leave it
    assert ChunkCache(tmp_path).statistics().entries == 0
    assert list(tmp_path.iterdir()) == []

    cached(tmp_path, data)
    sidecar = tmp_path / f"{KEY.name}.json"
    doc = json.loads(sidecar.read_bytes())
    sidecar.write_text(json.dumps({**doc, "version": 1}))
    assert ChunkCache(tmp_path).statistics().entries == 0


def test_the_cap_evicts_least_recently_used_but_never_a_pinned_entry(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, cap_bytes=BLOCK_BYTES + BLOCK_BYTES // 2)
    keys = [ChunkKey(KEY.layer_digest, n) for n in range(4)]

    def add(key: ChunkKey, size: int, *, pin: bool = False) -> None:
        writer = cache.writer()
        writer.write(os.urandom(size))
        cache.commit(key, writer, pin=pin)

    add(keys[0], BLOCK_BYTES // 2)
    add(keys[1], BLOCK_BYTES // 2)
    assert cache.pin(keys[1])
    assert cache.pin(keys[0])  # now the most recently used
    add(keys[2], BLOCK_BYTES, pin=True)  # 2 MiB in all, over the cap, all of it pinned
    assert [cache.size_of(k) is not None for k in keys[:3]] == [True, True, True]
    cache.unpin(keys[1])  # the least recently used, no longer pinned: goes
    assert [cache.size_of(k) is not None for k in keys[:3]] == [True, False, True]
    cache.unpin(keys[2])
    cache.unpin(keys[0])
    add(keys[3], BLOCK_BYTES // 2)
    assert [cache.size_of(k) is not None for k in keys] == [False, False, True, True]
    assert cache.statistics().evictions == 2
    assert cache.statistics().bytes <= cache.cap_bytes


def test_an_entry_committed_unpinned_into_a_full_cache_goes_at_once(tmp_path: Path) -> None:
    """Why a reader's own fetch commits pinned: otherwise it could never read it."""
    cache = ChunkCache(tmp_path, cap_bytes=BLOCK_BYTES // 2)
    writer = cache.writer()
    writer.write(os.urandom(BLOCK_BYTES))
    cache.commit(KEY, writer)
    assert cache.size_of(KEY) is None


def test_a_drop_never_removes_the_files_of_the_copy_fetched_again(tmp_path: Path) -> None:
    """A damaged entry is dropped while another reader already commits a fresh copy.

    On a busy machine the thread that found the damage can be descheduled between
    taking the entry out of the index and removing its files, while a prefetch
    commits the chunk again. That fresh copy must survive: one corruption, not two.
    The race is driven at the moment the drop is announced (its log line).
    """
    data = os.urandom(BLOCK_BYTES + 10)
    cache = cached(tmp_path, data)
    path = tmp_path / f"{KEY.name}.bin"
    with path.open("r+b") as handle:
        handle.seek(5)
        handle.write(b"\x00" if data[5] else b"\x01")

    class CommitAgain(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "dropped" in record.getMessage():
                writer = cache.writer()
                writer.write(data)
                cache.commit(KEY, writer)

    logger = logging.getLogger("dockercomms.fsmount.chunk_cache")
    again = CommitAgain()
    logger.addHandler(again)
    try:
        with pytest.raises(CacheCorruptError):
            cache.read(KEY, 0, 100)
    finally:
        logger.removeHandler(again)
    assert cache.read(KEY, 0, len(data)) == data
    assert cache.statistics().corruptions == 1


def test_a_block_checked_ahead_is_served_from_memory_and_damage_is_found_ahead(
    tmp_path: Path,
) -> None:
    """``verify_block`` is how the reader's read-ahead checks blocks in a thread."""
    data = os.urandom(3 * BLOCK_BYTES)
    cache = cached(tmp_path, data)
    assert cache.unverified_blocks(KEY, 0, len(data)) == [0, 1, 2]
    cache.verify_block(KEY, 1)
    assert cache.unverified_blocks(KEY, 0, len(data)) == [0, 2]
    assert cache.read_from_memory(KEY, BLOCK_BYTES + 5, 100) == data[BLOCK_BYTES + 5 :][:100]
    # A manifest that says the chunk has another length gets nothing from memory.
    assert cache.read_from_memory(KEY, BLOCK_BYTES, 100, length=len(data) + 1) is None
    assert cache.read_from_memory(KEY, BLOCK_BYTES, 100, length=len(data)) is not None

    with (tmp_path / f"{KEY.name}.bin").open("r+b") as handle:
        handle.seek(2 * BLOCK_BYTES)
        handle.write(b"\x00" if data[2 * BLOCK_BYTES] else b"\x01")
    with pytest.raises(CacheCorruptError, match="block 2"):
        cache.verify_block(KEY, 2)
    assert cache.size_of(KEY) is None and cache.statistics().corruptions == 1
    assert cache.unverified_blocks(KEY, 0, len(data)) == []  # nothing cached to check
    cache.verify_block(KEY, 0)  # a chunk no longer cached: nothing to do


def test_the_self_check_is_a_crc32_per_block_and_older_or_odd_sidecars_are_dropped(
    tmp_path: Path,
) -> None:
    """Block checks are crc32s (sidecar version 3); a sidecar of the sha256 era (2), or
    one whose checks are not 32-bit integers, is dropped and its chunk fetched again."""
    data = os.urandom(BLOCK_BYTES + 5)
    cached(tmp_path, data)
    sidecar = tmp_path / f"{KEY.name}.json"
    doc = json.loads(sidecar.read_bytes())
    assert doc["version"] == 3 and doc["check"] == "crc32"
    assert doc["blocks"] == [zlib.crc32(data[:BLOCK_BYTES]), zlib.crc32(data[BLOCK_BYTES:])]
    for odd in (
        {"version": 2, "blocks": [hashlib.sha256(data[:BLOCK_BYTES]).hexdigest(), "ab"]},
        {"blocks": [str(b) for b in doc["blocks"]]},
        {"blocks": [doc["blocks"][0], 2**32]},
        {"blocks": [True, doc["blocks"][1]]},
    ):
        cached(tmp_path, data)
        sidecar.write_text(json.dumps({**doc, **odd}))
        assert ChunkCache(tmp_path).statistics().entries == 0, odd
        assert list(tmp_path.iterdir()) == []


def test_blocks_checked_together_are_all_kept_and_damage_among_them_drops_the_chunk(
    tmp_path: Path,
) -> None:
    """``verify_blocks`` (the read-ahead's job: one open, the disk asked ahead)."""
    data = os.urandom(4 * BLOCK_BYTES)
    cache = cached(tmp_path, data)
    cache.verify_blocks(KEY, [1, 2])
    assert cache.unverified_blocks(KEY, 0, len(data)) == [0, 3]
    assert (
        bytes(cache.read_from_memory(KEY, BLOCK_BYTES, 2 * BLOCK_BYTES) or b"")
        == (data[BLOCK_BYTES : 3 * BLOCK_BYTES])
    )
    with (tmp_path / f"{KEY.name}.bin").open("r+b") as handle:
        handle.seek(3 * BLOCK_BYTES + 1234)
        handle.write(bytes([data[3 * BLOCK_BYTES + 1234] ^ 0x01]))  # one bit
    with pytest.raises(CacheCorruptError, match="block 3"):
        cache.verify_blocks(KEY, [0, 3])
    assert cache.size_of(KEY) is None and cache.statistics().corruptions == 1
