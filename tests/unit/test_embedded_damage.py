"""A damaged embedded store is refused at once, in bounded memory, never blocking.

A FIFO where a manifest or blob should be used to hang ``ls`` (``open`` of a FIFO
blocks until a writer comes), and a huge sparse file was read whole before the
4 MiB cap applied. Driven over plain ``requests`` and through the CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from dockercomms.core._internal.registry.embedded import EmbeddedRegistryAdapter
from tests.conftest import Party
from tests.unit.test_embedded_registry import (
    BASE,
    OCI_MANIFEST,
    REPO,
    digest_of,
    error_code,
    image_manifest,
    open_session,
    put_manifest,
)

GIB = 1024**3


@contextlib.contextmanager
def readers_released(*fifos: Path) -> Iterator[None]:
    """Answer every open of each FIFO with an immediate EOF: a blocking reader fails, not hangs.

    A thread per FIFO keeps opening it for writing: that open returns as soon as
    someone opens the FIFO for reading, and closing it at once hands the reader EOF.
    """
    stop = threading.Event()

    def writer(fifo: Path) -> None:
        while not stop.is_set():
            os.close(os.open(fifo, os.O_WRONLY))

    threads = [threading.Thread(target=writer, args=(fifo,), daemon=True) for fifo in fifos]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for fifo, thread in zip(fifos, threads, strict=True):
            # A reader held open until its writer has ended: the writer may be blocked in
            # open() or only about to call it (past its look at ``stop``), and either way
            # that open returns at once while a reader exists. Opening and closing at once
            # would miss the second case, and the writer would then block for ever.
            reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            try:
                thread.join()
            finally:
                os.close(reader)


def bytes_read() -> int:
    """Bytes this process has read with read(2) so far, sparse holes included.

    Unlike a peak RSS, which an earlier test may already have raised, this counts
    exactly what a read path took in between.
    """
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def make_sparse(path: Path, size: int) -> None:
    path.unlink()
    with open(path, "wb") as file:
        file.truncate(size)  # costs no disk; reading it would cost ``size`` bytes of memory


# --- the adapter ---------------------------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return tmp_path / "layout"


@pytest.fixture
def session(layout: Path) -> Iterator[requests.Session]:
    with open_session(layout) as session:
        yield session


def stored_manifest(session: requests.Session, layout: Path) -> tuple[str, Path, Path]:
    """Push a manifest tagged v1; its digest, its file and its layer's file on disk."""
    body = image_manifest(session, b"a layer to be replaced")
    assert put_manifest(session, "v1", body).status_code == 201
    layer = json.loads(body)["layers"][0]["digest"]
    blobs = layout / "blobs" / "sha256"
    return digest_of(body), blobs / digest_of(body)[7:], blobs / layer[7:]


def replace_with(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink":
        target = path.with_name("elsewhere")
        target.write_bytes(b"{}")
        path.symlink_to(target)
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink"])
def test_a_non_regular_file_is_refused_without_blocking(
    session: requests.Session, layout: Path, kind: str
) -> None:
    digest, manifest_file, layer_file = stored_manifest(session, layout)
    layer = "sha256:" + layer_file.name
    replace_with(manifest_file, kind)
    replace_with(layer_file, kind)
    fifos = (manifest_file, layer_file) if kind == "fifo" else ()

    with readers_released(*fifos):
        replies = {
            (method, reference): session.request(method, f"{REPO}/{reference}")
            for method, reference in [
                ("GET", "manifests/v1"),
                ("GET", f"manifests/{digest}"),
                ("GET", f"blobs/{layer}"),
                ("HEAD", f"blobs/{layer}"),
            ]
        }
        referrers = session.get(f"{REPO}/referrers/{digest_of(b'x')}")

    for (method, reference), reply in replies.items():
        assert reply.status_code == 422, (method, reference, reply.status_code, reply.text)
        if method == "GET":
            assert "not a regular file" in reply.text, reply.text
    assert referrers.status_code == 200


def test_an_index_json_that_is_a_fifo_is_refused_without_blocking(
    session: requests.Session, layout: Path
) -> None:
    stored_manifest(session, layout)
    replace_with(layout / "index.json", "fifo")

    with readers_released(layout / "index.json"), open_session(layout) as fresh:
        reply = fresh.get(f"{REPO}/tags/list")

    assert reply.status_code == 422
    assert "index.json is a FIFO, not a regular file" in reply.text


def test_a_huge_sparse_manifest_file_is_never_read_past_the_cap(
    session: requests.Session, layout: Path
) -> None:
    digest, manifest_file, _ = stored_manifest(session, layout)
    make_sparse(manifest_file, 3 * GIB)
    before = bytes_read()

    reply = session.get(f"{REPO}/manifests/{digest}")
    referrers = session.get(f"{REPO}/referrers/{digest_of(b'x')}")

    assert bytes_read() - before < 16 * 1024 * 1024
    assert reply.status_code == 200 and reply.headers["Content-Length"] == str(3 * GIB)
    assert len(reply.content) == 4 * 1024 * 1024 + 1, "the client's cap refuses it from there"
    assert referrers.status_code == 200


def test_a_manifest_file_over_the_cap_is_read_to_cap_plus_one(layout: Path) -> None:
    with requests.Session() as session:
        session.mount(BASE + "/", EmbeddedRegistryAdapter(layout, max_manifest_bytes=4096))
        body = image_manifest(session, b"small", annotations={"pad": "x" * 3000})
        assert put_manifest(session, "v1", body).status_code == 201
        manifest_file = layout / "blobs" / "sha256" / digest_of(body)[7:]
        manifest_file.write_bytes(body.ljust(4096))
        assert session.get(f"{REPO}/manifests/v1").content == body.ljust(4096)
        manifest_file.write_bytes(body.ljust(5000))
        assert session.get(f"{REPO}/manifests/v1").content == body.ljust(4097)
        assert session.head(f"{REPO}/manifests/v1").headers["Content-Length"] == "5000"


def deeply_nested(depth: int) -> bytes:
    return (
        json.dumps({"schemaVersion": 2, "x": 0}).encode().replace(b"0", b"[" * depth + b"]" * depth)
    )


def test_deeply_nested_json_is_refused_not_a_crash(session: requests.Session, layout: Path) -> None:
    deep = deeply_nested(5000)
    refused = put_manifest(session, "deep", deep)
    assert refused.status_code == 400
    assert error_code(refused) == "MANIFEST_INVALID"

    # The same bytes planted on disk (a tampered layout, a copy tool): served as
    # they are, skipped by the referrers API, never a RecursionError.
    digest = digest_of(deep)
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(deep)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"].append({"mediaType": OCI_MANIFEST, "digest": digest, "size": len(deep)})
    (layout / "index.json").write_text(json.dumps(index))
    with open_session(layout) as fresh:
        assert fresh.get(f"{REPO}/manifests/{digest}").content == deep
        assert fresh.get(f"{REPO}/referrers/{digest_of(b'x')}").json()["manifests"] == []


# --- the user's view -----------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["fifo", "sparse"])
def test_ls_and_recv_report_a_damaged_manifest_file_at_once(
    embedded_pair: tuple[Party, Party], tmp_path: Path, damage: str
) -> None:
    alice, bob = embedded_pair
    note = tmp_path / "note.txt"
    note.write_text("hello\n")
    digest = json.loads(alice.ok("send", str(note), "-r", bob.name, "--json"))["digest"]
    layout = Path(alice.repo.removeprefix("oci-layout:"))
    manifest_file = layout / "blobs" / "sha256" / digest[7:]
    if damage == "fifo":
        replace_with(manifest_file, "fifo")
        # The store's damage, not the message's: deferred (core.errors.Disposition).
        expected, code, verdict = f"manifest {digest} is a FIFO, not a regular file", 1, "deferred"
    else:
        make_sparse(manifest_file, 3 * GIB)
        # As from a remote registry.
        expected, code, verdict = "is larger than 4194304 bytes", 4, "REJECTED"
    before = bytes_read()

    with readers_released(manifest_file) if damage == "fifo" else contextlib.nullcontext():
        listed = bob.cli("ls")
        received = bob.cli("recv", "--out", str(tmp_path / "out"))

    assert bytes_read() - before < 64 * 1024 * 1024
    assert listed.code == 0 and "INVALID" in listed.out and expected in listed.out, listed
    assert received.code == code and verdict in received.out, received
    assert expected in received.out, received.out
