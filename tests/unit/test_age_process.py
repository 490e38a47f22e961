"""Sealing with the stock ``age`` binary in its own process (core age_process, SPEC 9).

The real binary (Debian's ``age``) seals; small shell wrappers around it play a
binary that misbehaves (cuts its output, adds a recipient, fails), since no real
``age`` does that on purpose.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest
from pyrage import x25519

from dockercomms.core._internal import age_process, sealing
from dockercomms.core.errors import ChunkError, DockerCommsError
from tests import age_cli

MIB = 1024 * 1024


def children() -> set[int]:
    """PIDs of this process's live children (every thread's), from /proc.

    Fixtures of other tests (a registry process) may be alive too: compare with
    what was there before.
    """
    found: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        found.update(int(pid) for pid in (task / "children").read_text().split())
    return found


def stanzas(blob: bytes) -> int:
    return blob[: blob.index(b"\n--- ")].count(b"\n-> ")


@pytest.fixture
def use_binary(monkeypatch: pytest.MonkeyPatch) -> str:
    """Seal with the stock binary (named explicitly, as a user may)."""
    path = age_cli.tool("age")
    monkeypatch.setenv(age_process.AGE_BINARY_ENV, path)
    return path


def wrapper(tmp_path: Path, body: str) -> str:
    """An executable that answers ``--version`` as the real age does, then runs ``body``."""
    real = age_cli.tool("age")
    script = tmp_path / "age-wrapper"
    script.write_text(
        f'#!/bin/sh\nif [ "$1" = --version ]; then exec {real} --version; fi\n{body}\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def chunked(data: bytes, size: int = 300_000) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def test_the_binary_seals_to_every_recipient_and_pyrage_opens_it(use_binary: str) -> None:
    before = children()
    ids = [x25519.Identity.generate() for _ in range(3)]
    data = os.urandom(3 * MIB + 12_345)
    blob = b"".join(sealing.seal_pieces(chunked(data), [i.to_public() for i in ids]))
    # Go age adds no grease stanza (pyrage does): the binary made this one.
    assert stanzas(blob) == 3
    for identity in ids:
        assert pyrage.decrypt(blob, [identity]) == data
    assert children() <= before


def test_with_the_binary_turned_off_pyrage_seals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(age_process.AGE_BINARY_ENV, "none")
    identity = x25519.Identity.generate()
    blob = b"".join(sealing.seal_pieces([b"hello"], [identity.to_public()]))
    assert stanzas(blob) == 2  # rage's grease stanza
    assert pyrage.decrypt(blob, [identity]) == b"hello"


def test_a_program_that_is_not_age_1_is_never_used(tmp_path: Path) -> None:
    script = tmp_path / "age"
    script.write_text("#!/bin/sh\necho 'age version 0.9'\n")
    script.chmod(0o700)
    assert age_process.find_age_binary({age_process.AGE_BINARY_ENV: str(script)}) is None
    assert age_process.find_age_binary({"PATH": str(tmp_path / "nowhere")}) is None
    found = age_process.find_age_binary({"PATH": os.path.dirname(age_cli.tool("age"))})
    assert found is not None and found.version.lstrip("v").startswith("1.")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{real} "$@" | /usr/bin/head -c 200000', "seals 19[0-9]{4} bytes"),
        ('exec {real} "$@" -r {extra}', "to 3 X25519 stanzas"),
        ("cat >/dev/null; echo 'no <b>such</b> key' >&2; exit 3", "failed \\(exit 3\\)"),
    ],
    ids=["truncated", "extra recipient", "exit status"],
)
def test_output_the_check_refuses_is_never_handed_over_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, reason: str
) -> None:
    before = children()
    extra = x25519.Identity.generate().to_public()
    script = wrapper(tmp_path, body.format(real=age_cli.tool("age"), extra=extra))
    monkeypatch.setenv(age_process.AGE_BINARY_ENV, script)
    mine, peer = (x25519.Identity.generate().to_public() for _ in range(2))
    data = os.urandom(2 * MIB)
    handed = 0
    with pytest.raises(DockerCommsError, match=reason):
        for piece in sealing.seal_pieces(chunked(data), [mine, peer]):
            handed += len(piece)
    # Whatever came out before the check, the consumer never got a whole file.
    assert handed < sealing.sealed_length(len(data), 200)
    assert children() <= before


def test_an_error_of_the_plaintext_source_is_raised_and_the_process_ended(
    use_binary: str,
) -> None:
    before = children()

    def pieces() -> Iterator[bytes]:
        yield os.urandom(MIB)
        raise ChunkError("file shrank while sending (chunk 0)")

    with pytest.raises(ChunkError, match="file shrank"):
        b"".join(sealing.seal_pieces(pieces(), [x25519.Identity.generate().to_public()]))
    assert children() <= before


def test_closing_the_stream_early_ends_the_process_and_the_source(use_binary: str) -> None:
    before = children()
    produced = 0

    def pieces() -> Iterator[bytes]:
        nonlocal produced
        for _ in range(256):
            produced += 1
            yield bytes(MIB)

    stream = sealing.seal_pieces(pieces(), [x25519.Identity.generate().to_public()])
    assert len(next(stream)) == sealing.SEAL_PIECE
    assert children() - before
    stream.close()
    assert children() <= before
    assert produced < 256


def test_status_says_what_seals(monkeypatch: pytest.MonkeyPatch) -> None:
    from dockercomms.core.status import sealing_engine

    monkeypatch.setenv(age_process.AGE_BINARY_ENV, age_cli.tool("age"))
    assert sealing_engine().startswith(f"age binary {age_cli.tool('age')} (")
    monkeypatch.setenv(age_process.AGE_BINARY_ENV, "none")
    assert sealing_engine().startswith("in process (pyrage")
