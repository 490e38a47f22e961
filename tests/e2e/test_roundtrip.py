"""send -> recv -> verify -> ack through the CLI, on the embedded registry and distribution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dockercomms.core import protocol as p
from dockercomms.core._internal.listing import BATCH
from tests.conftest import Party

CHUNK = 4096


def write(path: Path, size: int, *, seed: int = 0) -> Path:
    path.write_bytes(bytes((i * 31 + seed) % 256 for i in range(size)))
    return path


def send(alice: Party, path: Path, to: str, *extra: str) -> dict[str, str]:
    sent: dict[str, str] = json.loads(
        alice.ok("send", str(path), "--recipient", to, "--json", *extra)
    )
    return sent


def recv(bob: Party, out: Path, *extra: str) -> list[dict[str, object]]:
    outcomes: list[dict[str, object]] = json.loads(
        bob.ok("recv", "--out", str(out), "--json", *extra)
    )
    return outcomes


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
@pytest.mark.parametrize(
    "size", [0, 1, CHUNK, 3 * CHUNK + 17], ids=["0B", "1B", "boundary", "multi"]
)
def test_round_trip(
    alice_bob: tuple[Party, Party], tmp_path: Path, size: int, compression: str
) -> None:
    alice, bob = alice_bob
    source = write(tmp_path / f"file-{size}.bin", size)
    sent = send(alice, source, bob.name, "--chunk-bytes", str(CHUNK), "--compress", compression)
    assert sent["tag"].startswith(p.inbox_prefix(bob.name))
    outcomes = recv(bob, tmp_path / "out")
    assert [o["status"] for o in outcomes] == ["received"]
    received = Path(str(outcomes[0]["path"]))
    assert received.read_bytes() == source.read_bytes()
    assert received.name == source.name
    assert oct(received.stat().st_mode & 0o777) == oct(0o600)


def test_recv_is_idempotent_and_acks_once(alice_bob: tuple[Party, Party], tmp_path: Path) -> None:
    alice, bob = alice_bob
    sent = send(alice, write(tmp_path / "a.txt", 100), bob.name)
    first = recv(bob, tmp_path / "out")
    assert first[0]["status"] == "received" and first[0]["receipt"]
    second = recv(bob, tmp_path / "out")
    assert [o["status"] for o in second] == ["already-received"]
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == ["a.txt"]
    client = alice.workspace().client()
    receipts = client.list_tags(f"receipt-{sent['digest'][7:19]}-")
    assert len(receipts) == 1


def test_name_collision_gets_a_readable_suffix(
    alice_bob: tuple[Party, Party], tmp_path: Path
) -> None:
    alice, bob = alice_bob
    out = tmp_path / "out"
    out.mkdir()
    (out / "same.txt").write_text("already here\n")
    send(alice, write(tmp_path / "same.txt", 10), bob.name)
    outcome = recv(bob, out)[0]
    assert (out / "same.txt").read_text() == "already here\n"
    assert Path(str(outcome["path"])).name.startswith("same (")


def test_ack_and_verify_receipt(alice_bob: tuple[Party, Party], tmp_path: Path) -> None:
    alice, bob = alice_bob
    sent = send(alice, write(tmp_path / "r.txt", 10), bob.name)
    ack = json.loads(
        bob.ok("ack", "--for", sent["digest"], "--status", "rejected", "--reason", "no", "--json")
    )
    verified = json.loads(alice.ok("verify", "--digest", ack["digest"], "--json"))
    assert verified["kind"] == "receipt"
    assert verified["status"] == "rejected" and verified["reason"] == "no"
    assert verified["signer"]["name"] == "bob"


def test_verify_message_with_chunks(alice_bob: tuple[Party, Party], tmp_path: Path) -> None:
    alice, bob = alice_bob
    sent = send(alice, write(tmp_path / "v.bin", 3 * CHUNK), bob.name, "--chunk-bytes", str(CHUNK))
    result = json.loads(bob.ok("verify", "--digest", sent["digest"], "--chunks", "--json"))
    assert result["verified"] and result["chunks_verified"]
    assert result["sender"] == "alice@example.com"


def test_bundle_discovery_paths(
    alice_bob: tuple[Party, Party], tmp_path: Path, backend: str
) -> None:
    alice, bob = alice_bob
    sent = send(alice, write(tmp_path / "d.txt", 10), bob.name)
    assert bob.cli("verify", "--digest", sent["digest"], "--bundle", "tag").code == 0
    referrers = bob.cli("verify", "--digest", sent["digest"], "--bundle", "referrers")
    if backend.startswith("oci-layout:"):
        assert referrers.code == 0  # the embedded registry serves the referrers API
    else:
        assert referrers.code == 2  # distribution 2.8 has none: the fallback index is needed
        client = alice.workspace().client()
        assert p.referrers_fallback_tag(sent["digest"]) in client.list_tags("sha256-")


def test_ls_shows_verified_state(alice_bob: tuple[Party, Party], tmp_path: Path) -> None:
    alice, bob = alice_bob
    send(alice, write(tmp_path / "l.txt", 42), bob.name)
    rows = json.loads(bob.ok("ls", "--json"))
    assert [(r["filename"], r["total_bytes"], r["verified"]) for r in rows] == [("l.txt", 42, True)]


def test_ls_checks_in_batches_and_lists_each_message_once(
    alice_bob: tuple[Party, Party], tmp_path: Path
) -> None:
    """More messages than two batches (parallel over HTTP), one under a second tag."""
    alice, bob = alice_bob
    count = 2 * BATCH + 3
    sent = [
        send(alice, write(tmp_path / f"n{n:02d}.txt", n + 1, seed=n), bob.name)
        for n in range(count)
    ]
    with bob.workspace().client() as client:
        raw, _ = client.fetch_manifest(sent[0]["tag"])
        message = bob.workspace().receiver(client).fetch_message(sent[0]["tag"])
        alias = p.message_tag(bob.name, message.created_at, p.new_message_id(), message.message_id)
        client.push_manifest(raw, alias)
    rows = json.loads(bob.ok("ls", "--json"))  # ordered by second, then by tag
    assert sorted((r["filename"], r["total_bytes"], r["verified"]) for r in rows) == [
        (f"n{n:02d}.txt", n + 1, True) for n in range(count)
    ]


def test_since_and_max(alice_bob: tuple[Party, Party], tmp_path: Path) -> None:
    alice, bob = alice_bob
    for n in range(3):
        send(alice, write(tmp_path / f"m{n}.txt", 5, seed=n), bob.name)
    assert recv(bob, tmp_path / "none", "--since", "2999-01-01") == []
    limited = recv(bob, tmp_path / "out", "--max", "2")
    assert [o["status"] for o in limited] == ["received", "received"]
    rest = recv(bob, tmp_path / "out")
    assert sorted(o["status"] for o in rest) == ["already-received", "already-received", "received"]


def test_not_found_and_config_errors(alice_bob: tuple[Party, Party], tmp_path: Path) -> None:
    _, bob = alice_bob
    missing = bob.cli("verify", "--digest", p.sha256_digest(b"nothing"))
    assert missing.code == 5, missing.err
    unconfigured = Party("nobody", tmp_path / "nobody", bob.repo, bob.data_home)
    result = unconfigured.cli("ls")
    assert result.code == 1 and "dockercomms init" in result.err


def test_concurrent_sends_share_one_layout(
    embedded_pair: tuple[Party, Party], tmp_path: Path
) -> None:
    """Two processes sending at once into one OCI layout leave it consistent."""
    alice, bob = embedded_pair
    files = [write(tmp_path / f"c{n}.bin", 20_000, seed=n) for n in range(8)]
    procs = []
    try:
        for half in (files[:4], files[4:]):
            script = (
                "import sys\nfrom dockercomms.cli.main import main\n"
                "for f in sys.argv[1:]:\n"
                "    assert main(['send', f, '--recipient', 'bob', '--chunk-bytes', '4096']) == 0\n"
            )
            env = {**os.environ, **alice.env}
            procs.append(subprocess.Popen([sys.executable, "-c", script, *map(str, half)], env=env))
        for proc in procs:
            assert proc.wait(timeout=120) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outcomes = recv(bob, tmp_path / "out")
    assert sorted(o["filename"] for o in outcomes if o["status"] == "received") == sorted(
        f.name for f in files
    )
    for f in files:
        assert (tmp_path / "out" / f.name).read_bytes() == f.read_bytes()


def test_two_messages_with_one_long_name_both_arrive(
    alice_bob: tuple[Party, Party], tmp_path: Path
) -> None:
    """The collision name is shortened on a character boundary to fit 255 bytes."""
    alice, bob = alice_bob
    name = "é" * 120 + ".txt"  # 244 bytes: the suffixed name would not fit
    for n in range(2):
        folder = tmp_path / f"from-{n}"
        folder.mkdir()
        send(alice, write(folder / name, 10 + n, seed=n), bob.name)
    out = tmp_path / "out"
    outcomes = recv(bob, out)
    assert [o["status"] for o in outcomes] == ["received", "received"]
    names = sorted(os.listdir(out))
    assert name in names and len(names) == 2
    assert all(len(n.encode()) <= 255 and n.endswith(".txt") for n in names)
    assert sorted(f.stat().st_size for f in out.iterdir()) == [10, 11]
