"""What an in-process registry needs to answer the distribution HTTP API; shared by both.

The embedded OCI-layout store (:mod:`.embedded`) and the storage adapter
(:mod:`.storage.adapter`) serve the same API to the registry client through a
``requests`` transport: the replies and their errors, byte ranges, upload
sessions, bodies read under a cap, and the name, tag, digest and media-type
checks live here once.
"""

from __future__ import annotations

import hashlib
import http
import io
import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final
from urllib.parse import parse_qs, quote, unquote, urlsplit

import requests
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers

from dockercomms.core._internal.registry.body import HashingBody

MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024
"""Largest manifest accepted by default, the limit common to public registries."""

OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_TYPES: Final = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES: Final = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES: Final = IMAGE_TYPES | INDEX_TYPES
COPY_CHUNK: Final = 1024 * 1024
STREAM_CHUNK: Final = 64 * 1024
DIGEST_RE: Final = re.compile(r"sha256:[a-f0-9]{64}")
TAG_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
NAME_COMPONENT: Final = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE: Final = re.compile(rf"{NAME_COMPONENT}(?:/{NAME_COMPONENT})*")
RANGE_RE: Final = re.compile(r"bytes=(\d*)-(\d*)")
CONTENT_RANGE_RE: Final = re.compile(r"(?:bytes[ =])?(\d+)-(\d+)(?:/\d+|/\*)?")


class ApiError(Exception):
    """A distribution-spec error; the adapter turns it into an ``{"errors": [...]}`` reply."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


@dataclass
class Reply:
    """What a route handler answers, before it becomes a ``requests.Response``."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | BlobStream = b""


@dataclass(frozen=True)
class Call:
    """One request, decoded into what every route handler needs."""

    method: str
    name: str
    arg: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: object


class BlobStream:
    """A response body read lazily from a blob file, shaped like urllib3's response.

    requests closes ``raw`` only when the body was not consumed, so the file is also
    closed as soon as its last byte has been read; an early ``Response.close()`` closes it
    through ``close``/``release_conn``.
    """

    def __init__(self, file: BinaryIO, length: int) -> None:
        self._file = file
        self._left = length

    @property
    def closed(self) -> bool:
        """True once the file is closed: the body is exhausted or was abandoned."""
        return self._file.closed

    def read(self, amt: int | None = None, decode_content: bool | None = None) -> bytes:
        """Return up to ``amt`` bytes (all that is left when ``amt`` is None)."""
        if self._file.closed:
            return b""
        wanted = self._left if amt is None or amt < 0 else min(amt, self._left)
        data = self._file.read(wanted)
        self._left -= len(data)
        if not data or self._left <= 0:
            self.close()
        return data

    def stream(
        self, amt: int | None = STREAM_CHUNK, decode_content: bool | None = None
    ) -> Iterator[bytes]:
        """Yield the body in pieces; what ``Response.iter_content`` calls."""
        while chunk := self.read(amt or STREAM_CHUNK):
            yield chunk

    def close(self) -> None:
        """Release the file; safe to call more than once."""
        self._file.close()

    def release_conn(self) -> None:
        """What requests calls on ``Response.close()`` even after the body was consumed."""
        self.close()


class Upload:
    """One blob upload in progress: the staged bytes so far and their running hash.

    The hash is updated as bytes arrive, so finishing costs no re-read of a possibly huge
    file. ``lock`` stops two requests for the same session from interleaving.
    """

    def __init__(self, path: Path, file: BinaryIO) -> None:
        self.path = path
        self.file = file
        self.hasher = hashlib.sha256()
        self.offset = 0
        self.lock = threading.Lock()

    @property
    def closed(self) -> bool:
        """True once the upload was committed or discarded."""
        return self.file.closed

    @property
    def digest(self) -> str:
        """Digest of everything appended so far."""
        return "sha256:" + self.hasher.hexdigest()

    def append(self, chunks: Iterable[bytes], expected_length: int | None = None) -> None:
        """Append one request body; if it fails, rewind so the client can retry the chunk.

        When the body is an in-process :class:`HashingBody` and the upload was empty,
        its hash covers exactly what is staged: it is adopted instead of hashing
        every byte a second time.
        """
        start, saved = self.offset, self.hasher.copy()
        adopt = chunks if isinstance(chunks, HashingBody) and start == 0 else None
        try:
            for piece in chunks:
                self.file.write(piece)
                if adopt is None:
                    self.hasher.update(piece)
                self.offset += len(piece)
            if adopt is not None:
                if not adopt.complete or adopt.size != self.offset:
                    raise ApiError(400, "BLOB_UPLOAD_INVALID", "upload body ended early")
                self.hasher = adopt.hasher()
            received = self.offset - start
            if expected_length is not None and received != expected_length:
                raise ApiError(
                    400,
                    "SIZE_INVALID",
                    f"Content-Range announced {expected_length} bytes, body had {received}",
                )
        except BaseException:
            self.file.seek(start)
            self.file.truncate()
            self.offset, self.hasher = start, saved
            raise

    def seal(self, *, durable: bool) -> None:
        """Close the staged file, first forcing its bytes to disk when ``durable``."""
        self.file.flush()
        if durable:
            os.fsync(self.file.fileno())
        self.file.close()

    def discard(self) -> None:
        """Close and delete the staged file (a no-op for the file once it was renamed)."""
        self.file.close()
        self.path.unlink(missing_ok=True)


class Uploads:
    """The open upload sessions of one adapter, by UUID."""

    def __init__(self) -> None:
        self._open: dict[str, Upload] = {}
        self._lock = threading.Lock()

    def add(self, upload: Upload) -> str:
        """Register ``upload`` and return the UUID that names it in URLs."""
        uid = str(uuid.uuid4())
        with self._lock:
            self._open[uid] = upload
        return uid

    @contextmanager
    def hold(self, uid: str) -> Iterator[Upload]:
        """Give exclusive use of a live session, or fail with ``BLOB_UPLOAD_UNKNOWN``."""
        with self._lock:
            upload = self._open.get(uid)
        if upload is None:
            raise unknown_upload(uid)
        with upload.lock:
            if upload.closed:
                raise unknown_upload(uid)
            yield upload

    def end(self, uid: str, upload: Upload) -> None:
        """Forget a session and delete whatever it still has staged."""
        with self._lock:
            self._open.pop(uid, None)
        upload.discard()

    def end_all(self) -> None:
        """Cancel every session; used when the adapter is closed."""
        with self._lock:
            uploads, self._open = list(self._open.values()), {}
        for upload in uploads:
            with upload.lock:
                upload.discard()


def to_response(request: requests.PreparedRequest, method: str, reply: Reply) -> requests.Response:
    """Build the ``requests.Response`` the way ``HTTPAdapter.build_response`` would."""
    headers = {"Docker-Distribution-Api-Version": "registry/2.0", **reply.headers}
    body = reply.body
    response = requests.Response()
    response.status_code = reply.status
    response.reason = http.HTTPStatus(reply.status).phrase
    if isinstance(body, bytes):
        headers.setdefault("Content-Length", str(len(body)))
        response.raw = io.BytesIO(b"" if method == "HEAD" else body)
    else:
        response.raw = body
    response.headers = CaseInsensitiveDict(headers)
    response.encoding = get_encoding_from_headers(response.headers)
    response.url = request.url or ""
    response.request = request
    return response


def json_reply(status: int, document: object) -> Reply:
    return Reply(status, {"Content-Type": "application/json"}, encode_json(document))


def error_reply(err: ApiError) -> Reply:
    reply = json_reply(err.status, {"errors": [{"code": err.code, "message": err.message}]})
    reply.headers.update(err.headers)
    return reply


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte span a single-range ``Range`` header asks for; None means all.

    Malformed and multi-range headers are ignored (RFC 9110 lets a server do that);
    a range entirely past the end is refused with 416.
    """
    match = RANGE_RE.fullmatch((header or "").strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first_text, last_text = match.groups()
    if first_text == "":
        first, last = max(size - int(last_text), 0), size - 1
        unsatisfiable = int(last_text) == 0 or size == 0
    else:
        first = int(first_text)
        last = min(int(last_text), size - 1) if last_text else size - 1
        if last_text and int(last_text) < first:
            return None
        unsatisfiable = first >= size
    if unsatisfiable:
        raise ApiError(
            416,
            "RANGE_INVALID",
            f"range {header} is outside {size} bytes",
            {"Content-Range": f"bytes */{size}"},
        )
    return first, last


def content_range(header: str | None) -> tuple[int, int] | None:
    """The inclusive span a ``PATCH`` announces; None when the header is absent."""
    if header is None:
        return None
    match = CONTENT_RANGE_RE.fullmatch(header.strip())
    if match is None or int(match.group(2)) < int(match.group(1)):
        raise ApiError(400, "BLOB_UPLOAD_INVALID", f"bad Content-Range {header!r}")
    return int(match.group(1)), int(match.group(2))


def upload_headers(name: str, uid: str, offset: int) -> dict[str, str]:
    """Headers of every upload-session reply; ``Range`` is inclusive, ``0-0`` when empty."""
    return {
        "Location": f"/v2/{name}/blobs/uploads/{uid}",
        "Docker-Upload-UUID": uid,
        "Range": f"0-{max(offset - 1, 0)}",
        "Content-Length": "0",
    }


def blob_created(name: str, digest: str) -> Reply:
    return Reply(
        201,
        {
            "Location": f"/v2/{name}/blobs/{digest}",
            "Docker-Content-Digest": digest,
            "Content-Length": "0",
        },
    )


def body_chunks(body: object) -> Iterable[bytes]:
    """A request body as pieces; an in-process :class:`HashingBody` stays itself.

    Kept whole, an upload can adopt its hash (see :meth:`Upload.append`).
    """
    return body if isinstance(body, HashingBody) else split_body(body)


def split_body(body: object) -> Iterator[bytes]:
    """Yield a request body in pieces of at most 1 MiB, whatever form requests left it in.

    requests passes ``data=`` through unprepared: bytes, str, a file object, or any
    iterable of bytes (a generator is sent chunked). Reading piecewise keeps memory flat
    for uploads of many GiB.
    """
    if body is None:
        return
    if isinstance(body, str):
        body = body.encode("utf-8")
    if isinstance(body, bytes | bytearray | memoryview):
        view = memoryview(body)
        for start in range(0, len(view), COPY_CHUNK):
            yield bytes(view[start : start + COPY_CHUNK])
        return
    read = getattr(body, "read", None)
    if callable(read):
        while piece := read(COPY_CHUNK):
            yield as_bytes(piece)
        return
    if isinstance(body, Iterable):
        for piece in body:
            yield as_bytes(piece)
        return
    raise ApiError(400, "BLOB_UPLOAD_INVALID", f"unusable body {type(body).__name__}")


def as_bytes(piece: object) -> bytes:
    if isinstance(piece, bytes):
        return piece
    if isinstance(piece, bytearray | memoryview):
        return bytes(piece)
    if isinstance(piece, str):
        return piece.encode("utf-8")
    raise ApiError(400, "BLOB_UPLOAD_INVALID", f"body yielded {type(piece).__name__}")


def read_limited(body: object, limit: int) -> bytes:
    """Read a whole (small) body, refusing it as soon as it exceeds ``limit``."""
    pieces: list[bytes] = []
    total = 0
    for piece in body_chunks(body):
        total += len(piece)
        if total > limit:
            raise ApiError(413, "SIZE_INVALID", f"manifest exceeds {limit} bytes")
        pieces.append(piece)
    return b"".join(pieces)


def check_digest(text: str) -> str:
    if not DIGEST_RE.fullmatch(text):
        raise ApiError(
            400, "DIGEST_INVALID", f"{text!r} is not sha256: and 64 lowercase hex digits"
        )
    return text


def check_tag(text: str) -> str:
    if not TAG_RE.fullmatch(text):
        raise ApiError(400, "TAG_INVALID", f"{text!r} is not a valid tag")
    return text


def check_name(name: str) -> None:
    if len(name) > 255 or not NAME_RE.fullmatch(name):
        raise ApiError(400, "NAME_INVALID", f"{name!r} is not a valid repository name")


def tags_reply(call: Call, tags: list[str], *, zero_is_unlimited: bool) -> Reply:
    """One page of the sorted ``tags``, after ``last=`` and at most ``n=``, with its ``Link``.

    ``zero_is_unlimited``: ``n=0`` lists everything, as distribution 2.8 does;
    otherwise it lists nothing, as the OCI spec reads.
    """
    last = call.query.get("last")
    if last:
        tags = [tag for tag in tags if tag > last]
    headers = {}
    if "n" in call.query:
        limit = page_size(call.query["n"])
        if 0 < limit < len(tags):
            headers["Link"] = (
                f'</v2/{call.name}/tags/list?n={limit}&last={quote(tags[limit - 1])}>; rel="next"'
            )
        if limit or not zero_is_unlimited:
            tags = tags[:limit]
    reply = json_reply(200, {"name": call.name, "tags": tags})
    reply.headers.update(headers)
    return reply


def page_size(text: str) -> int:
    try:
        size = int(text)
    except ValueError:
        size = -1
    if size < 0:
        raise ApiError(400, "PAGINATION_NUMBER_INVALID", f"n={text!r} is not a count")
    return size


def unknown_upload(uid: str) -> ApiError:
    return ApiError(404, "BLOB_UPLOAD_UNKNOWN", f"no upload session {uid}")


def unknown_manifest(reference: str) -> ApiError:
    return ApiError(404, "MANIFEST_UNKNOWN", f"manifest {reference} is not stored")


def manifest_media_type(content_type: str | None, document: Mapping[str, Any]) -> str:
    """The media type a manifest is stored under: the ``Content-Type`` it was pushed with.

    A ``mediaType`` field that contradicts the header is refused, because clients that
    trust one or the other would then disagree about what the manifest is.
    """
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type not in MANIFEST_TYPES:
        raise ApiError(
            400, "MANIFEST_INVALID", f"Content-Type {content_type!r} is not a manifest type"
        )
    declared = document.get("mediaType")
    if declared is not None and declared != media_type:
        raise ApiError(
            400, "MANIFEST_INVALID", f"mediaType {declared!r} contradicts {media_type!r}"
        )
    return media_type


def referenced_digests(document: Mapping[str, Any], media_type: str) -> list[str]:
    """Digests a manifest needs stored: its config and layers, or an index's manifests."""
    if media_type in INDEX_TYPES:
        entries = descriptor_list(document, "manifests")
    else:
        config = document.get("config")
        if not isinstance(config, dict):
            raise ApiError(400, "MANIFEST_INVALID", "image manifest has no config")
        entries = [config, *descriptor_list(document, "layers")]
    digests = [entry.get("digest") for entry in entries]
    for digest in digests:
        if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
            raise ApiError(400, "MANIFEST_INVALID", f"bad descriptor digest {digest!r}")
    return [str(digest) for digest in digests]


def descriptor_list(document: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    entries = document.get(key, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ApiError(400, "MANIFEST_INVALID", f"{key} must be a list of descriptors")
    return entries


def encode_json(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


Handler = Callable[[Call], Reply]
#: Path patterns, and per pattern the handler of each method.
Routes = tuple[tuple[re.Pattern[str], dict[str, Handler]], ...]
#: Methods that change what is stored.
WRITES: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ApiServer:
    """The distribution API routes both in-process registries serve the same way.

    A subclass supplies the storage-specific handlers (blobs, manifests, tags) and
    keeps its upload sessions in ``_uploads``; the route table, the request
    decoding and the upload-session routes are here once.
    """

    _uploads: Uploads

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Answer ``request`` in process; network options are meaningless and ignored.

        A storage failure becomes a 500 reply, as a real registry would send, so the
        client's error handling sees the same shapes here as on the network;
        :meth:`_failure_reply` may raise a typed error instead (a subclass's rule).
        """
        method = (request.method or "GET").upper()
        try:
            self._prepare()
            reply = self._dispatch(method, request)
        except ApiError as err:
            reply = error_reply(err)
        except Exception as exc:
            reply = self._failure_reply(exc)
        return to_response(request, method, reply)

    def _prepare(self) -> None:
        """What must hold before any request (the layout exists, storage answers)."""

    def _dispatch(self, method: str, request: requests.PreparedRequest) -> Reply:
        """The reply to ``request``: the storage's own routes."""
        raise NotImplementedError

    def _failure_reply(self, exc: Exception) -> Reply:
        """The reply for a storage failure ``exc``; anything else is raised as it is."""
        if isinstance(exc, OSError):
            return error_reply(ApiError(500, "UNKNOWN", f"storage failure: {exc}"))
        raise exc

    def _routes(self) -> Routes:
        """The endpoints both serve (the embedded store adds the referrers API)."""
        return (
            (re.compile(r"/v2/?"), {"GET": self._api_version, "HEAD": self._api_version}),
            (re.compile(r"/v2/(?P<name>.+)/blobs/uploads/?"), {"POST": self._start_upload}),
            (
                re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<arg>[^/]+)"),
                {
                    "GET": self._upload_status,
                    "PATCH": self._append_upload,
                    "PUT": self._finish_upload,
                    "DELETE": self._cancel_upload,
                },
            ),
            (
                re.compile(r"/v2/(?P<name>.+)/blobs/(?P<arg>[^/]+)"),
                {"GET": self._get_blob, "HEAD": self._get_blob, "DELETE": self._delete_blob},
            ),
            (
                re.compile(r"/v2/(?P<name>.+)/manifests/(?P<arg>[^/]+)"),
                {
                    "GET": self._get_manifest,
                    "HEAD": self._get_manifest,
                    "PUT": self._put_manifest,
                    "DELETE": self._delete_manifest,
                },
            ),
            (re.compile(r"/v2/(?P<name>.+)/tags/list"), {"GET": self._list_tags}),
        )

    def _route(
        self,
        routes: Routes,
        method: str,
        request: requests.PreparedRequest,
        *,
        refuse_writes: str | None = None,
    ) -> Reply | None:
        """The reply of the handler ``request`` is for; None when no path matches.

        ``refuse_writes``: why a write is refused (a read-only store), if it is.
        """
        parts = urlsplit(request.url or "")
        path = unquote(parts.path)
        for pattern, handlers in routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            handler = handlers.get(method)
            if handler is None:
                raise ApiError(
                    405,
                    "UNSUPPORTED",
                    f"{method} is not supported on {path}",
                    {"Allow": ", ".join(sorted(handlers))},
                )
            if method in WRITES and refuse_writes is not None:
                raise ApiError(405, "UNSUPPORTED", refuse_writes)
            groups = match.groupdict()
            name = groups.get("name") or ""
            if "name" in groups:
                check_name(name)
            query = parse_qs(parts.query, keep_blank_values=True)
            return handler(
                Call(
                    method=method,
                    name=name,
                    arg=groups.get("arg") or "",
                    query={key: values[0] for key, values in query.items()},
                    headers=request.headers,
                    body=request.body,
                )
            )
        return None

    def _api_version(self, call: Call) -> Reply:
        return json_reply(200, {})

    def _upload_status(self, call: Call) -> Reply:
        with self._uploads.hold(call.arg) as upload:
            return Reply(204, upload_headers(call.name, call.arg, upload.offset))

    def _append_upload(self, call: Call) -> Reply:
        with self._uploads.hold(call.arg) as upload:
            span = content_range(call.headers.get("Content-Range"))
            if span is not None and span[0] != upload.offset:
                raise ApiError(
                    416,
                    "BLOB_UPLOAD_INVALID",
                    f"chunk starts at {span[0]}, upload is at {upload.offset}",
                    upload_headers(call.name, call.arg, upload.offset),
                )
            expected = None if span is None else span[1] - span[0] + 1
            upload.append(body_chunks(call.body), expected)
            return Reply(202, upload_headers(call.name, call.arg, upload.offset))

    def _cancel_upload(self, call: Call) -> Reply:
        with self._uploads.hold(call.arg) as upload:
            self._uploads.end(call.arg, upload)
        return Reply(204)

    # The store-specific routes.

    def _start_upload(self, call: Call) -> Reply:
        raise NotImplementedError

    def _finish_upload(self, call: Call) -> Reply:
        raise NotImplementedError

    def _get_blob(self, call: Call) -> Reply:
        raise NotImplementedError

    def _delete_blob(self, call: Call) -> Reply:
        raise NotImplementedError

    def _get_manifest(self, call: Call) -> Reply:
        raise NotImplementedError

    def _put_manifest(self, call: Call) -> Reply:
        raise NotImplementedError

    def _delete_manifest(self, call: Call) -> Reply:
        raise NotImplementedError

    def _list_tags(self, call: Call) -> Reply:
        raise NotImplementedError
