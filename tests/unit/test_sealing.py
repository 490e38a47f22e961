"""One age file sealed and opened in bounded memory and work (core.sealing, SPEC 9)."""

from __future__ import annotations

import io
import os
import tempfile
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest
from pyrage import x25519

from dockercomms.core._internal import age_process, receive, sealing
from dockercomms.core._internal.chunking import ChunkSpan, layer_stream
from dockercomms.core.age_keys import AgeKeys, create_identity_file
from dockercomms.core.errors import (
    ChunkError,
    ConfigError,
    LimitExceededError,
    NotARecipientError,
    SealedDataError,
    SealedTamperedError,
    SealedTruncatedError,
    exit_code_for,
)
from tests import age_cli

KIB = 1024
MIB = 1024 * KIB


@pytest.fixture(autouse=True, params=["age binary", "pyrage"])
def sealer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here under both ways of sealing: the stock binary and pyrage in process."""
    chosen = age_cli.tool("age") if request.param == "age binary" else "none"
    monkeypatch.setenv(age_process.AGE_BINARY_ENV, chosen)
    return str(request.param)


def sealing_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in ("age-seal", "age-feed", "age-stderr")]


def identities(count: int) -> list[x25519.Identity]:
    return [x25519.Identity.generate() for _ in range(count)]


def public(ids: list[x25519.Identity]) -> list[x25519.Recipient]:
    return [identity.to_public() for identity in ids]


def sealed(data: bytes, recipients: list[x25519.Recipient], piece: int = 50_000) -> bytes:
    pieces = (data[i : i + piece] for i in range(0, len(data), piece))
    return b"".join(sealing.seal_pieces(pieces, recipients, piece_bytes=70_000))


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> age_cli.CountingDecrypt:
    """pyrage's real decrypt, counted: a refusal must come before any call."""
    wrapper = age_cli.CountingDecrypt()
    monkeypatch.setattr(pyrage, "decrypt_io", wrapper)
    return wrapper


@pytest.mark.parametrize("recipients", [1, 3])
@pytest.mark.parametrize("size", [0, 1, 64 * KIB, 64 * KIB + 1, 200_000])
def test_round_trip_every_recipient_opens(recipients: int, size: int, sealer: str) -> None:
    ids = identities(recipients)
    data = os.urandom(size)
    blob = sealed(data, public(ids))
    layout = sealing.inspect_header(blob, len(blob), what="x")
    assert layout.plaintext_bytes == size
    grease = 1 if sealer == "pyrage" else 0  # rage adds a "grease" stanza, Go age none
    assert layout.stanzas == recipients + grease
    assert sealing.sealed_length(size, layout.header_bytes) == len(blob)
    for identity in ids:
        assert sealing.open_bytes(blob, [identity], max_plaintext=size, what="x") == data
        out = io.BytesIO()
        assert sealing.open_into(blob, out, [identity], what="x") == size
        assert out.getvalue() == data


def test_in_place_in_both_kinds_of_blob_spool(monkeypatch: pytest.MonkeyPatch) -> None:
    """The receive path's spool, in memory and spilled to a temp file, decrypts over itself."""
    [identity] = identities(1)
    data = os.urandom(300_000)
    blob = sealed(data, public([identity]))
    for spill_above in (receive.SPOOL_IN_MEMORY, 1000):
        monkeypatch.setattr(receive, "SPOOL_IN_MEMORY", spill_above)
        with receive.BlobSpool(len(blob)) as spool:
            spool.write(blob)
            plain = sealing.open_in_place(spool.contents(), [identity], what="chunk 0")
            got = bytes(plain) if isinstance(plain, memoryview) else plain.read()
        assert got == data


def test_in_place_refuses_read_only_bytes() -> None:
    [identity] = identities(1)
    blob = sealed(b"x", public([identity]))
    with pytest.raises(TypeError):
        sealing.open_in_place(blob, [identity], what="x")


def test_sealed_to_someone_else_is_a_clear_verification_error() -> None:
    mine, theirs = identities(2)
    blob = sealed(b"secret", public([theirs]))
    with pytest.raises(NotARecipientError, match="sealed to someone else") as caught:
        sealing.open_bytes(blob, [mine], max_plaintext=100, what="chunk 2")
    assert exit_code_for(caught.value) == 2


def test_a_rotated_out_identity_still_opens_what_was_sealed_to_it() -> None:
    old, new = identities(2)
    blob = sealed(b"old message", public([old]))
    assert sealing.open_bytes(blob, [new, old], max_plaintext=100, what="x") == b"old message"


def test_a_chunk_we_seal_opens_with_the_stock_age_tool(tmp_path: Path) -> None:
    keys: AgeKeys = create_identity_file(tmp_path / "age.key")
    other = identities(1)
    source = tmp_path / "file"
    source.write_bytes(os.urandom(100_000) + bytes(100_000))
    span = ChunkSpan(0, 0, 200_000)
    with source.open("rb") as f:
        layer = b"".join(layer_stream(f.fileno(), span, "zstd"))
    recipients = [x25519.Recipient.from_str(keys.recipient), *public(other)]
    blob = b"".join(sealing.seal_pieces(iter([layer]), recipients))
    assert age_cli.decrypt(blob, tmp_path / "age.key") == layer


def test_what_the_stock_age_tool_seals_opens_with_ours() -> None:
    ids = identities(2)
    data = os.urandom(150_000)
    blob = age_cli.encrypt(data, [str(r) for r in public(ids)])
    for identity in ids:
        buffer = bytearray(blob)
        assert sealing.open_in_place(buffer, [identity], what="x") == data


def test_ten_thousand_stanzas_are_refused_before_any_crypto(
    counting: age_cli.CountingDecrypt,
) -> None:
    """Tiny stanzas (60 KB for 10,000) pass the size cap; the count stops them."""
    [identity] = identities(1)
    header = sealing.VERSION_LINE + b"-> x\n\n" * 10_000 + b"--- " + b"A" * 43 + b"\n"
    assert len(header) < sealing.MAX_HEADER_BYTES
    blob = header + bytes(16) + bytes(100)
    with pytest.raises(LimitExceededError, match="more than 64 recipient stanzas"):
        sealing.open_bytes(blob, [identity], max_plaintext=1000, what="chunk 0")
    assert counting.calls == 0


def test_a_megabyte_header_is_refused_before_any_crypto(
    counting: age_cli.CountingDecrypt,
) -> None:
    """10,000 real X25519 stanzas: never 10,000 key agreements."""
    [identity] = identities(1)
    blob = pyrage.encrypt(b"x", public(identities(1)))
    stanza_end = blob.index(b"\n--- ") + 1
    real_stanza = blob[len(sealing.VERSION_LINE) : stanza_end]
    header = sealing.VERSION_LINE + real_stanza * (MIB // len(real_stanza))
    hostile = header + blob[stanza_end:]
    with pytest.raises(LimitExceededError, match="header larger than"):
        sealing.open_bytes(hostile, [identity], max_plaintext=1000, what="chunk 0")
    with pytest.raises(LimitExceededError):
        sealing.open_in_place(bytearray(hostile), [identity], what="chunk 0")
    assert counting.calls == 0


def test_plaintext_beyond_the_cap_is_refused_before_any_crypto(
    counting: age_cli.CountingDecrypt,
) -> None:
    [identity] = identities(1)
    blob = sealed(os.urandom(10_000), public([identity]))
    with pytest.raises(LimitExceededError, match="more than 9999"):
        sealing.open_bytes(blob, [identity], max_plaintext=9_999, what="x")
    assert counting.calls == 0
    assert len(sealing.open_bytes(blob, [identity], max_plaintext=10_000, what="x")) == 10_000
    assert counting.calls == 1


@pytest.mark.parametrize(
    ("cut", "refused_unread"),
    [
        (10, True),  # inside the version line
        (60, True),  # inside the header
        (-(200_000 + 4 * 16 + 8), True),  # inside the nonce
        (-1, False),  # inside the last block
        (-(200_000 - 3 * 64 * KIB + 16), False),  # exactly after a whole block
    ],
)
def test_a_truncated_stream_is_a_truncation(
    cut: int, refused_unread: bool, counting: age_cli.CountingDecrypt
) -> None:
    [identity] = identities(1)
    blob = sealed(os.urandom(200_000), public([identity]))
    with pytest.raises(SealedTruncatedError) as caught:
        sealing.open_bytes(blob[:cut], [identity], max_plaintext=200_000, what="chunk 5")
    assert "chunk 5" in str(caught.value)
    assert (counting.calls == 0) is refused_unread
    assert exit_code_for(caught.value) == 4


def test_a_flipped_payload_byte_is_tampering() -> None:
    [identity] = identities(1)
    blob = bytearray(sealed(os.urandom(200_000), public([identity])))
    header = sealing.inspect_header(bytes(blob), len(blob), what="x").header_bytes
    blob[header + 16 + 70_000] ^= 0x01  # inside block 2 of 4
    with pytest.raises(SealedTamperedError, match="block 2 of 4"):
        sealing.open_bytes(blob, [identity], max_plaintext=200_000, what="chunk 1")


def test_a_flipped_header_mac_is_tampering() -> None:
    [identity] = identities(1)
    blob = bytearray(sealed(b"data", public([identity])))
    at = bytes(blob).index(b"\n--- ") + 6
    blob[at] = ord("B") if blob[at] == ord("A") else ord("A")  # still base64, another MAC
    with pytest.raises(SealedTamperedError, match="header"):
        sealing.open_bytes(blob, [identity], max_plaintext=100, what="x")


@pytest.mark.parametrize(
    "blob",
    [
        b"not age at all",
        b"-----BEGIN AGE ENCRYPTED FILE-----\n",  # armor: we only read binary age
        sealing.VERSION_LINE + b"--- " + b"A" * 43 + b"\n" + bytes(32),  # no stanza
        sealing.VERSION_LINE + b"-> x\n\n--- " + b"!" * 43 + b"\n" + bytes(32),  # bad MAC line
    ],
)
def test_malformed_headers_are_refused_before_any_crypto(
    blob: bytes, counting: age_cli.CountingDecrypt
) -> None:
    with pytest.raises(SealedDataError):
        sealing.open_bytes(blob, identities(1), max_plaintext=100, what="x")
    assert counting.calls == 0


def test_an_invalid_stanza_is_a_clear_error_not_a_pyrage_one() -> None:
    [identity] = identities(1)
    blob = sealing.VERSION_LINE + b"-> X25519 short\n\n--- " + b"A" * 43 + b"\n" + bytes(32)
    with pytest.raises(SealedDataError, match="invalid age header"):
        sealing.open_bytes(blob, [identity], max_plaintext=100, what="x")


def test_no_identity_and_too_many_recipients_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="no age identity"):
        sealing.open_bytes(b"", [], max_plaintext=1, what="x")
    many = public(identities(sealing.MAX_SEAL_RECIPIENTS + 1))
    with pytest.raises(ConfigError, match="at most 63"):
        sealing.seal_pieces([b"x"], many)
    assert len(sealing.recipient_list(many[:2] + many[:2])) == 2


def test_an_error_of_the_plaintext_source_is_raised_as_it_was() -> None:
    def pieces() -> Iterator[bytes]:
        yield b"x" * 100_000
        raise ChunkError("file shrank while sending (chunk 0)")

    with pytest.raises(ChunkError, match="file shrank"):
        b"".join(sealing.seal_pieces(pieces(), public(identities(1))))
    assert not sealing_threads()


def test_closing_the_stream_early_stops_the_worker() -> None:
    produced = 0

    def pieces() -> Iterator[bytes]:
        nonlocal produced
        for _ in range(64):
            produced += 1
            yield bytes(MIB)

    stream = sealing.seal_pieces(pieces(), public(identities(1)))
    assert len(next(stream)) >= sealing.SEAL_PIECE
    stream.close()
    assert not sealing_threads()
    assert produced < 64


def test_a_32_mib_chunk_is_never_held_twice() -> None:
    """Sealing streams and opening decrypts over the ciphertext: Python allocates little."""
    [identity] = identities(1)
    data = os.urandom(32 * MIB)
    tracemalloc.start()
    try:
        pieces = (memoryview(data)[i : i + MIB] for i in range(0, len(data), MIB))
        out: list[bytes] = []
        before = tracemalloc.get_traced_memory()[0]
        for piece in sealing.seal_pieces(pieces, [identity.to_public()]):
            out.append(piece)
        # What it yielded is ~32 MiB; everything else must stay at a few pieces.
        seal_extra = tracemalloc.get_traced_memory()[1] - before - sum(map(len, out))
        blob = bytearray(b"".join(out))
        del out
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        plain = sealing.open_in_place(blob, [identity], what="chunk 0")
        open_extra = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert plain == data
    assert seal_extra < 8 * MIB
    assert open_extra < 1 * MIB


def test_in_place_on_a_spilled_blob_cuts_the_file_to_its_plaintext() -> None:
    [identity] = identities(1)
    data = os.urandom(70_000)
    with tempfile.TemporaryFile() as f:
        f.write(sealed(data, public([identity])))
        plain = sealing.open_in_place(f, [identity], what="x")
        assert plain is f
        assert os.fstat(f.fileno()).st_size == len(data)
        assert f.read() == data
