"""``gc`` against an attacker: it deletes only what verified facts make mine.

Anyone who can push can attach a "bundle" or "receipt" to my message, point its
layer at someone else's blob, or push manifests no parser likes. My ``gc`` (hourly
in the mount, with my delete rights) must neither be turned against another's
blobs nor stopped. Runs on both backends unless the attack needs the disk.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dockercomms.core import protocol as p
from dockercomms.core._internal import manifest as m
from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core._internal.signatures import push_empty_config
from dockercomms.core.garbage import GarbageCollector, load_journal
from tests.conftest import Party
from tests.e2e.test_gc import exists, send, traces
from tests.forge import Forge, forge_bundle, plant_manifest


def collector(party: Party) -> GarbageCollector:
    """``party``'s gc, an hour from now: a 60-second message has expired, a week's has not."""
    later = datetime.now(UTC) + timedelta(hours=1)
    return GarbageCollector(party.workspace(), clock=lambda: later)


def descriptor_of(client: RegistryClient, digest: str) -> m.Descriptor:
    return m.Descriptor(p.OCI_MANIFEST, digest, len(client.fetch_manifest(digest)[0]))


def first_layer(client: RegistryClient, reference: str) -> m.Descriptor:
    layer = json.loads(client.fetch_manifest(reference)[0])["layers"][0]
    return m.Descriptor(layer["mediaType"], layer["digest"], layer["size"])


def bundle_blob_of(client: RegistryClient, subject: str) -> m.Descriptor:
    """The blob of the (one) bundle attached to ``subject`` by tag."""
    (tag,) = client.list_tags(p.bundle_tag_prefix(subject))
    return first_layer(client, tag)


def test_forged_attachments_cannot_turn_my_gc_against_anothers_blobs(
    alice_bob: tuple[Party, Party], tmp_path: Path
) -> None:
    alice, bob = alice_bob
    mine = send(
        alice, tmp_path, "mine.txt", b"alice's, soon gone\n", bob.name, "--ttl-seconds", "60"
    )
    bobs = send(bob, tmp_path, "bobs.txt", b"bob's, still live\n", alice.name)
    inbox = tmp_path / "bob-inbox"
    inbox.mkdir()
    assert bob.cli("recv", "--out", str(inbox)).code == 0  # bob's receipt for mine
    with bob.workspace().client() as client:
        (receipt_tag,) = client.list_tags(f"receipt-{mine[7:19]}-")
        receipt = client.fetch_manifest(receipt_tag)[1]
        my_chunk, my_bundle_blob = first_layer(client, mine), bundle_blob_of(client, mine)
        receipt_bundle_blob = bundle_blob_of(client, receipt)
        bobs_chunk, bobs_bundle_blob = first_layer(client, bobs), bundle_blob_of(client, bobs)
        # Mallory's claims: "this signs alice's message", "this signs bob's receipt".
        forge_bundle(client, descriptor_of(client, mine), bobs_chunk)
        forge_bundle(client, descriptor_of(client, receipt), bobs_bundle_blob)

    report = collector(alice).run_once()

    assert [e.digest for e in report.expired] == [mine] and report.errors == []
    with alice.workspace().client() as client:
        assert client.has_blob(bobs_chunk.digest), "a forged bundle's layer is not mine"
        assert client.has_blob(bobs_bundle_blob.digest), "a forged receipt bundle's neither"
        for blob in (my_chunk, my_bundle_blob, receipt_bundle_blob):
            assert not client.has_blob(blob.digest), f"{blob.digest} verified as mine: gone"
        # The claims about my message (forged ones included) went with it.
        assert not exists(client, mine) and traces(client, mine) == []
        assert not exists(client, receipt)
    assert alice.cli("verify", "--digest", bobs, "--chunks").code == 0


def test_a_live_manifest_of_any_kind_keeps_the_blobs_it_names(
    alice_bob: tuple[Party, Party], tmp_path: Path
) -> None:
    alice, bob = alice_bob
    mine = send(
        alice, tmp_path, "layer.tar", b"also an image layer\n", bob.name, "--ttl-seconds", "60"
    )
    with bob.workspace().client() as client:
        chunk = first_layer(client, mine)
        push_empty_config(client)
        image = m.dump(
            {
                "schemaVersion": 2,
                "mediaType": p.OCI_MANIFEST,
                "config": {"mediaType": p.OCI_EMPTY, "digest": p.EMPTY_CONFIG_DIGEST, "size": 2},
                "layers": [chunk.to_json()],
            }
        )
        client.push_manifest(image, "some-image-v1")

    report = collector(alice).run_once()

    assert [e.digest for e in report.expired] == [mine] and report.shared_blobs == 1
    with alice.workspace().client() as client:
        assert not exists(client, mine)
        assert client.has_blob(chunk.digest)
        assert client.fetch_manifest("some-image-v1")[0] == image


def test_while_a_manifest_cannot_be_read_no_blob_is_deleted(
    embedded_pair: tuple[Party, Party], tmp_path: Path
) -> None:
    alice, bob = embedded_pair
    mine = send(
        alice, tmp_path, "mine.txt", b"kept until gc can see all\n", bob.name, "--ttl-seconds", "60"
    )
    with bob.workspace().client() as client:
        chunk = first_layer(client, mine)
        unreadable = Forge(client, bob.workspace().signer(), bob.name).message(alice.name)
    layout = Path(alice.repo.removeprefix("oci-layout:"))
    damaged = layout / "blobs" / "sha256" / unreadable[7:]
    saved = damaged.read_bytes()
    os.truncate(damaged, 5 * 1024 * 1024)  # over the 4 MiB cap: it could name any blob
    gc = collector(alice)

    first = gc.run_once()

    assert [e.digest for e in first.expired] == [mine] and first.errors == []
    assert any("cannot read" in warning for warning in first.warnings), first.warnings
    assert [d.kind for d in first.deleted if d.kind == "blob"] == []
    assert chunk.digest in {d.digest for d in first.deferred}
    with alice.workspace().client() as client:
        assert not exists(client, mine), "manifests need no proof that nobody shares them"
        assert client.has_blob(chunk.digest)
    assert {d.digest for d in load_journal(gc.journal_path)} == {d.digest for d in first.deferred}

    damaged.write_bytes(saved)
    second = gc.run_once()

    assert chunk.digest in {d.digest for d in second.deleted} and second.warnings == []
    assert not gc.journal_path.exists()
    with alice.workspace().client() as client:
        assert not client.has_blob(chunk.digest)


def deeply_nested_message(forge: Forge, recipient: str) -> bytes:
    """A message manifest claiming ``forge.sender``, with a field nested 5,000 deep."""
    document = json.loads(m.build_message(forge.annotations(recipient, 0), []))
    document["x"] = 0
    return json.dumps(document).encode().replace(b'"x": 0', b'"x": ' + b"[" * 5000 + b"]" * 5000)


def test_gc_survives_hostile_manifests_and_carries_on(
    alice_bob: tuple[Party, Party], backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = alice_bob
    mine = send(
        alice, tmp_path, "mine.txt", b"deleted despite the noise\n", bob.name, "--ttl-seconds", "60"
    )
    storage = (
        Path(backend.removeprefix("oci-layout:")) if backend.startswith("oci-layout:") else None
    )
    old = p.format_timestamp(datetime.now(UTC) - timedelta(days=30))
    with bob.workspace().client() as client:
        claims_alice = Forge(client, bob.workspace().signer(), alice.name)
        huge_ttl = claims_alice.message(bob.name, **{p.A_TTL: "9" * 20, p.A_CREATED_AT: old})
        far_future = claims_alice.message(bob.name, **{p.A_CREATED_AT: "9999-12-31T23:59:59Z"})
        deep_tag = p.message_tag(
            bob.name, datetime.now(UTC), p.new_message_id(), p.new_message_id()
        )
        push_empty_config(client)
        deep = plant_manifest(
            client, storage, deeply_nested_message(claims_alice, bob.name), deep_tag
        )
    caplog.set_level(logging.INFO, logger="dockercomms")

    report = collector(alice).run_once()

    assert [e.digest for e in report.expired] == [mine] and report.errors == []
    with alice.workspace().client() as client:
        assert not exists(client, mine)
        assert all(exists(client, d) for d in (huge_ttl, far_future, deep))
    assert deep_tag in caplog.text
