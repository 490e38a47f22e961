"""A registry in process over distribution's own storage layout (SPEC 10): no server.

Mounted on the registry client's ``requests`` session like the embedded OCI-layout
store, it answers the distribution API subset the client uses by reading and writing
the files (or objects) a distribution registry keeps, so a ``docker-registry``
serving the same storage and this tool see one repository.

Caveats first:

* It behaves like distribution 2.8 wherever a client could tell the difference, so a
  message pushed through either side is found the same way by both: no referrers API
  (a plain ``404 page not found``, so clients use the ``sha256-<hex>`` tag fallback),
  no ``OCI-Subject`` header, ``DELETE`` by tag refused (400 ``DIGEST_INVALID``),
  deletes refused (405 ``UNSUPPORTED``) unless ``storage.delete.enabled``, writes
  refused (405) under ``storage.maintenance.readonly``. One addition: the tag list is
  sorted and honours ``n``/``last`` with a ``Link`` header (2.8 ignores them), so a
  large repository need not fit one page.
* Tags are the directory names under ``_manifests/tags`` (as distribution lists them);
  a tag directory another writer is still filling may be listed before it resolves.
  Our own writes put ``current/link`` first, so our tags resolve as soon as listed.
* Deleting a manifest does what distribution does: its revision link goes, then every
  tag whose ``current`` link names it (found through the tags' ``index`` links, then
  confirmed). Deleting a blob removes this repository's link only. Bytes stay until
  distribution's offline ``docker-registry garbage-collect`` (run while no one writes,
  registry in read-only mode) sweeps what no manifest references.
* Upload sessions live in one adapter's memory, as in the embedded store.
* The storage is untrusted (anyone who can write it may have): a link file is read up
  to 256 bytes and counts only if it names exactly the digest asked for; a manifest is
  read up to ``max_manifest_bytes`` + 1 (a larger one is served cut there, without a
  digest header, so the client's own cap rejects it); listed tag names must match the
  tag grammar; no path is ever built from what storage says.
* Several writers (our processes, a registry on the same storage) are safe: blobs are
  content-addressed and moved into place whole, every link is written whole (temp +
  rename on a disk, one ``PUT`` on S3), each tag is its own directory (no shared index
  to lose updates in), and last writer wins on a moved tag, as in distribution.
* Blob bytes already stored at their address with the right size are not written
  again (nor re-hashed): someone with write access could have put other bytes of that
  size there; every reader's digest check catches it, but the sender will not notice.
* Storage failures: refused credentials or permissions raise :class:`AuthError` (exit
  3) and an unusable configuration (no such bucket) :class:`ConfigError` (exit 1)
  straight out of the transport. An unreachable store raises
  :class:`RegistryUnavailableError` once the driver's own retry gave up (OpenDAL's
  ``RetryLayer``; not a connection error, which the client would retry for its whole
  budget again), so only the client's re-reads of broken reads repeat it: a dead S3
  endpoint fails a listing in about 7 s. Other failures are HTTP 500, as a registry
  sends.
"""

from __future__ import annotations

import threading
import time
from typing import Any, BinaryIO, Final, cast

import requests
from requests.adapters import BaseAdapter

from dockercomms.core import protocol
from dockercomms.core._internal.registry.distribution_api import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_BYTES,
    ApiError,
    ApiServer,
    BlobStream,
    Call,
    Reply,
    Upload,
    Uploads,
    blob_created,
    body_chunks,
    byte_range,
    check_digest,
    check_tag,
    error_reply,
    manifest_media_type,
    read_limited,
    referenced_digests,
    tags_reply,
    unknown_manifest,
    upload_headers,
)
from dockercomms.core._internal.registry.storage.drivers import StorageDriver, StorageFailure
from dockercomms.core._internal.registry.storage.layout import (
    LINK_LIMIT,
    RepositoryLayout,
    blob_data_path,
    is_tag,
    link_bytes,
    parse_link,
)
from dockercomms.core.errors import (
    AuthError,
    ConfigError,
    DockerCommsError,
    RegistryUnavailableError,
)
from dockercomms.core.untrusted import parse_json_object

__all__ = ["STORAGE_BASE_URL", "StorageRegistryAdapter"]

STORAGE_BASE_URL: Final = "http://dockercomms-storage.invalid"
"""Where to mount the adapter; ``.invalid`` can never resolve to a real host."""

TAG_PAGE_REUSE_SECONDS: Final = 30.0
"""A tag listing is reused for the next pages (``last=``) asked within this long."""


class _StorageStream(BlobStream):
    """A blob body read from storage; a failure mid-way is a broken connection."""

    def read(self, amt: int | None = None, decode_content: bool | None = None) -> bytes:
        """Up to ``amt`` bytes; storage errors become ``requests.ConnectionError``."""
        try:
            return super().read(amt, decode_content)
        except (OSError, StorageFailure) as exc:
            self.close()
            raise requests.ConnectionError(f"storage read broke off: {exc}") from exc


class StorageRegistryAdapter(ApiServer, BaseAdapter):
    """A ``requests`` transport that is distribution 2.8 over one storage driver.

    Mount it with ``session.mount(STORAGE_BASE_URL + "/", adapter)``. Thread-safe:
    the sender uploads chunks from several threads through one adapter.
    ``close()`` (called by ``Session.close()``) cancels open uploads and removes the
    driver's scratch files.
    """

    def __init__(
        self,
        driver: StorageDriver,
        *,
        delete_enabled: bool = False,
        read_only: bool = False,
        max_manifest_bytes: int = MAX_MANIFEST_BYTES,
    ) -> None:
        super().__init__()
        self.driver = driver
        self.delete_enabled = delete_enabled
        self.read_only = read_only
        self.max_manifest_bytes = max_manifest_bytes
        self._uploads = Uploads()
        self._checked = False
        self._check_lock = threading.Lock()
        self._tag_pages: dict[str, tuple[float, list[str]]] = {}
        self._tag_lock = threading.Lock()
        self._table = self._routes()

    def _prepare(self) -> None:
        self._check_once()

    def _failure_reply(self, exc: Exception) -> Reply:
        if not isinstance(exc, StorageFailure):
            return super()._failure_reply(exc)
        if exc.kind == "auth":
            raise AuthError(str(exc)) from exc
        if exc.kind == "config":
            raise ConfigError(str(exc)) from exc
        if exc.kind == "unreachable":
            # The driver already retried (OpenDAL's RetryLayer); not a connection
            # error, which the client would retry again for its whole budget.
            raise RegistryUnavailableError(str(exc)) from exc
        return error_reply(ApiError(500, "UNKNOWN", str(exc)))

    def close(self) -> None:
        """Cancel open uploads and remove the driver's scratch files."""
        self._uploads.end_all()
        self.driver.close()

    def _check_once(self) -> None:
        """The driver's first-use check (bucket, credentials), until it passes once."""
        if self._checked:
            return
        with self._check_lock:
            if not self._checked:
                self.driver.check()
                self._checked = True

    def _dispatch(self, method: str, request: requests.PreparedRequest) -> Reply:
        refused = "storage is read-only (storage.maintenance.readonly)" if self.read_only else None
        reply = self._route(self._table, method, request, refuse_writes=refused)
        if reply is None:
            # What distribution 2.8 answers for any other path, the referrers API included.
            return Reply(
                404, {"Content-Type": "text/plain; charset=utf-8"}, b"404 page not found\n"
            )
        return reply

    # --- helpers -----------------------------------------------------------------------

    def _linked(self, link: str, digest: str) -> bool:
        """Whether the link file at ``link`` names exactly ``digest``."""
        return parse_link(self.driver.read(link, LINK_LIMIT)) == digest

    def _blob_size(self, layout: RepositoryLayout, digest: str) -> int | None:
        """Size of a blob linked into this repository; None when it is not."""
        if not self._linked(layout.layer_link(digest), digest):
            return None
        return self.driver.size(blob_data_path(digest))

    def _manifest_stored(self, layout: RepositoryLayout, digest: str) -> bool:
        return self._linked(layout.revision_link(digest), digest) and (
            self.driver.size(blob_data_path(digest)) is not None
        )

    def _put_link(self, layout: RepositoryLayout, link: str, digest: str) -> None:
        self.driver.put(link, link_bytes(digest), layout.uploads_dir)

    def _require_delete(self) -> None:
        if not self.delete_enabled:
            raise ApiError(
                405, "UNSUPPORTED", "deletes are disabled (storage.delete.enabled is not true)"
            )

    # --- routes ------------------------------------------------------------------------

    def _get_blob(self, call: Call) -> Reply:
        digest = check_digest(call.arg)
        size = self._blob_size(RepositoryLayout(call.name), digest)
        if size is None:
            raise ApiError(404, "BLOB_UNKNOWN", f"blob {digest} is not in {call.name}")
        headers = {
            "Docker-Content-Digest": digest,
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }
        if call.method == "HEAD":
            return Reply(200, {**headers, "Content-Length": str(size)})
        span = byte_range(call.headers.get("Range"), size)
        status, first, length = 200, 0, size
        if span is not None:
            status, first, length = 206, span[0], span[1] - span[0] + 1
            headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{size}"
        headers["Content-Length"] = str(length)
        if length == 0:
            return Reply(status, headers)
        try:
            reader = self.driver.open(blob_data_path(digest), first, length)
        except FileNotFoundError:
            raise ApiError(404, "BLOB_UNKNOWN", f"blob {digest} is gone") from None
        return Reply(status, headers, _StorageStream(cast(BinaryIO, reader), length))

    def _delete_blob(self, call: Call) -> Reply:
        self._require_delete()
        digest = check_digest(call.arg)
        layout = RepositoryLayout(call.name)
        if not self._linked(layout.layer_link(digest), digest):
            raise ApiError(404, "BLOB_UNKNOWN", f"blob {digest} is not in {call.name}")
        self.driver.delete(layout.layer_link(digest))
        return Reply(202, {"Docker-Content-Digest": digest, "Content-Length": "0"})

    def _start_upload(self, call: Call) -> Reply:
        layout = RepositoryLayout(call.name)
        mounted = call.query.get("mount", "")
        if mounted and self._mount(layout, mounted, call.query.get("from", "")):
            return blob_created(call.name, mounted)
        if "digest" in call.query and not mounted:
            return self._monolithic_upload(call, layout, check_digest(call.query["digest"]))
        uid = self._uploads.add(self.driver.stage(layout.uploads_dir))
        return Reply(202, upload_headers(call.name, uid, 0))

    def _mount(self, layout: RepositoryLayout, digest: str, source: str) -> bool:
        """Link a blob another repository has (distribution's cross-repository mount)."""
        if protocol.DIGEST_PATTERN.fullmatch(digest) is None:
            return False
        try:
            origin = RepositoryLayout(source)
        except ValueError:
            return False
        if self._blob_size(origin, digest) is None:
            return False
        self._put_link(layout, layout.layer_link(digest), digest)
        return True

    def _monolithic_upload(self, call: Call, layout: RepositoryLayout, digest: str) -> Reply:
        upload = self.driver.stage(layout.uploads_dir)
        try:
            upload.append(body_chunks(call.body))
            self._commit(layout, upload, digest)
        finally:
            upload.discard()
        return blob_created(call.name, digest)

    def _commit(self, layout: RepositoryLayout, upload: Upload, digest: str) -> None:
        """Check the digest, move the bytes into place, then link them into the repository.

        Bytes already stored at that address with the same size are kept (content
        addressing); the link comes last, so a linked blob always has its bytes.
        """
        if upload.digest != digest:
            raise ApiError(400, "DIGEST_INVALID", f"upload hashes to {upload.digest}, not {digest}")
        path = blob_data_path(digest)
        if self.driver.size(path) != upload.offset:
            self.driver.commit(upload, path)
        self._put_link(layout, layout.layer_link(digest), digest)

    def _finish_upload(self, call: Call) -> Reply:
        layout = RepositoryLayout(call.name)
        with self._uploads.hold(call.arg) as upload:
            try:
                digest = check_digest(call.query.get("digest", ""))
                upload.append(body_chunks(call.body))
                self._commit(layout, upload, digest)
            finally:
                self._uploads.end(call.arg, upload)
        return blob_created(call.name, digest)

    def _resolve(self, layout: RepositoryLayout, reference: str) -> str:
        """The digest a tag or digest reference names, if it is a manifest here."""
        if ":" in reference:
            digest: str | None = check_digest(reference)
        else:
            digest = parse_link(
                self.driver.read(layout.tag_current_link(check_tag(reference)), LINK_LIMIT)
            )
        if digest is None or not self._linked(layout.revision_link(digest), digest):
            raise unknown_manifest(reference)
        return digest

    def _get_manifest(self, call: Call) -> Reply:
        layout = RepositoryLayout(call.name)
        digest = self._resolve(layout, call.arg)
        raw = self.driver.read(blob_data_path(digest), self.max_manifest_bytes + 1)
        if raw is None:
            raise unknown_manifest(call.arg)
        headers = {"Content-Type": _served_media_type(raw)}
        if len(raw) <= self.max_manifest_bytes:
            headers["Docker-Content-Digest"] = digest
        return Reply(200, headers, raw)

    def _put_manifest(self, call: Call) -> Reply:
        layout = RepositoryLayout(call.name)
        body = read_limited(call.body, self.max_manifest_bytes)
        digest = protocol.sha256_digest(body)
        tag = None
        if ":" in call.arg:
            if check_digest(call.arg) != digest:
                raise ApiError(
                    400, "DIGEST_INVALID", f"manifest hashes to {digest}, not {call.arg}"
                )
        else:
            tag = check_tag(call.arg)
        document = _parse_manifest(body, self.max_manifest_bytes)
        media_type = manifest_media_type(call.headers.get("Content-Type"), document)
        self._check_references(layout, document, media_type)
        path = blob_data_path(digest)
        if self.driver.size(path) != len(body):
            self.driver.put(path, body, layout.uploads_dir)
        self._put_link(layout, layout.revision_link(digest), digest)
        if tag is not None:
            # current first: the tag's directory appears with a link that resolves.
            self._put_link(layout, layout.tag_current_link(tag), digest)
            self._put_link(layout, layout.tag_index_link(tag, digest), digest)
        return Reply(
            201,
            {
                "Location": f"/v2/{call.name}/manifests/{digest}",
                "Docker-Content-Digest": digest,
                "Content-Length": "0",
            },
        )

    def _check_references(
        self, layout: RepositoryLayout, document: dict[str, Any], media_type: str
    ) -> None:
        """Refuse a manifest whose blobs (or an index's manifests) are not in this repository."""
        index = media_type in INDEX_TYPES
        for digest in referenced_digests(document, media_type):
            if index:
                present = self._manifest_stored(layout, digest)
            else:
                present = self._blob_size(layout, digest) is not None
            if not present:
                raise ApiError(
                    400, "MANIFEST_BLOB_UNKNOWN", f"manifest references unknown {digest}"
                )

    def _delete_manifest(self, call: Call) -> Reply:
        self._require_delete()
        if ":" not in call.arg:
            check_tag(call.arg)
            raise ApiError(
                400, "DIGEST_INVALID", "a manifest can only be deleted by digest (distribution)"
            )
        digest = check_digest(call.arg)
        layout = RepositoryLayout(call.name)
        if not self._linked(layout.revision_link(digest), digest):
            raise unknown_manifest(digest)
        self.driver.delete(layout.revision_link(digest))
        for tag in self._tags_naming(layout, digest):
            self.driver.delete_tree(layout.tag_dir(tag))
        return Reply(202, {"Content-Length": "0"})

    def _tags_naming(self, layout: RepositoryLayout, digest: str) -> list[str]:
        """Tags whose ``current`` link names ``digest`` (candidates from their index links)."""
        if self.driver.cheap_stat:
            names = self.driver.list_names(layout.tags_dir) or []
            candidates = [
                tag
                for tag in names
                if is_tag(tag) and self.driver.size(layout.tag_index_link(tag, digest)) is not None
            ]
        else:
            suffix = "/index/sha256/" + digest.removeprefix("sha256:") + "/link"
            found = (
                key[: -len(suffix)]
                for key in self.driver.walk(layout.tags_dir)
                if key.endswith(suffix)
            )
            candidates = [tag for tag in found if is_tag(tag)]
        return [
            tag
            for tag in candidates
            if parse_link(self.driver.read(layout.tag_current_link(tag), LINK_LIMIT)) == digest
        ]

    def _list_tags(self, call: Call) -> Reply:
        tags = self._tag_listing(call.name, reuse=bool(call.query.get("last", "")))
        return tags_reply(call, tags, zero_is_unlimited=True)

    def _tag_listing(self, name: str, *, reuse: bool) -> list[str]:
        """The sorted tags of ``name``; a recent listing serves the following pages."""
        now = time.monotonic()
        with self._tag_lock:
            cached = self._tag_pages.get(name)
        if reuse and cached is not None and now - cached[0] < TAG_PAGE_REUSE_SECONDS:
            return cached[1]
        names = self.driver.list_names(RepositoryLayout(name).tags_dir)
        if names is None:
            raise ApiError(404, "NAME_UNKNOWN", f"repository {name} is not known")
        tags = sorted(tag for tag in names if is_tag(tag))
        with self._tag_lock:
            self._tag_pages[name] = (now, tags)
        return tags


def _parse_manifest(body: bytes, limit: int) -> dict[str, Any]:
    """A pushed manifest as JSON, with the depth bound every untrusted document gets."""
    try:
        document = parse_json_object(body, "manifest", max_bytes=limit)
    except DockerCommsError as exc:
        raise ApiError(400, "MANIFEST_INVALID", str(exc)) from None
    if document.get("schemaVersion") != 2:
        raise ApiError(400, "MANIFEST_INVALID", "manifest must have schemaVersion 2")
    return document


def _served_media_type(raw: bytes) -> str:
    """The ``Content-Type`` distribution serves a stored manifest with.

    Its own ``mediaType`` when that is a manifest type; without one, an OCI index if it
    has ``manifests``, else an OCI image manifest. Anything else (not JSON, a strange
    ``mediaType``) is served as an image manifest, for the client to reject.
    """
    try:
        document = parse_json_object(raw, "manifest", max_bytes=len(raw))
    except DockerCommsError:
        return protocol.OCI_MANIFEST
    declared = document.get("mediaType")
    if isinstance(declared, str) and declared in MANIFEST_TYPES:
        return declared
    if declared is None and isinstance(document.get("manifests"), list):
        return protocol.OCI_INDEX
    return protocol.OCI_MANIFEST
