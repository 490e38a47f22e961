"""In-process OCI registry served from an OCI image layout directory (SPEC 8).

Caveats:
    * One layout is one repository. The ``<name>`` in ``/v2/<name>/...`` must be a valid
      repository name but is otherwise ignored: every name sees the same blobs and tags.
    * Only ``sha256`` digests are accepted.
    * Upload sessions live in the memory of one adapter. Another process, or another
      adapter on the same layout, cannot continue them. Their partial files sit in
      ``<layout>/.uploads/`` and are removed on cancel, failure and ``close()``; a process
      that crashes leaves them behind.
    * No garbage collection and no reference counting: deleting a manifest by digest
      deletes its own blob only, and deleting a blob does not ask who still needs it.
    * ``Accept`` is not negotiated: a manifest is served with the media type it was
      pushed with.
    * No authentication: whoever can read the directory can read every message in it.
      A new layout is therefore private whatever the umask: directories 0700 (missing
      parents included), files 0600 (staged uploads, the lock and ``index.json`` too).
      An existing layout that group or others may enter is used as it is, with one
      warning per process that names the fix (``chmod -R go-rwx <dir>``). Sharing one
      layout between several Unix users is not supported; use a registry for that.
    * Files in the layout are opened without following symlinks and without blocking,
      and only regular files are read: a FIFO, device, directory or symlink in place of
      a blob, manifest or ``index.json`` is refused at once. Sizes are checked with
      ``fstat`` before reading, and at most cap + 1 bytes of a manifest are read: one
      over the cap is served (as a remote registry would) as a stream that stops
      there, for the client's own cap to refuse; the referrers API skips it. Damage
      is answered HTTP 422, not 500, so clients do not retry a condition that will
      not pass by itself. The layout's own JSON is read with the bounded
      parser of :mod:`dockercomms.core.untrusted` (a manifest nested 5,000 deep is
      refused on PUT, and skipped by the referrers API when found on disk).
    * A streamed blob (``stream=True``) holds an open file until its body has been read to
      the end or the response is closed, so use ``with session.get(..., stream=True)``.
    * Untagging keeps the manifest: when its last tag goes it is given an untagged
      descriptor in ``index.json``, so it stays reachable by digest, by the referrers API
      and by tools that walk the layout (``skopeo``, layout garbage collectors).

Mount it on a ``requests.Session`` under :data:`EMBEDDED_BASE_URL`; the registry client
then talks to the layout exactly as it would to a remote registry, with no socket.

Several processes and threads may share one layout. Nothing is modified in place: blobs
and ``index.json`` are written to a temp file on the same filesystem and renamed, so a
reader sees the old or the new file, never a torn one, and readers take no lock.
``index.json`` and manifests are fsynced before the rename. Large blob data is not, by
default (as distribution's filesystem driver does not): waiting for the disk would cap
every send at the disk's write speed, and a blob damaged by a power cut is still caught,
because every reader checks every digest. Set ``DOCKERCOMMS_EMBEDDED_FSYNC=1`` (or
``durable_blobs=True``) to fsync blob data too.
Changes to ``index.json`` are read-modify-write cycles serialised by a file lock
(``index.json.lock``) across processes and a mutex across threads.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import re
import shlex
import stat
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final
from urllib.parse import unquote, urlsplit

import filelock
import requests
from requests.adapters import BaseAdapter

from dockercomms.core._internal.registry.distribution_api import (
    COPY_CHUNK,
    DIGEST_RE,
    IMAGE_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    ApiError,
    ApiServer,
    BlobStream,
    Call,
    Reply,
    Routes,
    Upload,
    Uploads,
    blob_created,
    body_chunks,
    byte_range,
    check_digest,
    check_tag,
    encode_json,
    error_reply,
    json_reply,
    manifest_media_type,
    read_limited,
    referenced_digests,
    tags_reply,
    unknown_manifest,
    upload_headers,
)
from dockercomms.core.errors import DockerCommsError
from dockercomms.core.untrusted import parse_json

if TYPE_CHECKING:
    from dockercomms.core._internal.registry.embedded_watch import IndexWatch

__all__ = [
    "DURABLE_BLOBS_ENV",
    "EMBEDDED_BASE_URL",
    "MAX_INDEX_BYTES",
    "MAX_MANIFEST_BYTES",
    "EmbeddedRegistryAdapter",
]

log = logging.getLogger(__name__)

EMBEDDED_BASE_URL: Final = "http://dockercomms-embedded.invalid"
"""Where to mount the adapter; ``.invalid`` can never resolve to a real host."""


MAX_INDEX_BYTES: Final = 128 * 1024 * 1024
"""Largest ``index.json`` read: about 60,000 live messages with their receipts.

Past this the layout is treated as damaged rather than parsed (parsing JSON costs
about ten times its size in memory)."""

DURABLE_BLOBS_ENV: Final = "DOCKERCOMMS_EMBEDDED_FSYNC"
"""Set to 1 to fsync every blob's data before it is renamed into the layout."""

_OCI_EMPTY: Final = "application/vnd.oci.empty.v1+json"
_REF_NAME: Final = "org.opencontainers.image.ref.name"

_PRIVATE_DIR: Final = 0o700
_PRIVATE_FILE: Final = 0o600
#: A layout that gives group or others any access (``index.json`` names every blob).
_OPEN_TO_OTHERS: Final = 0o077
#: Status of a damaged layout entry: not 5xx, which clients retry.
_DAMAGED: Final = 422
_EMPTY_INDEX: Final[dict[str, Any]] = {
    "schemaVersion": 2,
    "mediaType": OCI_INDEX,
    "manifests": [],
}


_Descriptor = dict[str, Any]


@dataclass(frozen=True)
class _ManifestFacts:
    """What ``index.json`` and the referrers API need to know about one stored manifest.

    Manifests are immutable, so these are cached by digest for the adapter's lifetime.

    Attributes:
        artifact_type: the manifest's ``artifactType``, else a non-empty config media type.
        annotations: the manifest's own annotations (string values only).
        subject: digest of the manifest this one refers to, if any.
    """

    artifact_type: str | None
    annotations: Mapping[str, str]
    subject: str | None


class _IndexLookup:
    """One version of ``index.json`` keyed three ways, so a lookup is not a scan.

    Listing an inbox asks for a manifest and its referrers per message; scanning
    every descriptor for each made a 1,000-message listing quadratic. Built again
    whenever ``index.json`` changes. The tag and digest tables cost one pass over
    the index; the referrers table reads every manifest (facts cached by digest),
    so it is built only when a referrers query first needs it.

    Attributes:
        by_digest: the last descriptor of each manifest digest.
        by_tag: the last descriptor carrying each tag.
    """

    def __init__(
        self,
        descriptors: list[_Descriptor],
        facts_of: Callable[[_Descriptor], _ManifestFacts | None],
    ) -> None:
        self._descriptors = descriptors
        self._facts_of = facts_of
        self.by_digest: dict[str, _Descriptor] = {}
        self.by_tag: dict[str, _Descriptor] = {}
        self._under: dict[str, dict[str, str]] = {}
        for entry in descriptors:
            digest = entry.get("digest")
            if isinstance(digest, str):
                self.by_digest[digest] = entry
                if (tag := _ref_name(entry)) is not None:
                    self.by_tag[tag] = entry

    def tags_under(self, prefix: str) -> dict[str, str]:
        """Tags starting with ``prefix`` -> the digest each names (kept for this index).

        Asked by every inbox poll; for an unchanged index the answer is the one
        already made (callers must not mutate it).
        """
        found = self._under.get(prefix)
        if found is None:
            found = {
                tag: digest
                for tag, entry in self.by_tag.items()
                if tag.startswith(prefix)
                and DIGEST_RE.fullmatch(digest := str(entry.get("digest")))
            }
            self._under[prefix] = found
        return found

    @functools.cached_property
    def referrers(self) -> dict[str, list[tuple[_Descriptor, _ManifestFacts]]]:
        """Per subject digest, each referring manifest once, in index order."""
        found: dict[str, list[tuple[_Descriptor, _ManifestFacts]]] = {}
        seen: set[str] = set()
        for entry in self._descriptors:
            digest = entry.get("digest")
            if not isinstance(digest, str) or digest in seen:
                continue
            facts = self._facts_of(entry)
            if facts is not None and facts.subject is not None:
                seen.add(digest)
                found.setdefault(facts.subject, []).append((entry, facts))
        return found


class _Shared:
    """What every adapter in this process may share about one layout folder.

    A mount or a poller makes one client (so one adapter) per thread. Each used to
    parse ``index.json`` again and read every stored manifest again for the
    referrers table, once per thread and per index version: with 10,000 messages
    listed, the first new message took a thread 3 s to verify. Manifests never
    change under their digest and the parsed index is never mutated, so they are
    shared; each entry is keyed by what makes it valid (the index by the file's
    identity and mtime, facts by digest).

    Attributes:
        facts: manifest facts by digest (pruned to the current index's digests when
            it holds more than twice as many, so deleted junk does not pile up).
        index: the last parsed ``index.json`` and the ``fstat`` key it was read under.
        lookup: the index object and the lookup built for it.
    """

    def __init__(self) -> None:
        self.facts: dict[str, _ManifestFacts] = {}
        self.index: tuple[tuple[int, int, int, int], dict[str, Any]] | None = None
        self.lookup: tuple[object, _IndexLookup] | None = None


_SHARED: dict[str, _Shared] = {}
_SHARED_LOCK = threading.Lock()
#: Facts kept beyond those of the current index before they are pruned.
_SPARE_FACTS = 1024


def _shared_state(root: Path) -> _Shared:
    """The state shared by every adapter of the layout at ``root`` in this process."""
    key = os.path.abspath(root)
    with _SHARED_LOCK:
        state = _SHARED.get(key)
        if state is None:
            state = _SHARED[key] = _Shared()
        return state


class _Layout:
    """The on-disk OCI image layout: content-addressed blobs plus ``index.json``.

    Readers of ``index.json`` take no lock; the parsed index is cached and re-read only
    when the file on disk was replaced. The cached object is shared and never mutated.
    """

    def __init__(self, root: Path, *, durable_blobs: bool, shared: _Shared | None = None) -> None:
        self.root = root
        self._shared = shared or _Shared()
        self.durable_blobs = durable_blobs
        self.blob_dir = root / "blobs" / "sha256"
        self.staging_dir = root / ".uploads"
        self._index_path = root / "index.json"
        self._file_lock = filelock.FileLock(root / "index.json.lock", mode=_PRIVATE_FILE)
        self._mutex = threading.Lock()
        self._ready = False

    def ensure(self) -> None:
        """Create the layout skeleton on first use, tolerating other processes doing so too."""
        if self._ready:
            return
        with self._mutex:
            if self._ready:
                return
            existed = self.root.exists()
            _make_private_dirs(self.blob_dir)
            _make_private_dirs(self.staging_dir)
            if existed:
                _warn_if_open_to_others(self.root)
            with self._file_lock:
                marker = self.root / "oci-layout"
                if not marker.exists():
                    self._replace(marker, b'{"imageLayoutVersion":"1.0.0"}')
                if not self._index_path.exists():
                    self._replace(self._index_path, encode_json(_EMPTY_INDEX))
            self._ready = True

    def blob_path(self, digest: str) -> Path:
        """Where a blob lives; ``digest`` must already be validated."""
        return self.blob_dir / digest.removeprefix("sha256:")

    def has_blob(self, digest: str) -> bool:
        """Whether the blob is stored (as a regular file: anything else is not a blob)."""
        return _file_size(self.blob_path(digest)) is not None

    def open_blob(self, digest: str, what: str = "blob") -> BinaryIO:
        """The stored blob (or manifest), opened for reading; ``FileNotFoundError`` if absent."""
        return os.fdopen(_open_regular(self.blob_path(digest), f"{what} {digest}"), "rb")

    def read_manifest(self, digest: str, limit: int) -> bytes:
        """A stored manifest's bytes; ``FileNotFoundError`` when absent."""
        return _read_regular(self.blob_path(digest), limit, f"manifest {digest}")

    def stage(self) -> Upload:
        """Start a staged file next to the blobs, so committing it is a same-disk rename."""
        path = self.staging_dir / f"{uuid.uuid4().hex}.part"
        return Upload(path, _create_private(path))

    def commit(self, upload: Upload, digest: str, *, durable: bool | None = None) -> None:
        """Verify a staged upload against ``digest`` and rename it into place.

        A blob already stored with the same size is kept and the upload dropped:
        content addressing makes them identical, and renaming over an existing file
        makes ext4 flush the new file's data first (``auto_da_alloc``), which turns
        every repeated upload into a synchronous disk write. Otherwise the rename may
        still replace a blob a racing client just wrote, which is harmless.
        """
        if upload.digest != digest:
            raise ApiError(400, "DIGEST_INVALID", f"upload hashes to {upload.digest}, not {digest}")
        target = self.blob_path(digest)
        if _file_size(target) == upload.offset:
            upload.discard()
            return
        upload.seal(durable=self.durable_blobs if durable is None else durable)
        os.replace(upload.path, target)
        _fsync_dir(self.blob_dir)

    def write_blob(self, digest: str, data: bytes) -> None:
        """Store small, already-hashed content such as a manifest."""
        if self.has_blob(digest):
            return
        upload = self.stage()
        try:
            upload.append([data])
            self.commit(upload, digest, durable=True)
        finally:
            upload.discard()

    def delete_blob(self, digest: str) -> bool:
        """Remove a blob; False when it was not there."""
        try:
            self.blob_path(digest).unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self.blob_dir)
        return True

    def read_index(self) -> dict[str, Any]:
        """The current ``index.json``, parsed; do not mutate the result."""
        fd = _open_regular(self._index_path, "index.json")
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            cached = self._shared.index
            if cached is not None and cached[0] == key:
                return cached[1]
            index = _parse_index(_read_at_most(fd, MAX_INDEX_BYTES, "index.json"))
        finally:
            os.close(fd)
        self._shared.index = (key, index)
        return index

    def descriptors(self) -> list[_Descriptor]:
        """The descriptors in ``index.json``; do not mutate them."""
        manifests: list[_Descriptor] = self.read_index()["manifests"]
        return manifests

    def update_index(self, change: Callable[[list[_Descriptor]], list[_Descriptor] | None]) -> bool:
        """Apply ``change`` to the descriptor list under the lock; False if it changed nothing.

        ``change`` gets a fresh copy read under the lock and returns the new list, or None
        when there is nothing to do.
        """
        with self._mutex, self._file_lock:
            # read_index() re-parses only a file it has not seen: under the lock no
            # other writer can replace it, and the one we write is cached below.
            index = self.read_index()
            manifests = change(list(index["manifests"]))
            if manifests is None:
                return False
            updated = {**index, "manifests": manifests}
            key = self._replace(self._index_path, encode_json(updated))
            self._shared.index = (key, updated)
            return True

    def _replace(self, path: Path, data: bytes) -> tuple[int, int, int, int]:
        """Write ``data`` to ``path`` durably by a rename; the new file's cache key."""
        staged = self.staging_dir / f"{uuid.uuid4().hex}.tmp"
        try:
            with _create_private(staged) as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
                st = os.fstat(file.fileno())  # the inode the rename puts at ``path``
            os.replace(staged, path)
        finally:
            staged.unlink(missing_ok=True)
        _fsync_dir(path.parent)
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class EmbeddedRegistryAdapter(ApiServer, BaseAdapter):
    """A ``requests`` transport that is an OCI registry over one image layout directory.

    It serves the subset of the OCI distribution API 1.1 the registry client uses: blob
    uploads (monolithic, chunked, cross-repository mount), blob and manifest reads with
    ``HEAD``/``Range``, tags with ``Link`` pagination, the referrers API, and deletes.
    Tags are ``org.opencontainers.image.ref.name`` annotations in ``index.json``, so
    ``skopeo copy oci:<dir>:<tag>`` reads what was pushed.

    Mount it with ``session.mount(EMBEDDED_BASE_URL + "/", adapter)``. The layout is
    created on first use. ``close()`` (called by ``Session.close()``) cancels open uploads.
    """

    def __init__(
        self,
        layout_dir: Path,
        *,
        max_manifest_bytes: int = MAX_MANIFEST_BYTES,
        durable_blobs: bool | None = None,
    ) -> None:
        super().__init__()
        self.layout_dir = Path(layout_dir)
        self.max_manifest_bytes = max_manifest_bytes
        if durable_blobs is None:
            durable_blobs = os.environ.get(DURABLE_BLOBS_ENV, "") not in ("", "0")
        self._shared = _shared_state(self.layout_dir)
        self._layout = _Layout(self.layout_dir, durable_blobs=durable_blobs, shared=self._shared)
        self._uploads = Uploads()
        self._facts = self._shared.facts
        self._table: Routes = (
            *self._routes(),
            (re.compile(r"/v2/(?P<name>.+)/referrers/(?P<arg>[^/]+)"), {"GET": self._referrers}),
        )

    def _prepare(self) -> None:
        self._layout.ensure()

    def _failure_reply(self, exc: Exception) -> Reply:
        if isinstance(exc, OSError):
            return error_reply(ApiError(500, "UNKNOWN", f"layout failure: {exc}"))
        raise exc

    def close(self) -> None:
        """Cancel open upload sessions and delete their staged files."""
        self._uploads.end_all()

    def tag_digests(self, prefix: str) -> dict[str, str] | None:
        """Every tag starting with ``prefix``, with the manifest digest it names.

        One read of ``index.json`` (cached until the file is replaced), where the
        tags API plus a manifest request per tag would cost a round trip through
        ``requests`` each: listing an inbox of 10,000 messages asks this once per
        poll. The digest is what a ``GET`` of the tag would serve.
        """
        try:
            self._layout.ensure()
            lookup = self._index_lookup()
        except (OSError, ApiError):
            return None  # damage: the ordinary requests report it as a registry would
        return lookup.tags_under(prefix)

    def read_ahead(self) -> None:
        """Build the referrers table now, reading every stored manifest not read yet.

        The first signature check after a start needs it (the referrers API), and
        building it reads every manifest: about 3 s for 20,000 on this machine.
        Done ahead, after the first listing, the first new message is not kept
        waiting for it. Shared by every adapter of this layout in the process.
        """
        with contextlib.suppress(OSError, ApiError):
            self._layout.ensure()
            self._index_lookup().referrers  # noqa: B018 (built and kept for this index)

    def watch(self, on_change: Callable[[], None]) -> IndexWatch:
        """Call ``on_change`` (on a watcher thread) after ``index.json`` is replaced.

        Every push, tag and delete replaces ``index.json`` (see the module notes),
        so this sees each change to what is listed; ``stop()`` the watch when done.
        """
        from dockercomms.core._internal.registry.embedded_watch import IndexWatch

        self._layout.ensure()
        return IndexWatch(self.layout_dir, on_change)

    def _dispatch(self, method: str, request: requests.PreparedRequest) -> Reply:
        reply = self._route(self._table, method, request)
        if reply is None:
            raise ApiError(
                404, "UNSUPPORTED", f"no such endpoint: {unquote(urlsplit(request.url or '').path)}"
            )
        return reply

    def _get_blob(self, call: Call) -> Reply:
        digest = check_digest(call.arg)
        headers = {
            "Docker-Content-Digest": digest,
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }
        try:
            if call.method == "HEAD":
                size = _regular_size(self._layout.blob_path(digest), f"blob {digest}")
                return Reply(200, {**headers, "Content-Length": str(size)})
            file = self._layout.open_blob(digest)  # handed to the response body
        except FileNotFoundError:
            raise ApiError(404, "BLOB_UNKNOWN", f"blob {digest} is not stored") from None
        try:
            return _blob_reply(file, headers, call.headers.get("Range"))
        except BaseException:
            file.close()
            raise

    def _delete_blob(self, call: Call) -> Reply:
        digest = check_digest(call.arg)
        if not self._layout.delete_blob(digest):
            raise ApiError(404, "BLOB_UNKNOWN", f"blob {digest} is not stored")
        return Reply(202, {"Docker-Content-Digest": digest})

    def _start_upload(self, call: Call) -> Reply:
        mounted = call.query.get("mount", "")
        if DIGEST_RE.fullmatch(mounted) and self._layout.has_blob(mounted):
            return blob_created(call.name, mounted)
        if "digest" in call.query and not mounted:
            return self._monolithic_upload(call, check_digest(call.query["digest"]))
        uid = self._uploads.add(self._layout.stage())
        return Reply(202, upload_headers(call.name, uid, 0))

    def _monolithic_upload(self, call: Call, digest: str) -> Reply:
        upload = self._layout.stage()
        try:
            upload.append(body_chunks(call.body))
            self._layout.commit(upload, digest)
        finally:
            upload.discard()
        return blob_created(call.name, digest)

    def _finish_upload(self, call: Call) -> Reply:
        with self._uploads.hold(call.arg) as upload:
            try:
                digest = check_digest(call.query.get("digest", ""))
                upload.append(body_chunks(call.body))
                self._layout.commit(upload, digest)
            finally:
                self._uploads.end(call.arg, upload)
        return blob_created(call.name, digest)

    def _get_manifest(self, call: Call) -> Reply:
        descriptor = self._find_manifest(call.arg)
        digest = descriptor["digest"]
        try:
            file = self._layout.open_blob(digest, "manifest")
        except FileNotFoundError:
            raise unknown_manifest(call.arg) from None
        limit = self.max_manifest_bytes
        with contextlib.ExitStack() as unless_streamed:
            unless_streamed.callback(file.close)
            size = os.fstat(file.fileno()).st_size
            if size > limit:
                # Served as a remote registry would serve it, so that the client's own
                # cap refuses it the same way on every backend; the stream stops at
                # cap + 1 bytes, so no more than that is ever read.
                headers = {
                    "Content-Type": descriptor.get("mediaType") or OCI_MANIFEST,
                    "Docker-Content-Digest": digest,
                    "Content-Length": str(size),
                }
                if call.method == "HEAD":
                    return Reply(200, headers)
                unless_streamed.pop_all()
                return Reply(200, headers, BlobStream(file, limit + 1))
            body = _read_at_most(file.fileno(), limit, f"manifest {digest}")
        media_type = descriptor.get("mediaType") or _declared_media_type(body)
        return Reply(200, {"Content-Type": media_type, "Docker-Content-Digest": digest}, body=body)

    def _index_lookup(self) -> _IndexLookup:
        """The lookup for the current ``index.json`` (rebuilt only when it changed)."""
        index = self._layout.read_index()  # the same object until the file changes
        cached = self._shared.lookup
        if cached is not None and cached[0] is index:
            return cached[1]
        descriptors = index["manifests"]
        if len(self._facts) > 2 * len(descriptors) + _SPARE_FACTS:
            current = {str(entry.get("digest")) for entry in descriptors}
            for digest in [d for d in self._facts if d not in current]:
                self._facts.pop(digest, None)
        lookup = _IndexLookup(descriptors, self._manifest_facts)
        self._shared.lookup = (index, lookup)
        return lookup

    def _find_manifest(self, reference: str) -> _Descriptor:
        lookup = self._index_lookup()
        if ":" in reference:
            found = lookup.by_digest.get(check_digest(reference))
        else:
            found = lookup.by_tag.get(check_tag(reference))
        if found is None or not DIGEST_RE.fullmatch(str(found.get("digest"))):
            raise unknown_manifest(reference)
        return found

    def _put_manifest(self, call: Call) -> Reply:
        body = read_limited(call.body, self.max_manifest_bytes)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        tag = None
        if ":" in call.arg:
            if check_digest(call.arg) != digest:
                raise ApiError(
                    400, "DIGEST_INVALID", f"manifest hashes to {digest}, not {call.arg}"
                )
        else:
            tag = check_tag(call.arg)
        document = _parse_manifest(body)
        media_type = manifest_media_type(call.headers.get("Content-Type"), document)
        self._check_references(document, media_type)
        facts = _facts_of(document, media_type)
        self._layout.write_blob(digest, body)
        self._facts[digest] = facts
        descriptor = _descriptor(media_type, digest, len(body), facts)
        self._layout.update_index(lambda manifests: _place(manifests, descriptor, tag))
        headers = {
            "Location": f"/v2/{call.name}/manifests/{digest}",
            "Docker-Content-Digest": digest,
        }
        if facts.subject is not None:
            headers["OCI-Subject"] = facts.subject
        return Reply(201, headers)

    def _check_references(self, document: dict[str, Any], media_type: str) -> None:
        """Refuse a manifest whose blobs or child manifests are not stored (yet)."""
        digests = referenced_digests(document, media_type)
        missing = [digest for digest in digests if not self._layout.has_blob(digest)]
        if missing:
            raise ApiError(
                400, "MANIFEST_BLOB_UNKNOWN", f"manifest references unknown {missing[0]}"
            )

    def _delete_manifest(self, call: Call) -> Reply:
        if ":" not in call.arg:
            tag = check_tag(call.arg)
            if not self._layout.update_index(lambda manifests: _untag(manifests, tag)):
                raise unknown_manifest(tag)
            return Reply(202)
        digest = check_digest(call.arg)
        if not self._layout.update_index(lambda manifests: _drop_digest(manifests, digest)):
            raise unknown_manifest(digest)
        self._layout.delete_blob(digest)
        return Reply(202)

    def _list_tags(self, call: Call) -> Reply:
        tags = sorted({tag for d in self._layout.descriptors() if (tag := _ref_name(d))})
        return tags_reply(call, tags, zero_is_unlimited=False)

    def _referrers(self, call: Call) -> Reply:
        subject = check_digest(call.arg)
        wanted = call.query.get("artifactType")
        found = [
            _descriptor(str(entry.get("mediaType")), str(entry["digest"]), entry.get("size"), facts)
            for entry, facts in self._index_lookup().referrers.get(subject, [])
            if wanted is None or facts.artifact_type == wanted
        ]
        reply = json_reply(200, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found})
        reply.headers["Content-Type"] = OCI_INDEX
        if wanted is not None:
            reply.headers["OCI-Filters-Applied"] = "artifactType"
        return reply

    def _manifest_facts(self, entry: _Descriptor) -> _ManifestFacts | None:
        """Facts for an index entry, read from its blob once and then cached.

        Entries that are not manifests, or whose blob is gone, damaged or not bounded
        JSON, yield None: one bad file must not break every referrers query.
        """
        digest = str(entry.get("digest"))
        cached = self._facts.get(digest)
        if cached is not None:
            return cached
        media_type = entry.get("mediaType")
        if media_type not in MANIFEST_TYPES or not DIGEST_RE.fullmatch(digest):
            return None
        try:
            body = self._layout.read_manifest(digest, self.max_manifest_bytes)
            facts = _facts_of(_parse_manifest(body), str(media_type))
        except (OSError, ApiError):
            return None
        self._facts[digest] = facts
        return facts


def _blob_reply(file: BinaryIO, headers: dict[str, str], range_header: str | None) -> Reply:
    """A full (200) or partial (206) blob reply streaming from ``file``."""
    size = os.fstat(file.fileno()).st_size
    span = byte_range(range_header, size)
    status, first, length = 200, 0, size
    if span is not None:
        status, first, length = 206, span[0], span[1] - span[0] + 1
        headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{size}"
    headers["Content-Length"] = str(length)
    if length == 0:
        file.close()
        return Reply(status, headers)
    file.seek(first)
    return Reply(status, headers, BlobStream(file, length))


def _file_size(path: Path) -> int | None:
    """Size of the regular file ``path``; None when it is absent or not a regular file."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _regular_size(path: Path, what: str) -> int:
    """Size of ``path``, refused as damage unless it is a regular file."""
    st = path.lstat()
    if not stat.S_ISREG(st.st_mode):
        raise _damaged(what, _kind_of(st.st_mode))
    return st.st_size


def _open_regular(path: Path, what: str) -> int:
    """A read-only descriptor of the regular file ``path``; ``FileNotFoundError`` if absent.

    ``O_NOFOLLOW`` refuses a symlink, ``O_NONBLOCK`` keeps a FIFO from blocking the
    open, and ``fstat`` on the descriptor (not the path, which may be swapped
    meanwhile) refuses whatever is not a regular file before a byte is read.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _damaged(what, "a symbolic link") from None
        if err.errno == errno.ENXIO:
            raise _damaged(what, "a socket or device") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _damaged(what, _kind_of(mode))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_regular(path: Path, limit: int, what: str) -> bytes:
    """The bytes of the regular file ``path``, refused when over ``limit`` bytes."""
    fd = _open_regular(path, what)
    try:
        return _read_at_most(fd, limit, what)
    finally:
        os.close(fd)


def _read_at_most(fd: int, limit: int, what: str) -> bytes:
    """Read a regular file's descriptor whole: size checked first, at most ``limit`` + 1 read.

    The second check catches a file that grew after ``fstat``.
    """
    size = os.fstat(fd).st_size
    if size > limit:
        raise _too_large(what, size, limit)
    pieces: list[bytes] = []
    total = 0
    while piece := os.read(fd, min(COPY_CHUNK, limit + 1 - total)):
        pieces.append(piece)
        total += len(piece)
        if total > limit:
            raise _too_large(what, total, limit)
    return b"".join(pieces)


def _kind_of(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "of an unknown type"


def _damaged(what: str, kind: str) -> ApiError:
    return ApiError(
        _DAMAGED,
        "UNKNOWN",
        f"the layout is damaged: {what} is {kind}, not a regular file (restore or remove it)",
    )


def _too_large(what: str, size: int, limit: int) -> ApiError:
    return ApiError(
        _DAMAGED,
        "SIZE_INVALID",
        f"the layout is damaged: {what} is {size} bytes, over the {limit}-byte limit",
    )


def _create_private(path: Path) -> BinaryIO:
    """Create ``path`` exclusively, mode 0600 whatever the umask, for writing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _PRIVATE_FILE)
    try:
        os.fchmod(fd, _PRIVATE_FILE)  # a umask can only take bits away; 0600 is the floor too
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def _make_private_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each 0700 whatever the umask.

    Directories that already exist (or that another process creates meanwhile) are
    left as they are.
    """
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=_PRIVATE_DIR)
        except FileExistsError:
            continue
        directory.chmod(_PRIVATE_DIR)


_warned_open: set[Path] = set()
_warned_lock = threading.Lock()


def _warn_if_open_to_others(root: Path) -> None:
    """Warn, once per process and layout, when group or others can get at the layout."""
    checked = (root, root / "blobs", root / "blobs" / "sha256", root / "index.json")
    modes = {}
    for path in checked:
        try:
            modes[path] = path.stat().st_mode & 0o777
        except FileNotFoundError:
            continue
    opened = {path: mode for path, mode in modes.items() if mode & _OPEN_TO_OTHERS}
    if not opened:
        return
    with _warned_lock:
        if root in _warned_open:
            return
        _warned_open.add(root)
    where = ", ".join(f"{path.relative_to(root)} {mode:04o}" for path, mode in opened.items())
    log.warning(
        "the embedded registry %s is open to other users on this machine (%s), who can "
        "read every message in it; to make it private run: chmod -R go-rwx %s",
        root,
        where,
        shlex.quote(str(root)),
    )


def _parse_manifest(body: bytes) -> dict[str, Any]:
    try:
        document = parse_json(body, "manifest", max_bytes=len(body))
    except DockerCommsError as err:
        raise ApiError(400, "MANIFEST_INVALID", str(err)) from None
    if not isinstance(document, dict) or document.get("schemaVersion") != 2:
        raise ApiError(400, "MANIFEST_INVALID", "manifest must have schemaVersion 2")
    return document


def _declared_media_type(body: bytes) -> str:
    try:
        document = parse_json(body, "manifest", max_bytes=len(body))
    except DockerCommsError:
        document = None
    declared = document.get("mediaType") if isinstance(document, dict) else None
    return declared if isinstance(declared, str) else OCI_MANIFEST


def _facts_of(document: Mapping[str, Any], media_type: str) -> _ManifestFacts:
    artifact_type = document.get("artifactType")
    if not isinstance(artifact_type, str) or not artifact_type:
        artifact_type = None
        config = document.get("config")
        if media_type in IMAGE_TYPES and isinstance(config, dict):
            config_type = config.get("mediaType")
            if isinstance(config_type, str) and config_type and config_type != _OCI_EMPTY:
                artifact_type = config_type
    annotations = document.get("annotations")
    subject = document.get("subject")
    subject_digest = subject.get("digest") if isinstance(subject, dict) else None
    return _ManifestFacts(
        artifact_type=artifact_type,
        annotations=(
            {k: v for k, v in annotations.items() if isinstance(v, str)}
            if isinstance(annotations, dict)
            else {}
        ),
        subject=subject_digest if isinstance(subject_digest, str) else None,
    )


def _descriptor(media_type: str, digest: str, size: object, facts: _ManifestFacts) -> _Descriptor:
    descriptor: _Descriptor = {"mediaType": media_type, "digest": digest, "size": size}
    if facts.artifact_type is not None:
        descriptor["artifactType"] = facts.artifact_type
    if facts.annotations:
        descriptor["annotations"] = dict(facts.annotations)
    return descriptor


def _ref_name(descriptor: _Descriptor) -> str | None:
    annotations = descriptor.get("annotations")
    name = annotations.get(_REF_NAME) if isinstance(annotations, dict) else None
    return name if isinstance(name, str) else None


def _tagged(descriptor: _Descriptor, tag: str) -> _Descriptor:
    return {**descriptor, "annotations": {**descriptor.get("annotations", {}), _REF_NAME: tag}}


def _untagged(descriptor: _Descriptor) -> _Descriptor:
    result = {key: value for key, value in descriptor.items() if key != "annotations"}
    annotations = descriptor.get("annotations")
    if isinstance(annotations, dict):
        rest = {key: value for key, value in annotations.items() if key != _REF_NAME}
        if rest:
            result["annotations"] = rest
    return result


def _place(
    manifests: list[_Descriptor], descriptor: _Descriptor, tag: str | None
) -> list[_Descriptor] | None:
    """Point ``tag`` at ``descriptor`` (or just record it, untagged); None if already so.

    A digest has either one descriptor per tag or a single untagged one, never both and
    never duplicates. A manifest the tag moves away from keeps an untagged descriptor
    when that was its last tag.
    """
    digest = descriptor["digest"]
    if tag is None:
        if any(entry.get("digest") == digest for entry in manifests):
            return None
        return [*manifests, _untagged(descriptor)]
    wanted = _tagged(descriptor, tag)
    if wanted in manifests:
        return None
    moved = [entry for entry in manifests if _ref_name(entry) == tag]
    kept = [
        entry
        for entry in manifests
        if _ref_name(entry) != tag
        and not (_ref_name(entry) is None and entry.get("digest") == digest)
    ]
    return _keep_reachable([*kept, wanted], moved)


def _untag(manifests: list[_Descriptor], tag: str) -> list[_Descriptor] | None:
    """Drop the descriptor carrying ``tag``; None if no descriptor carries it."""
    dropped = [entry for entry in manifests if _ref_name(entry) == tag]
    if not dropped:
        return None
    return _keep_reachable([e for e in manifests if _ref_name(e) != tag], dropped)


def _drop_digest(manifests: list[_Descriptor], digest: str) -> list[_Descriptor] | None:
    """Drop every descriptor of ``digest``; None if there was none."""
    kept = [entry for entry in manifests if entry.get("digest") != digest]
    return None if len(kept) == len(manifests) else kept


def _keep_reachable(manifests: list[_Descriptor], dropped: list[_Descriptor]) -> list[_Descriptor]:
    """Give each manifest that lost its last descriptor an untagged one."""
    result = list(manifests)
    for entry in dropped:
        if not any(other.get("digest") == entry.get("digest") for other in result):
            result.append(_untagged(entry))
    return result


def _parse_index(data: bytes) -> dict[str, Any]:
    try:
        index = parse_json(data, "index.json", max_bytes=len(data))
    except DockerCommsError:
        index = None
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise ApiError(_DAMAGED, "UNKNOWN", "the layout is damaged: index.json is corrupt")
    index["manifests"] = [entry for entry in index["manifests"] if isinstance(entry, dict)]
    return index


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable; a crash could otherwise forget it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
