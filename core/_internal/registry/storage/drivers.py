"""Storage drivers: the few operations distribution's layout needs, on a disk or a bucket.

Caveats first:

* Paths are ``/``-separated and relative to the driver's root; callers build them
  with :mod:`.layout` only, never from request or storage text.
* A blob upload is staged in a local file (the embedded store's ``Upload``: hashed
  as it arrives, rewound when a chunk fails) and moved into place whole once its
  digest is checked. Nothing is ever modified in place, so readers need no lock.
* Anything that is not "it is not there" is a :class:`StorageFailure` whose ``kind``
  says what the user can do about it; the adapter turns it into an exit code.
* The filesystem driver uses Python's ``os`` directly, not a storage library:
  what it needs is ``O_EXCL`` create, same-filesystem ``rename``, ``O_NOFOLLOW``
  and ``fsync``, which are single system calls. (OpenDAL's ``fs`` service does the
  same, measured 3x slower writing and 2x slower reading 256 MiB here.)
* Filesystem: link files and manifests are written to a temp file, fsynced and
  renamed, so none is ever seen torn or empty; blob data is not fsynced (as
  distribution's own driver, and the embedded store by default: every reader checks
  every digest, so a torn blob is caught), nor are directories, so a power cut may
  forget the last renames (distribution's driver fsyncs nothing at all).
* Filesystem: a symlink or any non-regular file where a link, manifest or blob should
  be reads as missing; directories on the way are trusted, as distribution does.
* Filesystem: scratch files live in ``<repo>/_uploads/<uuid>/`` (with distribution's
  ``startedat``), so they are on the same filesystem as their targets and a registry's
  upload purging removes what a crashed process left. A long-running process (the
  mount) starts a new scratch directory every day, so a registry purging uploads older
  than its purge age (a week by default) never removes one in use; should one go
  anyway, the write in flight fails once and the next one makes a new directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Final, Literal, Protocol

from dockercomms.core._internal.registry.distribution_api import Upload

__all__ = [
    "FailureKind",
    "FilesystemDriver",
    "Readable",
    "StorageDriver",
    "StorageFailure",
]

FailureKind = Literal["auth", "config", "unreachable", "io"]

_WRITE_ATTEMPTS: Final = 3
SCRATCH_DAYS: Final = 1.0
"""A scratch directory is used for this many days, then a new one is started."""


class StorageFailure(Exception):
    """A storage operation failed for another reason than "not there".

    Attributes:
        kind: ``auth`` (credentials or permissions refused: exit 3), ``config`` (the
            storage as configured cannot work, e.g. no such bucket: exit 1),
            ``unreachable`` (network, timeout, throttling: worth retrying), ``io``
            (anything else the storage reported).
    """

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind


class Readable(Protocol):
    """A byte stream a blob is served from."""

    @property
    def closed(self) -> bool:
        """True once closed."""

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes; empty at the end."""

    def close(self) -> None:
        """Release the stream."""


class StorageDriver(Protocol):
    """What the storage adapter needs from a disk or a bucket.

    Attributes:
        kind: the distribution driver name (``filesystem``, ``s3``).
        location: where, for people (``/srv/registry``, ``s3://bucket/prefix at URL``).
        cheap_stat: a size lookup costs about nothing (a disk), so a scan may stat
            many paths instead of listing a whole subtree.
    """

    kind: str
    location: str
    cheap_stat: bool

    def check(self) -> None:
        """Fail early, with a clear :class:`StorageFailure`, if the storage is unusable."""

    def size(self, path: str) -> int | None:
        """Size of the file at ``path``; None when there is none."""

    def read(self, path: str, limit: int) -> bytes | None:
        """At most ``limit`` bytes from the start of ``path``; None when there is none."""

    def open(self, path: str, offset: int, length: int) -> Readable:
        """``length`` bytes of ``path`` from ``offset``; ``FileNotFoundError`` if gone."""

    def put(self, path: str, data: bytes, scratch: str) -> None:
        """Write ``path`` whole: readers see the old content or the new, never a part."""

    def stage(self, scratch: str) -> Upload:
        """A new local staging file for a blob upload (``scratch``: the uploads dir)."""

    def commit(self, upload: Upload, path: str) -> None:
        """Move a staged, digest-checked upload to ``path`` whole."""

    def delete(self, path: str) -> bool:
        """Remove one file; False when it was not there."""

    def delete_tree(self, path: str) -> None:
        """Remove everything under ``path`` (nothing there is fine)."""

    def list_names(self, path: str) -> list[str] | None:
        """Names directly under ``path`` (files and directories); None if it is absent."""

    def walk(self, path: str) -> Iterator[str]:
        """Every file under ``path``, as a path relative to ``path``."""

    def close(self) -> None:
        """Remove this driver's scratch files."""


class FilesystemDriver:
    """Distribution's ``filesystem`` driver: the layout under ``rootdirectory``.

    Files are created with mode ``0666`` and directories ``0777``, less the umask, as
    distribution creates them, so a group-shared root stays shared.
    """

    kind = "filesystem"
    cheap_stat = True

    def __init__(self, root: Path, *, durable_blobs: bool = False) -> None:
        self.root = root
        self.location = str(root)
        self.durable_blobs = durable_blobs
        self._scratch: dict[str, tuple[Path, float]] = {}
        self._made: list[Path] = []
        self._lock = threading.Lock()

    def _path(self, path: str) -> Path:
        return self.root / path

    def check(self) -> None:
        """The root must be a directory, or not exist yet (created on the first write)."""
        try:
            info = os.stat(self.root)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _failure(exc, self.location) from exc
        if not stat.S_ISDIR(info.st_mode):
            raise StorageFailure("config", f"storage root {self.root} is not a directory")

    def size(self, path: str) -> int | None:
        """Size of a regular file (not followed if a symlink); None otherwise."""
        try:
            info = os.lstat(self._path(path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _failure(exc, path) from exc
        return info.st_size if stat.S_ISREG(info.st_mode) else None

    def read(self, path: str, limit: int) -> bytes | None:
        """Read a small file, refusing symlinks, FIFOs and devices planted in its place."""
        try:
            with self._open_regular(path) as handle:
                return handle.read(limit)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _failure(exc, path) from exc

    def open(self, path: str, offset: int, length: int) -> Readable:
        """An open file positioned at ``offset`` (the caller reads ``length`` bytes)."""
        try:
            handle = self._open_regular(path)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise _failure(exc, path) from exc
        handle.seek(offset)
        return handle

    def _open_regular(self, path: str) -> BinaryIO:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self._path(path), flags)
        except (NotADirectoryError, IsADirectoryError) as exc:
            raise FileNotFoundError(errno.ENOENT, "not a file", path) from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink in place of the file
                raise FileNotFoundError(errno.ENOENT, "a symlink", path) from exc
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise FileNotFoundError(errno.ENOENT, "not a regular file", path)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def put(self, path: str, data: bytes, scratch: str) -> None:
        """Temp file in this driver's scratch directory, fsync, rename over ``path``."""
        target = self._path(path)
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                staged = self._scratch_dir(scratch) / f"{uuid.uuid4().hex}.tmp"
            except OSError as exc:
                raise _failure(exc, scratch) from exc
            try:
                fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
                try:
                    _write_all(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self._move(staged, target)
                return
            except FileNotFoundError as exc:
                # The scratch directory or the target's directory went away under us
                # (a purge, or a concurrent untag removing a tag directory): again.
                self._forget_scratch(scratch)
                if attempt == _WRITE_ATTEMPTS:
                    raise _failure(exc, path) from exc
            except OSError as exc:
                raise _failure(exc, path) from exc
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(staged)
        raise AssertionError("unreachable")

    def stage(self, scratch: str) -> Upload:
        """A staging file beside the blobs, so committing it is one rename."""
        try:
            path = self._scratch_dir(scratch) / f"{uuid.uuid4().hex}.part"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            self._forget_scratch(scratch)
            raise _failure(exc, scratch) from exc
        return Upload(path, os.fdopen(fd, "w+b"))

    def commit(self, upload: Upload, path: str) -> None:
        """Rename the staged file into place (a same-filesystem rename)."""
        try:
            upload.seal(durable=self.durable_blobs)
            self._move(upload.path, self._path(path))
        except OSError as exc:
            raise _failure(exc, path) from exc

    def _move(self, source: Path, target: Path) -> None:
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(source, target)
                return
            except FileNotFoundError:
                # Its directory was removed between mkdir and rename; the source is
                # ours and still there unless that was the scratch directory.
                if attempt == _WRITE_ATTEMPTS or not source.exists():
                    raise

    def delete(self, path: str) -> bool:
        """Unlink one file."""
        try:
            os.unlink(self._path(path))
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise _failure(exc, path) from exc
        return True

    def delete_tree(self, path: str) -> None:
        """``rm -r``; what someone else removes meanwhile is not an error."""
        top = self._path(path)
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                shutil.rmtree(top)
                return
            except FileNotFoundError:
                # Another remover got to a part first; what is left is removed next time.
                if attempt == _WRITE_ATTEMPTS or not os.path.lexists(top):
                    return
            except OSError as exc:
                raise _failure(exc, path) from exc

    def list_names(self, path: str) -> list[str] | None:
        """``os.scandir``: entries that come and go meanwhile are seen or not, never torn."""
        try:
            with os.scandir(self._path(path)) as entries:
                return [entry.name for entry in entries]
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _failure(exc, path) from exc

    def walk(self, path: str) -> Iterator[str]:
        """Regular files under ``path`` (symlinks are not followed)."""
        top = self._path(path)
        for folder, _dirs, files in os.walk(top, onerror=_raise_unless_missing):
            for name in files:
                yield str((Path(folder) / name).relative_to(top))

    def close(self) -> None:
        """Remove the scratch directories this driver made."""
        with self._lock:
            folders, self._made, self._scratch = self._made, [], {}
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)

    def _scratch_dir(self, scratch: str) -> Path:
        """This process's scratch directory under ``scratch``, with distribution's ``startedat``."""
        with self._lock:
            current = self._scratch.get(scratch)
            now = time.monotonic()
            fresh = current is not None and now - current[1] < SCRATCH_DAYS * 86400
            if current is not None and fresh and current[0].is_dir():
                return current[0]
            folder = self._path(scratch) / str(uuid.uuid4())
            folder.mkdir(parents=True)
            self._made.append(folder)
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
            (folder / "startedat").write_bytes(stamp)
            self._scratch[scratch] = (folder, now)
            return folder

    def _forget_scratch(self, scratch: str) -> None:
        with self._lock:
            self._scratch.pop(scratch, None)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _raise_unless_missing(error: OSError) -> None:
    if not isinstance(error, FileNotFoundError | NotADirectoryError):
        raise _failure(error, str(error.filename))


def _failure(exc: OSError, where: str) -> StorageFailure:
    """An ``OSError`` as a failure kind: permissions are the user's to fix (exit 3)."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageFailure("auth", f"storage refused access to {where}: {reason}")
    return StorageFailure("io", f"storage failed at {where}: {reason}")
