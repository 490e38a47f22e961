"""Sealing with the stock ``age`` binary in its own process, when the machine has one.

Caveats first:

* Why a process: pyrage (the Rust ``age`` crate) encrypts at ~470 MiB/s here and
  holds the GIL while it does, so a sealed send cost 2.5x a plaintext one. The Go
  ``age`` binary (Debian package ``age``, the reference implementation) encrypts
  1 GiB in ~0.6 s of its own CPU, on the other core, while Python hashes,
  compresses and writes. The format is the same age v1 either way (SPEC 9) and
  every receiver opens it with pyrage; nothing here hand-writes crypto.
* Only public values cross the boundary: the recipients' ``age1...`` strings on
  the command line and the compressed tar on stdin. No identity ever goes to the
  process. The binary is found once per process (``DOCKERCOMMS_AGE_BINARY`` names
  one, ``none`` turns this off; otherwise ``age`` on ``PATH``) and used only if
  ``--version`` answers ``v1.x``; else pyrage seals, slower, with the same result.
* What the binary writes is checked before the upload may finish: its header is
  counted (:func:`sealing.inspect_header`, the receiver's own check) and must hold
  one X25519 stanza per recipient and a length that seals exactly the bytes fed
  in. A binary that cuts the stream short or drops a recipient fails the chunk
  (and the send, with a clear error), never uploads a bad blob.
* The process is ours: started by this code, ended by PID (``kill``) when the
  consumer stops early or the plaintext source fails, and always waited for.
  Its environment is empty: it needs nothing, and gets no credentials.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Final, TypeAlias

from dockercomms.core.errors import DockerCommsError
from dockercomms.core.untrusted import shown

#: Names the ``age`` binary to seal with, or ``none`` to seal in process (pyrage).
AGE_BINARY_ENV: Final = "DOCKERCOMMS_AGE_BINARY"
_DISABLED: Final = frozenset({"", "none", "0", "off"})
_VERSION: Final = re.compile(rb"^v?1\.\d+\.\d+\S*\s*$")
#: Most of the binary's stderr kept for an error message.
_STDERR_KEPT: Final = 4096
#: Output bytes kept for the header check (an age header is at most this long for us).
HEADER_PREFIX_BYTES: Final = 64 * 1024
#: Pipe buffer asked for (the unprivileged maximum by default); 64 KiB costs a
#: context switch per 64 KiB each way.
PIPE_BYTES: Final = 1024 * 1024
#: Time allowed for ``age --version``.
_VERSION_TIMEOUT_SECONDS: Final = 10.0

#: ``check(prefix, total, fed)``: raises unless the output (first bytes, length)
#: is an age file sealing exactly ``fed`` bytes to the recipients.
CheckOutput: TypeAlias = Callable[[bytes, int, int], None]


@dataclass(frozen=True)
class AgeBinary:
    """An ``age`` executable that answered ``--version`` with a 1.x version."""

    path: str
    version: str


def find_age_binary(environ: dict[str, str] | None = None) -> AgeBinary | None:
    """The ``age`` binary to seal with, or None to seal with pyrage.

    ``environ`` defaults to the process environment; the answer for it is cached,
    so a send of many chunks asks the binary for its version once.
    """
    env = os.environ if environ is None else environ
    return _find(env.get(AGE_BINARY_ENV), env.get("PATH"))


@functools.cache
def _find(chosen: str | None, search_path: str | None) -> AgeBinary | None:
    if chosen is not None and chosen.strip().lower() in _DISABLED:
        return None
    candidate = shutil.which(chosen or "age", path=search_path)
    if candidate is None:
        return None
    path = os.path.abspath(candidate)
    try:
        answer = subprocess.run(
            [path, "--version"],
            capture_output=True,
            env={},
            timeout=_VERSION_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if answer.returncode != 0 or not _VERSION.match(answer.stdout[:64]):
        return None
    return AgeBinary(path, answer.stdout.strip().decode("ascii", "replace"))


def _widen(pipe: IO[bytes]) -> None:
    """Give a pipe :data:`PIPE_BYTES` of buffer, if the kernel lets us (fewer switches)."""
    # Over /proc/sys/fs/pipe-max-size or the user's pipe budget: keep 64 KiB.
    with contextlib.suppress(OSError):
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


class _Feeder(threading.Thread):
    """Writes the plaintext pieces to the process's stdin; keeps the source's error."""

    def __init__(self, pieces: Iterator[bytes | memoryview], sink: IO[bytes]) -> None:
        super().__init__(name="age-feed", daemon=True)
        self._pieces = pieces
        self._sink = sink
        self.fed = 0
        self.error: BaseException | None = None
        self.failed = threading.Event()

    def run(self) -> None:
        try:
            for piece in self._pieces:
                self._sink.write(piece)
                self.fed += len(piece)
        except (BrokenPipeError, ValueError):
            return  # the process ended (or was ended): the reader says why
        except BaseException as exc:
            self.error = exc
            self.failed.set()
            return
        finally:
            with contextlib.suppress(OSError, ValueError):
                self._sink.close()


class _StderrKeeper(threading.Thread):
    """Drains stderr (so the process never blocks on it) and keeps its start."""

    def __init__(self, source: IO[bytes]) -> None:
        super().__init__(name="age-stderr", daemon=True)
        self._source = source
        self.kept = b""

    def run(self) -> None:
        while data := self._source.read(65536):
            if len(self.kept) < _STDERR_KEPT:
                self.kept += data[: _STDERR_KEPT - len(self.kept)]


def sealed_by_process(
    binary: AgeBinary,
    pieces: Iterator[bytes | memoryview],
    recipients: Sequence[str],
    piece_bytes: int,
    check: CheckOutput,
) -> Iterator[bytes]:
    """Ciphertext pieces of one age file made by ``binary`` from ``pieces``.

    ``check(prefix, total, fed)`` (``prefix``: the first
    :data:`HEADER_PREFIX_BYTES` of the output) is called once the process has written
    everything and before the last piece is yielded; it raises if the output is
    not an age file sealing exactly ``fed`` bytes to ``recipients``.
    The last piece is held back until the check passed, so a consumer that
    commits a blob only at the end never commits one that failed it.
    """
    args = [binary.path, "--encrypt"]
    for recipient in recipients:
        args += ["--recipient", recipient]
    process = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={},
        close_fds=True,
    )
    assert process.stdin is not None and process.stdout is not None
    assert process.stderr is not None
    for pipe in (process.stdin, process.stdout):
        _widen(pipe)
    feeder = _Feeder(pieces, process.stdin)
    stderr = _StderrKeeper(process.stderr)
    feeder.start()
    stderr.start()
    try:
        prefix = b""
        total = 0
        held: bytes | None = None
        while True:
            if feeder.failed.is_set():
                break
            data = process.stdout.read(piece_bytes)
            if not data:
                break
            if len(prefix) < HEADER_PREFIX_BYTES:
                prefix += data[: HEADER_PREFIX_BYTES - len(prefix)]
            total += len(data)
            if held is not None:
                yield held
            held = data
        feeder.join()
        if feeder.error is not None:
            raise feeder.error
        code = process.wait()
        stderr.join()
        if code != 0:
            said = shown(stderr.kept.decode("utf-8", "replace").strip()) or "nothing"
            raise DockerCommsError(
                f"the age binary {binary.path} failed (exit {code}): {said}; "
                f"set {AGE_BINARY_ENV}=none to seal with the built-in age"
            )
        check(prefix, total, feeder.fed)
        if held is not None:
            yield held
    finally:
        if process.poll() is None:
            process.kill()  # ours, by PID: the consumer or the source stopped early
        process.stdout.close()
        feeder.join()
        process.wait()
        stderr.join()
        process.stderr.close()
