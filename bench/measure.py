"""Timing and memory measurement shared by the benchmark suites.

Each measured step runs as its own process so its peak RSS (from ``wait4``'s
rusage) is that step's alone, and wall time includes interpreter start-up, as a
user would see it.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024


@dataclass
class Sample:
    """One run: seconds and peak resident set size in bytes."""

    seconds: float
    peak_rss: int


@dataclass
class Series:
    """Repeated runs of one step."""

    name: str
    size: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        """Median wall time."""
        return statistics.median(s.seconds for s in self.samples)

    @property
    def median_rss(self) -> int:
        """Median peak RSS."""
        return int(statistics.median(s.peak_rss for s in self.samples))

    @property
    def throughput(self) -> float:
        """MiB/s at the median time."""
        return self.size / MIB / self.median_seconds


def run_process(command: Sequence[str], env: dict[str, str] | None = None) -> Sample:
    """Run a command; return its wall time and its own peak RSS."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}): {stderr[-2000:]}")
    return Sample(elapsed, usage.ru_maxrss * 1024)


def settle(work: Path, size: int) -> None:
    """Put the machine in the same state before every timed step (not timed itself).

    1. ``sync``: otherwise a step pays for the writeback of the step before it.
    2. Write and delete a scratch file a bit larger than ``size``, then sync again.
       On this VM, memory freed more than a second or two ago has been handed
       back to the hypervisor and costs ~1 s per GiB to touch again (measured:
       ``cp`` of 1 GiB takes 0.35 s right after 1.5 GiB was freed, 0.7-1.1 s
       otherwise). Every step, floors included, starts with recently freed pages.
    """
    os.sync()
    scratch = work / ".settle-scratch"
    block = bytes(8 * MIB)
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range((size + 512 * MIB) // len(block)):
            os.write(fd, block)
    finally:
        os.close(fd)
        scratch.unlink()
    os.sync()


def time_call(call: Callable[[], object]) -> Sample:
    """Wall time of an in-process call (RSS not attributed)."""
    started = time.perf_counter()
    call()
    return Sample(time.perf_counter() - started, 0)


def fsync_file(path: Path) -> Sample:
    """Time forcing a just-written file to disk, as ``recv`` must (SPEC 5 step 9)."""
    started = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return Sample(time.perf_counter() - started, 0)


def sha256_file(path: Path) -> str:
    """sha256 with 1 MiB reads (OpenSSL through hashlib: the fast path on this CPU)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while piece := handle.read(MIB):
            digest.update(piece)
    return digest.hexdigest()


def make_random(path: Path, size: int, salt: int = 0) -> Path:
    """``size`` bytes of os.urandom, written in 8 MiB pieces (``salt`` unused: always new)."""
    with path.open("wb") as handle:
        left = size
        while left:
            piece = os.urandom(min(8 * MIB, left))
            handle.write(piece)
            left -= len(piece)
    return path


def make_compressible(path: Path, size: int, salt: int = 0) -> Path:
    """Log-like text: compresses well but is not trivially repetitive.

    ``salt`` changes every line, so each run's chunks are new blobs to the registry.
    """
    lines = [
        f"2026-11-23T09:{i % 60:02d}:{(i * 7) % 60:02d}Z level=info "
        f"req={(i + salt) * 2654435761 % 10**9} "
        f"path=/v2/team/comms/blobs/sha256:{(i * 97) % 10**12:012d} status={200 + i % 3} "
        f"bytes={(i * 131) % 100000}\n"
        for i in range(4096)
    ]
    block = "".join(lines).encode()
    with path.open("wb") as handle:
        left = size
        while left:
            piece = block[: min(len(block), left)]
            handle.write(piece)
            left -= len(piece)
    return path


def drop_from_page_cache(path: Path) -> None:
    """Ask the kernel to keep nothing of ``path`` cached (fair cold reads where it matters)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def report(series: Series, floor: Series | None = None, *, target: float | None = None) -> str:
    """One line: median time, throughput, RSS and ratio to the floor."""
    line = (
        f"{series.name:<34} median {series.median_seconds:7.2f} s  {series.throughput:8.1f} MiB/s"
    )
    if series.median_rss:
        line += f"  peak RSS {series.median_rss / MIB:7.1f} MiB"
    if floor is not None:
        ratio = series.median_seconds / floor.median_seconds
        line += f"  ratio {ratio:5.2f}x floor"
        if target is not None:
            line += f" (target <= {target:.2f}x: {'OK' if ratio <= target else 'MISSED'})"
    runs = ", ".join(f"{s.seconds:.2f}" for s in series.samples)
    return f"{line}  [runs: {runs}]"
