"""Age identity files: creation, loading, rotation, and the stock age tools (core.age_keys)."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pyrage import x25519

from dockercomms.core._internal import sealing
from dockercomms.core.age_keys import (
    MAX_IDENTITIES,
    create_identity_file,
    load_identity_file,
    parse_identities,
    parse_recipient,
    recipient_problem,
    rotate_identity_file,
)
from dockercomms.core.errors import ConfigError
from tests import age_cli

WHEN = datetime(2026, 5, 1, 10, 0, 0, tzinfo=UTC)


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the process umask, which a test changes on purpose."""
    saved = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(saved)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077, 0o277])
def test_a_new_identity_file_is_exactly_0600_whatever_the_umask(
    tmp_path: Path, mask: int, umask: None
) -> None:
    os.umask(mask)
    path = tmp_path / "keys" / "age.key"
    keys = create_identity_file(path, now=WHEN)
    assert mode(path) == 0o600
    assert keys.recipient.startswith("age1")
    assert load_identity_file(path).recipient == keys.recipient


def test_the_file_has_the_form_age_keygen_writes(tmp_path: Path) -> None:
    path = tmp_path / "age.key"
    keys = create_identity_file(path, now=WHEN)
    lines = path.read_text().splitlines()
    assert lines[0] == "# created: 2026-05-01T10:00:00Z"
    assert lines[1] == f"# public key: {keys.recipient}"
    assert lines[2].startswith("AGE-SECRET-KEY-1")
    assert len(lines) == 3
    assert str(keys.current.identity.to_public()) == keys.recipient
    assert lines[2] not in repr(keys)


def test_creating_never_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "age.key"
    first = create_identity_file(path)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        create_identity_file(path)
    assert path.read_bytes() == before
    assert load_identity_file(path).recipient == first.recipient


@pytest.mark.parametrize("loose", [0o640, 0o604, 0o620, 0o644])
def test_loading_refuses_a_file_others_can_read_and_names_the_fix(
    tmp_path: Path, loose: int
) -> None:
    path = tmp_path / "age.key"
    create_identity_file(path)
    path.chmod(loose)
    with pytest.raises(ConfigError, match=f"run: chmod 600 {path}"):
        load_identity_file(path)


def test_the_stock_age_tool_reads_our_identity_file(tmp_path: Path) -> None:
    path = tmp_path / "age.key"
    keys = create_identity_file(path)
    sealed = age_cli.encrypt(b"for the stock tool", [keys.recipient])
    assert age_cli.decrypt(sealed, path) == b"for the stock tool"


def test_we_read_what_age_keygen_writes(tmp_path: Path) -> None:
    path = tmp_path / "keygen.txt"
    subprocess.run([age_cli.tool("age-keygen"), "-o", str(path)], capture_output=True, check=True)
    public = subprocess.run(
        [age_cli.tool("age-keygen"), "-y", str(path)], capture_output=True, check=True, text=True
    ).stdout.strip()
    keys = load_identity_file(path)
    assert keys.recipient == public
    assert keys.current.created  # age-keygen's "# created:" comment
    sealed = age_cli.encrypt(b"from the stock tool", [public])
    assert sealing.open_bytes(sealed, keys.identities, max_plaintext=100, what="x") == (
        b"from the stock tool"
    )


def test_rotation_puts_a_new_key_first_and_keeps_the_old_ones(tmp_path: Path) -> None:
    path = tmp_path / "age.key"
    first = create_identity_file(path, now=WHEN)
    old_message = age_cli.encrypt(b"sealed to the first key", [first.recipient])
    second = rotate_identity_file(path)
    third = rotate_identity_file(path)
    assert mode(path) == 0o600
    assert [k.recipient for k in third.keys] == [
        third.recipient,
        second.recipient,
        first.recipient,
    ]
    assert len({third.recipient, second.recipient, first.recipient}) == 3
    loaded = load_identity_file(path)
    assert [k.recipient for k in loaded.keys] == [k.recipient for k in third.keys]
    assert loaded.keys[-1].created == "2026-05-01T10:00:00Z"
    # Our code and the stock tool both open what was sealed to the oldest key.
    assert sealing.open_bytes(old_message, loaded.identities, max_plaintext=100, what="x") == (
        b"sealed to the first key"
    )
    assert age_cli.decrypt(old_message, path) == b"sealed to the first key"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["age.key"]  # no temp file left


def test_rotation_refuses_a_full_file(tmp_path: Path) -> None:
    path = tmp_path / "age.key"
    text = "".join(
        f"{x25519.Identity.generate()}\n" for _ in range(MAX_IDENTITIES)
    )  # written as age-keygen >> would, without comments
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, text.encode())
    os.close(fd)
    with pytest.raises(ConfigError, match="already holds 100"):
        rotate_identity_file(path)
    assert path.read_text() == text


def test_loading_refuses_what_is_not_an_identity_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no age identity file"):
        load_identity_file(tmp_path / "missing")
    with pytest.raises(ConfigError, match="not a regular file"):
        (tmp_path / "folder").mkdir(mode=0o700)
        load_identity_file(tmp_path / "folder")
    big = tmp_path / "big"
    fd = os.open(big, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"#" * (64 * 1024 + 1))
    os.close(fd)
    with pytest.raises(ConfigError, match="larger than"):
        load_identity_file(big)


def test_errors_name_the_line_never_its_secret() -> None:
    secret = str(x25519.Identity.generate())
    damaged = secret[:-3] + ("q" if secret[-3] != "q" else "p") + secret[-2:]
    for text, problem in [
        (f"# comment\n\n{damaged}\n", "line 3 is not a valid age X25519 identity"),
        (f"{secret}\n{secret.lower()}\n", "line 2 is not an age identity"),
        (f"{secret} \n", "line 1 is not a valid"),
        ("AGE-PLUGIN-YUBIKEY-1ABCDEF\n", "plugin identity"),
        ("# only comments\n", "holds no age identity"),
        ("é\n", "not ASCII"),
    ]:
        with pytest.raises(ConfigError, match=problem) as caught:
            parse_identities(text.encode(), "keys/age.key")
        assert secret not in caught.value.diagnostics()
        assert damaged not in caught.value.diagnostics()
    many = "".join(f"{x25519.Identity.generate()}\n" for _ in range(MAX_IDENTITIES + 1))
    with pytest.raises(ConfigError, match="more than 100"):
        parse_identities(many.encode(), "keys/age.key")


def test_recipients_are_checked_in_their_one_canonical_spelling() -> None:
    recipient = str(x25519.Identity.generate().to_public())
    assert recipient_problem(recipient) is None
    assert str(parse_recipient(recipient, "bob's age key")) == recipient
    for bad, problem in [
        (recipient.upper(), "starts with 'age1'"),
        ("AGE1" + recipient[4:].upper(), "starts with"),
        (recipient[:-1] + ("q" if recipient[-1] != "q" else "p"), "not a valid"),
        ("age1" + "q" * 200, "too long"),
        ("ssh-ed25519 AAAA", "starts with 'age1'"),
    ]:
        assert problem in (recipient_problem(bad) or "")
    with pytest.raises(ConfigError, match="bob's age key 'age1x\\\\x1b' is not an age recipient"):
        parse_recipient("age1x\x1b", "bob's age key")


def test_rotations_at_the_same_time_lose_no_key(tmp_path: Path) -> None:
    path = tmp_path / "age.key"
    first = create_identity_file(path)
    start = threading.Barrier(4)

    def rotate() -> str:
        start.wait()
        return rotate_identity_file(path).recipient

    with ThreadPoolExecutor(4) as pool:
        made = set(pool.map(lambda _: rotate(), range(4)))
    kept = [key.recipient for key in load_identity_file(path).keys]
    assert len(kept) == 5
    assert set(kept) == made | {first.recipient}
