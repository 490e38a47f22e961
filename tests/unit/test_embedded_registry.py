"""The embedded registry, driven over plain ``requests`` exactly as a client would."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from dockercomms.core._internal.registry.body import HashingBody
from dockercomms.core._internal.registry.embedded import EMBEDDED_BASE_URL, EmbeddedRegistryAdapter

BASE = EMBEDDED_BASE_URL
REPO = f"{BASE}/v2/team/drop"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
SIG_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
RECEIPT_TYPE = "application/vnd.example.receipt.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def url(location: str) -> str:
    """Registries answer with relative Locations; the client joins them to the base."""
    return BASE + location


def error_code(response: requests.Response) -> str:
    assert response.headers["Content-Type"] == "application/json"
    code: str = response.json()["errors"][0]["code"]
    return code


def open_session(layout: Path) -> requests.Session:
    session = requests.Session()
    session.mount(BASE + "/", EmbeddedRegistryAdapter(layout))
    return session


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return tmp_path / "layout"


@pytest.fixture
def session(layout: Path) -> Iterator[requests.Session]:
    with open_session(layout) as session:
        yield session


def push_blob(session: requests.Session, data: bytes) -> str:
    digest = digest_of(data)
    response = session.post(f"{REPO}/blobs/uploads/", params={"digest": digest}, data=data)
    assert response.status_code == 201, response.text
    return digest


def descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data)}


def image_manifest(session: requests.Session, layer: bytes, **extra: Any) -> bytes:
    """Push an empty config and one layer; return the bytes of a manifest using them."""
    push_blob(session, b"{}")
    push_blob(session, layer)
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_EMPTY, b"{}"),
        "layers": [descriptor(LAYER, layer)],
        **extra,
    }
    return json.dumps(document).encode()


def put_manifest(
    session: requests.Session, reference: str, body: bytes, media_type: str = OCI_MANIFEST
) -> requests.Response:
    return session.put(
        f"{REPO}/manifests/{reference}", data=body, headers={"Content-Type": media_type}
    )


def index_descriptors(layout: Path) -> list[dict[str, Any]]:
    manifests: list[dict[str, Any]] = json.loads((layout / "index.json").read_text())["manifests"]
    return manifests


def staged_files(layout: Path) -> list[Path]:
    return list((layout / ".uploads").iterdir())


def test_layout_is_created_on_first_use(session: requests.Session, layout: Path) -> None:
    response = session.get(f"{BASE}/v2/")

    assert response.status_code == 200
    assert response.json() == {}
    assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads((layout / "index.json").read_text()) == {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [],
    }
    assert (layout / "blobs" / "sha256").is_dir()


def test_chunked_upload_with_generator_bodies(session: requests.Session, layout: Path) -> None:
    chunks = [bytes([n]) * (700 * 1024 + n) for n in range(3)]
    whole = b"".join(chunks)

    started = session.post(f"{REPO}/blobs/uploads/")
    assert started.status_code == 202
    assert started.headers["Range"] == "0-0"
    assert started.headers["Location"].startswith("/v2/team/drop/blobs/uploads/")
    assert started.headers["Docker-Upload-UUID"] in started.headers["Location"]
    location = started.headers["Location"]
    sent = 0
    for chunk in chunks:
        pieces = (chunk[i : i + 100_000] for i in range(0, len(chunk), 100_000))
        patched = session.patch(url(location), data=pieces)
        sent += len(chunk)
        assert patched.status_code == 202, patched.text
        assert patched.headers["Range"] == f"0-{sent - 1}"
        location = patched.headers["Location"]
    status = session.get(url(location))
    assert status.status_code == 204
    assert status.headers["Range"] == f"0-{len(whole) - 1}"
    done = session.put(url(location), params={"digest": digest_of(whole)})

    assert done.status_code == 201, done.text
    assert done.headers["Location"] == f"/v2/team/drop/blobs/{digest_of(whole)}"
    assert done.headers["Docker-Content-Digest"] == digest_of(whole)
    assert session.get(f"{REPO}/blobs/{digest_of(whole)}").content == whole
    assert (layout / "blobs" / "sha256" / hashlib.sha256(whole).hexdigest()).read_bytes() == whole
    assert staged_files(layout) == []


def test_chunked_upload_with_file_bodies_and_content_range(
    session: requests.Session, tmp_path: Path
) -> None:
    parts = [b"first part ", b"second part ", b"third part"]
    location = session.post(f"{REPO}/blobs/uploads/").headers["Location"]
    offset = 0
    for index, part in enumerate(parts[:2]):
        source = tmp_path / f"part{index}"
        source.write_bytes(part)
        with source.open("rb") as body:
            patched = session.patch(
                url(location),
                data=body,
                headers={"Content-Range": f"{offset}-{offset + len(part) - 1}"},
            )
        assert patched.status_code == 202, patched.text
        offset += len(part)
        location = patched.headers["Location"]
    last = tmp_path / "last"
    last.write_bytes(parts[2])
    whole = b"".join(parts)
    with last.open("rb") as body:
        done = session.put(url(location), params={"digest": digest_of(whole)}, data=body)

    assert done.status_code == 201, done.text
    assert session.get(f"{REPO}/blobs/{digest_of(whole)}").content == whole


def test_patch_out_of_order_is_refused_and_upload_kept(session: requests.Session) -> None:
    location = session.post(f"{REPO}/blobs/uploads/").headers["Location"]
    session.patch(url(location), data=b"abc", headers={"Content-Range": "0-2"})

    skipped = session.patch(url(location), data=b"xyz", headers={"Content-Range": "10-12"})
    short = session.patch(url(location), data=b"xy", headers={"Content-Range": "3-5"})

    assert skipped.status_code == 416
    assert skipped.headers["Range"] == "0-2"
    assert short.status_code == 400
    assert error_code(short) == "SIZE_INVALID"
    done = session.put(url(location), params={"digest": digest_of(b"abcdef")}, data=b"def")
    assert done.status_code == 201


def test_monolithic_upload_and_empty_blob(session: requests.Session) -> None:
    digest = push_blob(session, b"hello, registry")
    empty = push_blob(session, b"")

    assert session.get(f"{REPO}/blobs/{digest}").content == b"hello, registry"
    head = session.head(f"{REPO}/blobs/{empty}")
    assert head.status_code == 200
    assert head.headers["Content-Length"] == "0"


def test_digest_mismatch_is_rejected_and_nothing_stored(
    session: requests.Session, layout: Path
) -> None:
    claimed = digest_of(b"what I said")
    blobs_before = sorted((layout / "blobs" / "sha256").iterdir()) if layout.exists() else []

    monolithic = session.post(
        f"{REPO}/blobs/uploads/", params={"digest": claimed}, data=b"what I sent"
    )
    location = session.post(f"{REPO}/blobs/uploads/").headers["Location"]
    session.patch(url(location), data=b"what I sent")
    chunked = session.put(url(location), params={"digest": claimed})

    for response in (monolithic, chunked):
        assert response.status_code == 400
        assert error_code(response) == "DIGEST_INVALID"
    assert session.head(f"{REPO}/blobs/{claimed}").status_code == 404
    assert session.get(url(location)).status_code == 404
    assert sorted((layout / "blobs" / "sha256").iterdir()) == blobs_before
    assert staged_files(layout) == []


def test_hashing_body_upload_is_stored_and_still_checked(
    session: requests.Session, layout: Path
) -> None:
    """An in-process HashingBody's digest is adopted, but the PUT digest is still checked."""
    data = [b"a" * 300_000, b"b" * 5, b"c" * 1_000_000]
    whole = b"".join(data)

    location = session.post(f"{REPO}/blobs/uploads/").headers["Location"]
    body = HashingBody(iter(data), lambda _: None)
    patched = session.patch(url(location), data=body)
    assert patched.status_code == 202, patched.text
    assert body.complete and body.digest == digest_of(whole)
    wrong = session.put(url(patched.headers["Location"]), params={"digest": digest_of(b"x")})
    assert wrong.status_code == 400 and error_code(wrong) == "DIGEST_INVALID"

    location = session.post(f"{REPO}/blobs/uploads/").headers["Location"]
    patched = session.patch(url(location), data=HashingBody(iter(data), lambda _: None))
    done = session.put(url(patched.headers["Location"]), params={"digest": digest_of(whole)})
    assert done.status_code == 201, done.text
    assert (layout / "blobs" / "sha256" / digest_of(whole)[7:]).read_bytes() == whole
    assert staged_files(layout) == []


def test_hashing_body_after_other_bytes_is_hashed_not_adopted(session: requests.Session) -> None:
    """Adoption needs an empty upload: the body's hash does not cover earlier PATCHes."""
    location = session.post(f"{REPO}/blobs/uploads/").headers["Location"]
    first = session.patch(url(location), data=b"head-")
    patched = session.patch(
        url(first.headers["Location"]), data=HashingBody(iter([b"tail"]), lambda _: None)
    )
    done = session.put(url(patched.headers["Location"]), params={"digest": digest_of(b"head-tail")})
    assert done.status_code == 201, done.text


def test_upload_of_a_stored_blob_keeps_the_stored_file(
    session: requests.Session, layout: Path
) -> None:
    """Renaming over an existing blob would force ext4 to flush it: keep the one stored."""
    digest = push_blob(session, b"same bytes")
    stored = layout / "blobs" / "sha256" / digest[7:]
    inode = stored.stat().st_ino

    location = session.post(f"{REPO}/blobs/uploads/").headers["Location"]
    patched = session.patch(url(location), data=b"same bytes")
    done = session.put(url(patched.headers["Location"]), params={"digest": digest})

    assert done.status_code == 201, done.text
    assert stored.stat().st_ino == inode
    assert stored.read_bytes() == b"same bytes"
    assert staged_files(layout) == []


def test_cancelled_upload_is_gone(session: requests.Session, layout: Path) -> None:
    location = session.post(f"{REPO}/blobs/uploads/").headers["Location"]
    session.patch(url(location), data=b"partial")

    assert session.delete(url(location)).status_code == 204
    gone = session.patch(url(location), data=b"more")
    assert gone.status_code == 404
    assert error_code(gone) == "BLOB_UPLOAD_UNKNOWN"
    assert staged_files(layout) == []


def test_closing_the_session_discards_open_uploads(layout: Path) -> None:
    with open_session(layout) as session:
        location = session.post(f"{REPO}/blobs/uploads/").headers["Location"]
        session.patch(url(location), data=b"never finished")
        assert len(staged_files(layout)) == 1

    assert staged_files(layout) == []


def test_cross_repository_mount(session: requests.Session) -> None:
    digest = push_blob(session, b"shared")

    mounted = session.post(
        f"{BASE}/v2/other/repo/blobs/uploads/", params={"mount": digest, "from": "team/drop"}
    )
    missing = session.post(
        f"{REPO}/blobs/uploads/", params={"mount": digest_of(b"nope"), "from": "x"}
    )

    assert mounted.status_code == 201
    assert mounted.headers["Location"] == f"/v2/other/repo/blobs/{digest}"
    assert missing.status_code == 202
    assert "/blobs/uploads/" in missing.headers["Location"]


def test_blob_head_get_and_ranges(session: requests.Session) -> None:
    data = bytes(range(256)) * 40
    digest = push_blob(session, data)
    blob = f"{REPO}/blobs/{digest}"

    head = session.head(blob)
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["Docker-Content-Digest"] == digest
    assert head.headers["Content-Type"] == "application/octet-stream"
    assert head.content == b""

    middle = session.get(blob, headers={"Range": "bytes=100-199"})
    assert middle.status_code == 206
    assert middle.content == data[100:200]
    assert middle.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert middle.headers["Content-Length"] == "100"
    assert session.get(blob, headers={"Range": "bytes=10000-"}).content == data[10000:]
    assert session.get(blob, headers={"Range": "bytes=-5"}).content == data[-5:]
    beyond = session.get(blob, headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(data)}"


def test_streamed_blob_closes_its_file(session: requests.Session) -> None:
    data = b"x" * 300_000
    digest = push_blob(session, data)

    with session.get(f"{REPO}/blobs/{digest}", stream=True) as response:
        assert b"".join(response.iter_content(65536)) == data
        assert response.raw.closed
    with session.get(f"{REPO}/blobs/{digest}", stream=True) as abandoned:
        assert abandoned.raw.read(10) == data[:10]
    assert abandoned.raw.closed


def test_delete_blob(session: requests.Session) -> None:
    digest = push_blob(session, b"short-lived")

    assert session.delete(f"{REPO}/blobs/{digest}").status_code == 202
    assert session.head(f"{REPO}/blobs/{digest}").status_code == 404
    assert error_code(session.delete(f"{REPO}/blobs/{digest}")) == "BLOB_UNKNOWN"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", f"/blobs/{digest_of(b'absent')}", 404, "BLOB_UNKNOWN"),
        ("GET", "/blobs/sha256:ABC", 400, "DIGEST_INVALID"),
        ("HEAD", "/blobs/md5:00", 400, None),
        ("GET", "/blobs/uploads/not-a-session", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("PUT", "/blobs/uploads/not-a-session?digest=sha256:00", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("GET", "/manifests/no-such-tag", 404, "MANIFEST_UNKNOWN"),
        ("GET", f"/manifests/{digest_of(b'absent')}", 404, "MANIFEST_UNKNOWN"),
        ("DELETE", "/manifests/no-such-tag", 404, "MANIFEST_UNKNOWN"),
        ("GET", "/manifests/sha256:zz", 400, "DIGEST_INVALID"),
        ("GET", "/manifests/-bad-tag", 400, "TAG_INVALID"),
        ("GET", "/referrers/latest", 400, "DIGEST_INVALID"),
        ("GET", "/tags/list?n=-1", 400, "PAGINATION_NUMBER_INVALID"),
        ("POST", "/tags/list", 405, "UNSUPPORTED"),
        ("PATCH", f"/blobs/{digest_of(b'x')}", 405, "UNSUPPORTED"),
        ("GET", "/catalog", 404, "UNSUPPORTED"),
    ],
)
def test_error_replies(
    session: requests.Session, method: str, path: str, status: int, code: str | None
) -> None:
    response = session.request(method, REPO + path)

    assert response.status_code == status
    if code is not None:
        assert error_code(response) == code


def test_invalid_repository_name(session: requests.Session) -> None:
    response = session.get(f"{BASE}/v2/Upper/Case/tags/list")

    assert response.status_code == 400
    assert error_code(response) == "NAME_INVALID"


def test_manifest_by_tag_and_by_digest(session: requests.Session, layout: Path) -> None:
    body = image_manifest(session, b"layer one", annotations={"purpose": "test"})
    digest = digest_of(body)

    by_tag = put_manifest(session, "v1", body)
    assert by_tag.status_code == 201, by_tag.text
    assert by_tag.headers["Docker-Content-Digest"] == digest
    assert by_tag.headers["Location"] == f"/v2/team/drop/manifests/{digest}"
    assert "OCI-Subject" not in by_tag.headers
    assert put_manifest(session, digest, body).status_code == 201

    for reference in ("v1", digest):
        got = session.get(f"{REPO}/manifests/{reference}")
        assert got.status_code == 200
        assert got.content == body
        assert got.headers["Content-Type"] == OCI_MANIFEST
        assert got.headers["Docker-Content-Digest"] == digest
        head = session.head(f"{REPO}/manifests/{reference}")
        assert head.headers["Content-Length"] == str(len(body))
        assert head.content == b""
    assert index_descriptors(layout) == [
        {
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": len(body),
            "annotations": {"purpose": "test", REF_NAME: "v1"},
        }
    ]


def test_manifest_put_by_wrong_digest_is_refused(session: requests.Session) -> None:
    body = image_manifest(session, b"layer")

    response = put_manifest(session, digest_of(b"something else"), body)

    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"


@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        (b"not json", OCI_MANIFEST, "MANIFEST_INVALID"),
        (b'{"schemaVersion": 1}', OCI_MANIFEST, "MANIFEST_INVALID"),
        (b'{"schemaVersion": 2, "layers": []}', OCI_MANIFEST, "MANIFEST_INVALID"),
        (b'{"schemaVersion": 2, "manifests": []}', "application/json", "MANIFEST_INVALID"),
        (
            json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode(),
            OCI_MANIFEST,
            "MANIFEST_INVALID",
        ),
        (
            json.dumps(
                {"schemaVersion": 2, "config": descriptor(OCI_EMPTY, b"{}"), "layers": []}
            ).encode(),
            OCI_MANIFEST,
            "MANIFEST_BLOB_UNKNOWN",
        ),
        (
            json.dumps(
                {"schemaVersion": 2, "manifests": [descriptor(OCI_MANIFEST, b"absent")]}
            ).encode(),
            OCI_INDEX,
            "MANIFEST_BLOB_UNKNOWN",
        ),
    ],
)
def test_bad_manifests_are_refused(
    session: requests.Session, body: bytes, content_type: str, code: str
) -> None:
    response = put_manifest(session, "bad", body, content_type)

    assert response.status_code == 400
    assert error_code(response) == code
    assert session.get(f"{REPO}/manifests/bad").status_code == 404


def test_oversized_manifest_is_refused(session: requests.Session) -> None:
    response = put_manifest(session, "huge", b" " * (4 * 1024 * 1024 + 1))

    assert response.status_code == 413


def test_index_manifest_of_stored_manifests(session: requests.Session) -> None:
    child = image_manifest(session, b"child layer")
    put_manifest(session, digest_of(child), child)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": "application/vnd.example.bundle",
            "manifests": [descriptor(OCI_MANIFEST, child)],
        }
    ).encode()

    response = put_manifest(session, "bundle", index, OCI_INDEX)

    assert response.status_code == 201, response.text
    assert session.get(f"{REPO}/manifests/bundle").headers["Content-Type"] == OCI_INDEX


def test_retag_moves_the_tag_and_keeps_the_old_manifest(
    session: requests.Session, layout: Path
) -> None:
    first = image_manifest(session, b"first")
    second = image_manifest(session, b"second")
    put_manifest(session, "latest", first)
    put_manifest(session, "latest", second)
    put_manifest(session, "latest", second)

    assert session.get(f"{REPO}/manifests/latest").content == second
    assert session.get(f"{REPO}/manifests/{digest_of(first)}").content == first
    descriptors = index_descriptors(layout)
    assert [(d["digest"], d.get("annotations", {}).get(REF_NAME)) for d in descriptors] == [
        (digest_of(second), "latest"),
        (digest_of(first), None),
    ]


def test_untag_keeps_other_tags(session: requests.Session, layout: Path) -> None:
    body = image_manifest(session, b"tagged twice")
    digest = digest_of(body)
    put_manifest(session, "a", body)
    put_manifest(session, "b", body)

    assert session.delete(f"{REPO}/manifests/a").status_code == 202

    assert session.get(f"{REPO}/manifests/a").status_code == 404
    assert session.get(f"{REPO}/manifests/b").content == body
    assert session.get(f"{REPO}/tags/list").json()["tags"] == ["b"]
    assert session.delete(f"{REPO}/manifests/b").status_code == 202
    assert session.get(f"{REPO}/manifests/{digest}").content == body
    assert [d["digest"] for d in index_descriptors(layout)] == [digest]


def test_delete_by_digest_removes_all_tags(session: requests.Session, layout: Path) -> None:
    body = image_manifest(session, b"doomed")
    digest = digest_of(body)
    for tag in ("x", "y"):
        put_manifest(session, tag, body)

    assert session.delete(f"{REPO}/manifests/{digest}").status_code == 202

    for reference in ("x", "y", digest):
        assert session.get(f"{REPO}/manifests/{reference}").status_code == 404
    assert index_descriptors(layout) == []
    assert session.head(f"{REPO}/blobs/{digest}").status_code == 404
    assert session.delete(f"{REPO}/manifests/{digest}").status_code == 404


def test_referrers(session: requests.Session, layout: Path) -> None:
    subject_body = image_manifest(session, b"the message")
    subject_digest = digest_of(subject_body)
    put_manifest(session, "msg", subject_body)
    subject = descriptor(OCI_MANIFEST, subject_body)
    signature = image_manifest(
        session,
        b"bundle",
        artifactType=SIG_TYPE,
        subject=subject,
        annotations={"kind": "signature"},
    )
    push_blob(session, b'{"receipt": true}')
    receipt = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(RECEIPT_TYPE, b'{"receipt": true}'),
            "layers": [],
            "subject": subject,
        }
    ).encode()

    signed = put_manifest(session, digest_of(signature), signature)
    receipted = put_manifest(session, "receipt-1", receipt)
    put_manifest(session, "receipt-2", receipt)

    assert signed.headers["OCI-Subject"] == subject_digest
    assert receipted.headers["OCI-Subject"] == subject_digest
    expected = [
        {
            "mediaType": OCI_MANIFEST,
            "digest": digest_of(signature),
            "size": len(signature),
            "artifactType": SIG_TYPE,
            "annotations": {"kind": "signature"},
        },
        {
            "mediaType": OCI_MANIFEST,
            "digest": digest_of(receipt),
            "size": len(receipt),
            "artifactType": RECEIPT_TYPE,
        },
    ]
    with open_session(layout) as fresh:
        for client in (session, fresh):
            listed = client.get(f"{REPO}/referrers/{subject_digest}")
            assert listed.status_code == 200
            assert listed.headers["Content-Type"] == OCI_INDEX
            assert "OCI-Filters-Applied" not in listed.headers
            assert listed.json() == {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": expected,
            }
            filtered = client.get(
                f"{REPO}/referrers/{subject_digest}", params={"artifactType": RECEIPT_TYPE}
            )
            assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
            assert filtered.json()["manifests"] == expected[1:]
    none = session.get(f"{REPO}/referrers/{digest_of(b'unreferenced')}")
    assert none.status_code == 200
    assert none.json()["manifests"] == []


def test_tags_pagination_follows_link(session: requests.Session) -> None:
    body = image_manifest(session, b"many tags")
    tags = [f"t{n:03d}" for n in range(260)]
    for tag in reversed(tags):
        assert put_manifest(session, tag, body).status_code == 201

    pages: list[list[str]] = []
    next_url: str | None = f"{REPO}/tags/list?n=100"
    while next_url is not None:
        page = session.get(next_url)
        assert page.status_code == 200
        assert page.json()["name"] == "team/drop"
        pages.append(page.json()["tags"])
        link = page.links.get("next")
        next_url = url(link["url"]) if link else None

    assert [len(page) for page in pages] == [100, 100, 60]
    assert [tag for page in pages for tag in page] == tags
    everything = session.get(f"{REPO}/tags/list")
    assert everything.json()["tags"] == tags
    assert "Link" not in everything.headers
    after = session.get(f"{REPO}/tags/list", params={"last": "t257"}).json()["tags"]
    assert after == ["t258", "t259"]


PUSHER = """
import hashlib, json, sys, time
from pathlib import Path
import requests
from dockercomms.core._internal.registry.body import HashingBody
from dockercomms.core._internal.registry.embedded import EMBEDDED_BASE_URL, EmbeddedRegistryAdapter

layout, worker, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
repo = EMBEDDED_BASE_URL + "/v2/team/drop"

def push(session, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = session.post(repo + "/blobs/uploads/", params={"digest": digest}, data=data)
    assert r.status_code == 201, r.text
    return {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest,
            "size": len(data)}

while not go.exists():
    time.sleep(0.01)
with requests.Session() as session:
    session.mount(EMBEDDED_BASE_URL + "/", EmbeddedRegistryAdapter(layout))
    config = push(session, b"{}")
    config["mediaType"] = "application/vnd.oci.empty.v1+json"
    for n in range(20):
        layer = push(session, f"{worker} layer {n}".encode())
        body = json.dumps({"schemaVersion": 2, "mediaType":
            "application/vnd.oci.image.manifest.v1+json", "config": config,
            "layers": [layer]}).encode()
        for tag in (f"{worker}-{n:02d}", "latest"):
            r = session.put(repo + "/manifests/" + tag, data=body,
                headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
            assert r.status_code == 201, r.text
"""


def test_two_processes_push_into_one_layout(layout: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    workers = [
        subprocess.Popen([sys.executable, "-c", PUSHER, str(layout), name, str(go)])
        for name in ("alpha", "beta")
    ]
    go.touch()
    for worker in workers:
        assert worker.wait(timeout=120) == 0

    index = json.loads((layout / "index.json").read_text())
    expected = sorted([f"{w}-{n:02d}" for w in ("alpha", "beta") for n in range(20)] + ["latest"])
    names = [d["annotations"][REF_NAME] for d in index["manifests"] if "annotations" in d]
    assert sorted(names) == expected
    with open_session(layout) as session:
        assert session.get(f"{REPO}/tags/list").json()["tags"] == expected
        for tag in expected:
            got = session.get(f"{REPO}/manifests/{tag}")
            assert got.status_code == 200, tag
            assert digest_of(got.content) == got.headers["Docker-Content-Digest"]
            if tag != "latest":
                layer = json.loads(got.content)["layers"][0]["digest"]
                assert session.get(f"{REPO}/blobs/{layer}").content.startswith(
                    tag.split("-")[0].encode()
                )
    assert staged_files(layout) == []


def test_threads_share_one_adapter(layout: Path) -> None:
    adapter = EmbeddedRegistryAdapter(layout)
    failures: list[BaseException] = []

    def push_tags(worker: int) -> None:
        try:
            with requests.Session() as session:
                session.mount(BASE + "/", adapter)
                for n in range(10):
                    body = image_manifest(session, f"{worker}/{n}".encode())
                    assert put_manifest(session, f"w{worker}-{n}", body).status_code == 201
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=push_tags, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    with open_session(layout) as session:
        assert len(session.get(f"{REPO}/tags/list").json()["tags"]) == 60


def tar_with(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        member = tarfile.TarInfo(name)
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def test_skopeo_reads_what_we_pushed(
    session: requests.Session, layout: Path, tmp_path: Path
) -> None:
    layer = tar_with("hello.txt", b"hello from the embedded registry\n")
    body = image_manifest(session, layer, annotations={"purpose": "skopeo"})
    put_manifest(session, "v1", body)
    put_manifest(session, "other", image_manifest(session, b"not this one"))
    out = tmp_path / "copied"

    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{layout}:v1"],
        capture_output=True,
        check=True,
        timeout=120,
    )
    subprocess.run(
        ["skopeo", "--insecure-policy", "copy", f"oci:{layout}:v1", f"dir:{out}"],
        capture_output=True,
        check=True,
        timeout=120,
    )

    assert raw.stdout == body
    assert (out / "manifest.json").read_bytes() == body
    assert (out / hashlib.sha256(layer).hexdigest()).read_bytes() == layer


# --- a private store (#13.10) --------------------------------------------------------------


def modes_under(root: Path) -> dict[str, int]:
    """Permission bits of ``root`` and of everything below it, by relative path."""
    found = {".": root.stat().st_mode & 0o777}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = path.lstat().st_mode & 0o777
    return found


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o000, 0o277], ids=["umask-000", "umask-277"])
def test_a_new_store_is_private_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    layout = tmp_path / "missing" / "parents" / "layout"
    with umask(mask), open_session(layout) as session:
        body = image_manifest(session, b"a private layer")
        assert put_manifest(session, "v1", body).status_code == 201
        started = session.post(f"{REPO}/blobs/uploads/")
        patched = session.patch(url(started.headers["Location"]), data=b"half an upload")
        assert patched.status_code == 202
        staged = modes_under(layout)

    assert any(name.endswith(".part") for name in staged), staged
    for root in (tmp_path / "missing", layout):
        for name, mode in modes_under(root).items():
            expected = 0o700 if (root / name).is_dir() else 0o600
            assert mode == expected, f"{name}: {oct(mode)} under umask {oct(mask)}"
    for name, mode in staged.items():
        assert mode == (0o700 if (layout / name).is_dir() or name == "." else 0o600), name


def test_a_store_open_to_others_warns_once_and_still_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    private, shared = tmp_path / "private", tmp_path / "shared"
    for layout in (private, shared):
        with open_session(layout) as session:
            assert session.get(f"{BASE}/v2/").status_code == 200
    shared.chmod(0o755)
    (shared / "index.json").chmod(0o644)
    caplog.clear()

    for layout in (private, shared, shared):
        with open_session(layout) as session:
            assert session.get(f"{REPO}/tags/list").status_code == 200

    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert f"chmod -R go-rwx {shared}" in warnings[0]
    assert str(private) not in warnings[0]


def test_tag_digests_and_a_watch_on_the_index(layout: Path) -> None:
    """What a big inbox's poll asks the layout: every tag's digest at once, and changes."""
    changes = threading.Semaphore(0)
    adapter = EmbeddedRegistryAdapter(layout)
    with requests.Session() as session:
        session.mount(BASE + "/", adapter)
        body = image_manifest(session, b"one")
        assert put_manifest(session, "inbox-a-1", body).status_code == 201
        assert put_manifest(session, "other-1", body).status_code == 201
        assert adapter.tag_digests("inbox-a-") == {"inbox-a-1": digest_of(body)}

        watch = adapter.watch(changes.release)
        try:
            second = image_manifest(session, b"two")
            assert put_manifest(session, "inbox-a-2", second).status_code == 201
            assert changes.acquire(timeout=30), "no change seen after a tag was pushed"
            # Another adapter of the same layout (another thread's client) agrees.
            assert EmbeddedRegistryAdapter(layout).tag_digests("inbox-a-") == {
                "inbox-a-1": digest_of(body),
                "inbox-a-2": digest_of(second),
            }
        finally:
            watch.stop()

        (layout / "index.json").write_text("{not json")
        assert adapter.tag_digests("inbox-a-") is None  # damage: the requests report it
