"""Ranged reads of a message: only bytes of chunks that were fetched by digest and checked.

Caveats first:

* A ``read()`` returns nothing until *every* chunk it touches is in the cache,
  i.e. was downloaded by its layer digest, hash-checked, and extracted by
  ``Inbox.fetch_chunk`` (the one place a chunk is extracted); then each block it
  serves is re-checked (crc32) by the cache when it is read from disk. On any failure the
  read fails and returns zero bytes.
* Chunks are fetched lazily: concurrent reads of the same chunk wait for one
  download. When a reader enters a new block, the next chunk is fetched in the
  background, so ``cat`` of a large file streams instead of stalling at every
  chunk boundary. One download runs at a time (``prefetch``): each holds a
  chunk-sized spool buffer (32 MiB by default), and two at once took the reading
  daemon to 145-158 MiB peak RSS against 114-125 MiB with one, for a first read
  of 1 GiB in 2.89-2.90 s against 3.00 s (machine quiet, load 1): the download,
  the block checks and the FUSE loop already keep both cores busy.
* Blocks are checked ahead: once a sequential reader (one whose read starts
  where its last one ended) has less than half of ``READ_AHEAD_BLOCKS`` MiB
  checked ahead of it, the next blocks of cached chunks are checked into the
  cache's memory as one job in a thread (one open of each chunk file, the disk
  asked for the blocks at once) (``CHECK_THREADS`` such jobs at most).
  Reads are then answered on the FUSE loop from verified memory, with no pin,
  thread or await. One job per block cost the loop the GIL at every hand-over
  (py-spy: 0.47 s per GiB in ``start_thread_soon`` alone). Two readers of the
  same file in turn look random to each other and get no read-ahead; a random
  reader gets none either (its blocks are checked when read, in a thread).
* A chunk whose cached copy fails its check (when read, or when checked
  ahead) is dropped and fetched again, once per read; a second failure is an error.
* A prefetch that fails is only logged; the read that needs the chunk fetches it
  again and reports the error to the reader.
* Sealed messages (SPEC 9) read the same way: ``Inbox.fetch_chunk`` decrypts a
  chunk into the cache's private writer and checks it against ``chunk_sha256``
  before the commit. Their cache key binds the ciphertext digest to that
  ``chunk_sha256`` (:func:`chunk_key`), so a chunk verified for one message is
  never served for another message claiming other bytes for the same blob.
* ``--whole-file`` (:meth:`ChunkSource.open_chunks`): ``open()`` returns only
  once *every* chunk was fetched and checked (``prefetch`` at a time), and the
  open handle keeps them all pinned in the cache until it is closed, so a file
  opens complete or not at all and no later read can meet a bad chunk from the
  registry. The price: the first byte waits for the last chunk, and an open file
  occupies the cache in full, above ``--cache-bytes`` if it must (and that much disk).

What the kernel lets an unprivileged daemon do about request sizes (measured on
this machine's 6.18 kernel with libfuse 3.14 and pyfuse3 3.5; the toy figures
are a pyfuse3 handler that answers from memory and does nothing else, so they
are the ceiling of the FUSE path itself, and they swing 3x with the load of the
shared machine):

* Page-cache reads come in requests of the read-ahead window: 128 KiB for
  ``dd bs=1M``, 256 KiB for ``cat`` (it asks for sequential read-ahead). Toy:
  1,450-2,200 MiB/s for ``dd``, 2,150-3,050 MiB/s for ``cat``.
* ``max_readahead`` in the init reply can only lower the kernel's 128 KiB (the
  kernel takes the smaller); raising the mount's ``read_ahead_kb`` in sysfs needs
  root: at 1 MiB, ``dd`` sent 1 MiB requests and the toy ran at 3,360-3,700 MiB/s.
  A user who is root may do it for the mount's ``/sys/class/bdi/0:N``.
* ``max_pages``: libfuse negotiates it by itself from the kernel's limit (256
  pages, 1 MiB requests, seen with ``direct_io``). ``-o max_read=`` cannot be
  used: pyfuse3's ``init`` handler does not set ``conn->max_read`` and libfuse
  then refuses to start ("init() and fuse_session_new() requested different
  maximum read size"); it could only lower the size anyway.
* ``direct_io`` passes each ``read()`` through whole (1 MiB requests for
  ``dd bs=1M``; toy 3,360-5,270 MiB/s) but loses the kernel cache (a second read
  at 4-6 GiB/s), turns every small read into a request, and makes a shared
  ``mmap`` fail with ENODEV (libfuse 3.14 cannot ask for
  ``FUSE_DIRECT_IO_ALLOW_MMAP``): not taken; inbox files keep ``keep_cache``.
* ``splice``: pyfuse3 answers reads with ``fuse_reply_buf`` (it has no
  ``fuse_reply_data``), so the bytes are copied once into the request; not
  available without changing pyfuse3.
* Several requests in flight: pyfuse3 runs a task per waiting request and the
  kernel sends read-ahead asynchronously; with blocks checked ahead the handler
  rarely waits, so one task mostly serves them in turn.

Daemon CPU per GiB, same run, before and after the read-ahead (main vs this
code, alternating, load 2-3 on two cores): re-read from the chunk cache
1.95-2.32 s against 1.58-1.77 s; first read 4.30-4.50 s against 3.65-3.95 s.

Issue 15 items 1-2, second round: what was measured (1 GiB, embedded store,
the daemon's CPU from /proc, the cache files dropped from the page cache before
each re-read, old and new code alternating on the shared two-core machine,
whose load moves wall times by 30 % from run to run; CPU is steadier):

* Where it goes (perf and per-thread CPU): a re-read costs the FUSE thread
  0.6-0.75 s (8,192 requests of 128 KiB at 75-90 us; our own code, from
  ``operations.read`` to the memory of verified blocks, is 17-19 us of that,
  timed without the kernel), and the check threads 0.8 s (pread, sha256). A
  first read adds the fetch thread: read and sha256 of the blob, copy into the
  spool, decompression, the write into the cache file and its block checks,
  1.8 s, serial, one chunk at a time.
* Block checks by crc32 instead of sha256 (``chunk_cache``): kept; the daemon's
  CPU fell from 3.6-3.7 to 3.0-3.4 s (first read) and from 1.6-1.8 to
  1.25-1.5 s (re-read).
* A chunk's blocks checked with one open and ``POSIX_FADV_WILLNEED``, and reads
  answered with a view of the verified block (no copy of each 128 KiB): kept,
  measured together with the crc32 (no separate gain above the noise).
* The read-ahead window split into ``CHECK_THREADS`` jobs that run at once, and
  a window of 16 blocks with 20 MiB of memory: re-read 1.30-1.77 s against
  1.35-1.58 s for one job of 8 blocks. No gain: not kept.
* The writer keeping the first 12 blocks of each chunk it wrote in the memory
  of verified blocks, so a first read does not read them back: first read
  2.68-2.88 s against 2.58-2.76 s without, and 6-8 MiB more RSS (fresh 1 MiB
  buffers cost page faults as much as the pread and crc32 they replace). Not kept.
* Pushing verified blocks into the kernel's page cache ahead of the reader
  (``pyfuse3.notify_store``, allowed to an unprivileged daemon): the FUSE thread
  fell from 0.65 to 0.40 s per GiB, but the push costs as much again (page
  allocation and copy in the kernel): re-read 1.65-1.84 s against 1.55-1.71 s.
  Also unsafe at shutdown: a store waits on the page lock of any read the kernel
  has in flight, so a push thread may still be in libfuse when the session is
  destroyed. Not kept.
* Two downloads at once (``prefetch`` 2): first read 2.48-2.49 s against
  2.68-2.73 s when the machine was quiet, none under load; peak RSS 164-172 MiB
  (two 32 MiB spools), over the 150 MiB limit. The spool in a private unlinked
  file instead of memory brings the peak RSS to 93-100 MiB at the same CPU, which
  would pay for it; not done here (a change to core's receive path).
* ``sys.setswitchinterval`` 0.5 ms against 5 ms: no difference. glibc's
  ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` raised (fresh 1 MiB
  blocks cost page faults, about a third of the check threads' kernel time):
  the same CPU, 10-16 MiB more RSS. Not kept.

``python -m bench --suite mount`` (1 GiB, 3 runs, medians), the code before and
after this round in two runs back to back, the machine loaded (``recv`` took
1.6-1.7 s, not its 1.2 s when quiet): first read 5.31 s, 0.30x recv, against
3.85 s, 0.44x (target 0.7x: missed); chunk-cache re-read 2.48 s against 1.86 s
with ``dd`` at 0.37 s, 0.15x against 0.20x (target 0.5x: missed); first byte
0.09 s against 0.08 s; peak RSS 141 MiB against 140 MiB. What stands between
these reads and the targets, as measured: a re-read needs 0.6-0.75 s of the one
FUSE thread at the kernel's 128 KiB requests whatever the checks cost, against
0.76 s for 0.5x a 0.38 s ``dd``; a first read must do all of ``recv``'s work
(1.2-1.5 s here) plus the cache write, its checks and the FUSE loop, about
3 s of CPU on two shared cores, against 1.7-2.1 s of wall time for 0.7x. Only
leaving pyfuse3's GIL-held request loop (a C or Rust FUSE loop, or ``splice``)
or a kernel that takes ``max_readahead`` above 128 KiB moves the first; only
overlapping downloads (see above) and fewer copies in the fetch move the second.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import trio

from dockercomms.core.errors import ChunkError, RegistryUnavailableError
from dockercomms.core.inbox import Inbox, Message
from dockercomms.core.status import Download
from dockercomms.fsmount.chunk_cache import BLOCK_BYTES, CacheCorruptError, ChunkCache, ChunkKey
from dockercomms.fsmount.worker_threads import WorkerThreads

log = logging.getLogger(__name__)

BUFFER_IDLE_SECONDS = 5.0
#: Blocks a sequential reader finds checked in memory ahead of it (see the caveats).
READ_AHEAD_BLOCKS = 8
#: Threads checking cached blocks, apart from the registry's worker threads.
CHECK_THREADS = 2
#: Readers whose last position is remembered to tell sequential reads from random ones.
_READERS_REMEMBERED = 64


@dataclass
class _Download:
    """A chunk being fetched (``bytes_done`` is updated from the worker thread)."""

    filename: str
    digest: str
    chunk: int
    bytes_total: int
    bytes_done: int = 0
    started: float = field(default_factory=time.monotonic)

    def statistics(self) -> Download:
        """Where it is now."""
        # A download that broke off is retried from the start and counts again.
        done = min(self.bytes_done, self.bytes_total)
        return Download(
            self.filename,
            self.digest,
            self.chunk,
            done,
            self.bytes_total,
            round(100 * done / self.bytes_total, 1) if self.bytes_total else 100.0,
            round(time.monotonic() - self.started, 1),
        )


@dataclass
class _Pending:
    """One download or block check that several readers may be waiting for."""

    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None


@dataclass
class _Position:
    """A reader's place in a message.

    Attributes:
        end: where its last read ended.
        horizon: how far ahead blocks were checked for it.
    """

    end: int
    horizon: int


def chunk_length(message: Message, index: int) -> int:
    """Plaintext bytes of chunk ``index`` (the last one may be short)."""
    return min(message.chunk_bytes, message.total_bytes - index * message.chunk_bytes)


def chunk_key(message: Message, index: int) -> ChunkKey:
    """The cache key of chunk ``index``: its layer digest, bound to ``chunk_sha256`` if sealed."""
    digest = message.chunks[index].digest
    if message.sealed is not None:
        bound = f"{digest}\n{message.sealed.chunk_sha256[index]}".encode()
        digest = "sha256:" + hashlib.sha256(bound).hexdigest()
    return ChunkKey(digest, index)


def _spans(
    message: Message, keys: list[ChunkKey], first: int, offset: int, end: int
) -> Iterator[tuple[ChunkKey, int, int]]:
    """(chunk, offset in it, length) for the bytes ``offset:end`` of chunks ``first``..."""
    for index, key in enumerate(keys, start=first):
        start = index * message.chunk_bytes
        lo = max(offset, start) - start
        hi = min(end, start + message.chunk_bytes) - start
        yield key, lo, hi - lo


class HeldChunks:
    """Chunks an open file keeps pinned in the cache until it is closed (``--whole-file``)."""

    def __init__(self, cache: ChunkCache, keys: list[ChunkKey]) -> None:
        self._cache = cache
        self._keys = keys

    def release(self) -> None:
        """Unpin them (once; later calls do nothing)."""
        keys, self._keys = self._keys, []
        for key in keys:
            self._cache.unpin(key)


class ChunkSource:
    """Verified byte ranges of messages, through the on-disk cache.

    Attributes:
        downloads: chunks being fetched right now.
        prefetch: how many chunks ahead a read starts fetching (and how many a
            whole-file open fetches at once).
        whole_file: ``open()`` verifies every chunk before it returns.
    """

    def __init__(
        self,
        inbox: Inbox,
        threads: WorkerThreads,
        cache: ChunkCache,
        nursery: trio.Nursery,
        *,
        prefetch: int = 1,
        whole_file: bool = False,
    ) -> None:
        self.inbox = inbox
        self.threads = threads
        self.cache = cache
        self.prefetch = prefetch
        self.whole_file = whole_file
        self.downloads: dict[ChunkKey, _Download] = {}
        self._nursery = nursery
        self._fetches: dict[ChunkKey, _Pending] = {}
        # Each download holds a chunk-sized spool buffer: at most ``prefetch`` at once
        # (a reader's own fetch included) keeps the daemon's memory bounded.
        self._fetch_slots = trio.CapacityLimiter(max(prefetch, 1))
        self._checks: dict[tuple[ChunkKey, int], _Pending] = {}
        self._check_threads = trio.CapacityLimiter(CHECK_THREADS)
        self._read_ahead = READ_AHEAD_BLOCKS
        # Where each message's last read ended (by digest): a read that starts
        # there is sequential and gets the next blocks checked ahead of it.
        self._positions: OrderedDict[str, _Position] = OrderedDict()
        # The inbox reuses spool buffers while chunks stream in (fresh memory costs
        # page faults); they are let go after BUFFER_IDLE_SECONDS without a fetch.
        self._fetches_started = 0

    async def read(self, message: Message, offset: int, size: int) -> bytes | memoryview:
        """``size`` bytes at ``offset`` (fewer at end of file), all verified.

        The common case, a read inside one chunk whose blocks were checked ahead,
        is answered on the spot from memory: no pin, no thread, no await.
        """
        end = min(offset + size, message.total_bytes)
        if offset >= end or size <= 0:
            return b""
        first = offset // message.chunk_bytes
        last = (end - 1) // message.chunk_bytes
        data = None
        if first == last:
            key = chunk_key(message, first)
            start = first * message.chunk_bytes
            # A cached chunk of another length than this manifest says is _pinned's to refuse.
            length = chunk_length(message, first)
            data = self.cache.read_from_memory(key, offset - start, end - offset, length=length)
        if data is None:
            data = await self._read_checked(message, first, last, offset, end)
        self._look_ahead(message, offset, end)
        return data

    async def _read_checked(
        self, message: Message, first: int, last: int, offset: int, end: int
    ) -> bytes:
        """Bytes ``offset:end`` of chunks ``first..last``: fetched if needed, blocks re-checked.

        A cached chunk that fails its check is dropped and fetched again, once.
        """
        for attempt in (1, 2):
            keys: list[ChunkKey] = []
            try:
                for index in range(first, last + 1):
                    keys.append(await self._pinned(message, index))
                await self._checked(message, keys, first, offset, end)
                data = self._read_from_memory(message, keys, first, offset, end)
                if data is None:  # evicted meanwhile by other readers' blocks
                    data = await trio.to_thread.run_sync(
                        self._read_pinned, message, keys, first, offset, end
                    )
                return data
            except CacheCorruptError as exc:
                if attempt == 2:
                    # Local disk trouble, not the message's fault: EIO, not a rejection.
                    raise OSError(errno.EIO, f"chunk cache keeps failing: {exc}") from exc
                log.warning("re-fetching corrupt cached chunk of %s", message.filename)
            finally:
                for key in keys:
                    self.cache.unpin(key)
        raise AssertionError("unreachable")

    def _look_ahead(self, message: Message, offset: int, end: int) -> None:
        """After a read: check the next blocks and fetch the next chunks, when it is time.

        Blocks ahead are checked for a sequential reader only, once less than half
        the window ahead of it is covered; chunks ahead are fetched for any reader,
        once it enters a new block or jumps.
        """
        position = self._positions.pop(message.digest, None)
        sequential = position is not None and abs(offset - position.end) <= BLOCK_BYTES
        moved = position is None or (position.end - 1) // BLOCK_BYTES != (end - 1) // BLOCK_BYTES
        if position is None or not sequential:
            position = _Position(end, end)
        position.end = end
        self._positions[message.digest] = position
        if len(self._positions) > _READERS_REMEMBERED:
            self._positions.popitem(last=False)
        if sequential and 2 * (position.horizon - end) < self._read_ahead * BLOCK_BYTES:
            position.horizon = self._start_read_ahead(message, end)
        if moved or not sequential:
            self._start_prefetch(message, (end - 1) // message.chunk_bytes + 1)

    async def warm(self, message: Message, index: int) -> None:
        """Make sure chunk ``index`` is fetched and checked (``open()`` does chunk 0)."""
        key = await self._pinned(message, index)
        self.cache.unpin(key)

    async def open_chunks(self, message: Message) -> HeldChunks:
        """What ``open()`` of an inbox file checks before it returns, and holds until close.

        Lazy (the default): chunk 0, so a corrupt first chunk fails the open; nothing
        is held. Whole-file: every chunk, all pinned until :meth:`HeldChunks.release`.
        The first failure stops the fetching (fetches under way finish, none is
        abandoned half-way) and is raised after every pin taken is given back.
        """
        if not message.total_bytes:
            return HeldChunks(self.cache, [])
        if not self.whole_file:
            await self.warm(message, 0)
            return HeldChunks(self.cache, [])
        keys: list[ChunkKey] = []
        failures: list[Exception] = []
        indices = iter(range(message.chunk_count))  # shared by the workers (one trio thread)

        async def worker() -> None:
            for index in indices:
                if failures:
                    return
                try:
                    keys.append(await self._pinned(message, index))
                except Exception as exc:
                    failures.append(exc)
                    return

        try:
            async with trio.open_nursery() as nursery:
                for _ in range(min(max(self.prefetch, 1), message.chunk_count)):
                    nursery.start_soon(worker)
        finally:
            if failures or len(keys) != message.chunk_count:
                HeldChunks(self.cache, keys).release()
        if failures:
            raise failures[0]
        return HeldChunks(self.cache, keys)

    def _read_pinned(
        self, message: Message, keys: list[ChunkKey], first: int, offset: int, end: int
    ) -> bytes:
        """The bytes from pinned chunks, re-checked from disk where not in memory (a thread)."""
        spans = _spans(message, keys, first, offset, end)
        return b"".join(self.cache.read(key, lo, size) for key, lo, size in spans)

    def _read_from_memory(
        self, message: Message, keys: list[ChunkKey], first: int, offset: int, end: int
    ) -> bytes | None:
        """The same bytes if every block is already verified in memory (no thread), else None."""
        parts = []
        for key, lo, size in _spans(message, keys, first, offset, end):
            part = self.cache.read_from_memory(key, lo, size)
            if part is None:
                return None
            parts.append(part)
        return b"".join(parts)

    async def _checked(
        self, message: Message, keys: list[ChunkKey], first: int, offset: int, end: int
    ) -> None:
        """Every block the bytes ``offset:end`` touch, checked into memory (in a thread).

        Blocks already being checked (read ahead) are waited for, not checked twice.
        """
        blocks = [
            (key, block)
            for key, lo, size in _spans(message, keys, first, offset, end)
            for block in self.cache.unverified_blocks(key, lo, size)
        ]
        for pending in self._check(blocks):
            await pending.done.wait()
            if pending.error is not None:
                raise pending.error

    def _check(self, blocks: list[tuple[ChunkKey, int]]) -> list[_Pending]:
        """The checks of these cached blocks; those not already under way start as one job.

        One thread call per job, not per block: every hand-over between the FUSE
        loop and a thread costs the loop the GIL for a while (see the caveats).
        """
        pendings, new = [], []
        for block in blocks:
            pending = self._checks.get(block)
            if pending is None:
                pending = self._checks[block] = _Pending()
                new.append((block, pending))
            pendings.append(pending)
        if new:
            self._nursery.start_soon(self._run_checks, new)
        return pendings

    async def _run_checks(self, jobs: list[tuple[tuple[ChunkKey, int], _Pending]]) -> None:
        keys = [key for key in dict.fromkeys(key for (key, _), _ in jobs) if self.cache.pin(key)]
        errors: dict[tuple[ChunkKey, int], Exception] = {}
        try:
            errors = await trio.to_thread.run_sync(
                self._verify_blocks, [block for block, _ in jobs], limiter=self._check_threads
            )
        except Exception as exc:  # the waiting readers report it
            errors = {block: exc for block, _ in jobs}
        finally:
            for key in keys:
                self.cache.unpin(key)
            for block, pending in jobs:
                pending.error = errors.get(block)
                del self._checks[block]
                pending.done.set()

    def _verify_blocks(
        self, blocks: list[tuple[ChunkKey, int]]
    ) -> dict[tuple[ChunkKey, int], Exception]:
        """Check blocks into memory (a thread); what failed, and why (corrupt: dropped).

        Each chunk's blocks in one call (one open, the disk asked for all of them
        at once); after a failure the chunk is gone, so its other blocks fail too.
        """
        errors: dict[tuple[ChunkKey, int], Exception] = {}
        by_chunk: dict[ChunkKey, list[int]] = {}
        for key, block in blocks:
            by_chunk.setdefault(key, []).append(block)
        for key, indices in by_chunk.items():
            try:
                self.cache.verify_blocks(key, indices)
            except CacheCorruptError as exc:
                errors.update({(key, block): exc for block in indices})
        return errors

    def _start_read_ahead(self, message: Message, end: int) -> int:
        """Check the blocks of the window after ``end`` (in cached chunks) as one job.

        Returns where the blocks covered end: the window, or the start of the
        first chunk not cached yet (its blocks are checked once it is).
        """
        stop = min(end + self._read_ahead * BLOCK_BYTES, message.total_bytes)
        wanted: list[tuple[ChunkKey, int]] = []
        covered = end
        while covered < stop:
            index = covered // message.chunk_bytes
            key = chunk_key(message, index)
            if self.cache.size_of(key) is None:
                break
            start = index * message.chunk_bytes
            upto = min(stop, start + message.chunk_bytes)
            wanted += [
                (key, block)
                for block in self.cache.unverified_blocks(key, covered - start, upto - covered)
                if (key, block) not in self._checks
            ]
            covered = upto
        if wanted:
            self._check(wanted)
        return covered

    async def _pinned(self, message: Message, index: int) -> ChunkKey:
        """Chunk ``index`` in the cache and pinned, fetching it if needed.

        A chunk this call fetches itself is committed pinned, so a cache cap
        smaller than the chunks being read cannot evict it before it is read.
        """
        key = chunk_key(message, index)
        while not self.cache.pin(key):
            fetch = self._fetches.get(key)
            if fetch is None:
                await self._fetch(message, index, key, pin=True)
                break
            await fetch.done.wait()
            if fetch.error is not None:
                raise fetch.error
        if self.cache.size_of(key) != chunk_length(message, index):
            self.cache.unpin(key)
            raise ChunkError(
                f"chunk {index} of {message.filename!r} is {self.cache.size_of(key)} "
                f"bytes, the manifest says {chunk_length(message, index)}"
            )
        return key

    async def _fetch(
        self, message: Message, index: int, key: ChunkKey, *, pin: bool = False
    ) -> None:
        """Download one chunk into the cache (``pin``: for the caller); waiters share it."""
        fetch = _Pending()
        self._fetches[key] = fetch
        self._fetches_started += 1
        layer = message.chunks[index]
        download = _Download(message.filename, message.digest, index, layer.size)
        self.downloads[key] = download

        def progress(n: int) -> None:
            download.bytes_done += n

        def work() -> None:
            writer = self.cache.writer()
            try:
                self.inbox.fetch_chunk(message, index, writer, on_progress=progress)
                self.cache.commit(key, writer, pin=pin)
            except BaseException:
                writer.discard()
                raise

        try:
            async with self._fetch_slots:
                await self.threads.run(work)
        except trio.Cancelled:
            # Only at shutdown (the thread is abandoned and may still commit, and pin,
            # its chunk: that pin ends with the process). Waiters live in other
            # cancel scopes: give them an error of their own.
            fetch.error = RegistryUnavailableError(f"download of chunk {index} was interrupted")
            raise
        except BaseException as exc:
            fetch.error = exc
            raise
        finally:
            del self._fetches[key]
            del self.downloads[key]
            fetch.done.set()
            if not self._fetches:
                with contextlib.suppress(RuntimeError):  # nursery closed: shutting down
                    self._nursery.start_soon(self._release_buffers_when_idle)

    async def _release_buffers_when_idle(self) -> None:
        """Free the spool buffers unless another fetch starts within the idle spell."""
        started = self._fetches_started
        await trio.sleep(BUFFER_IDLE_SECONDS)
        if not self._fetches and self._fetches_started == started:
            self.inbox.release_buffers()

    def _start_prefetch(self, message: Message, index: int) -> None:
        if self.prefetch <= 0:
            return
        for ahead in range(index, min(index + self.prefetch, message.chunk_count)):
            key = chunk_key(message, ahead)
            if key in self._fetches or self.cache.size_of(key) is not None:
                continue
            self._nursery.start_soon(self._prefetch, message, ahead, key)

    async def _prefetch(self, message: Message, index: int, key: ChunkKey) -> None:
        if key in self._fetches:
            return
        try:
            await self._fetch(message, index, key)
        except Exception as exc:
            log.info("prefetch of chunk %d of %s failed: %s", index, message.filename, exc)

    @property
    def checks_in_flight(self) -> int:
        """Cached blocks being checked right now (ahead of readers, or for them)."""
        return len(self._checks)

    def statistics(self) -> list[Download]:
        """Downloads in flight."""
        return [d.statistics() for d in self.downloads.values()]
