"""Sealed recv (SPEC 9) of a large random file against plaintext recv, same run.

Target (#11): sealed ``recv`` of 1 GiB random <= 1.3x plaintext ``recv`` of the same
size (medians of the same run, embedded registry), peak RSS <= 150 MiB.

Caveats first:

* The sealed message is pushed by :func:`push_sealed`, SPEC 9 assembled from
  core's own pieces (``layer_stream``, ``seal_pieces``, ``span_sha256``,
  ``seal_annotation``), untimed: the sealed *send* is another suite's
  (``bench/sealed.py``). Only the two ``recv`` processes are timed.
* Each run sends new content, first in plaintext (``send``) and received, then
  sealed and received, each ``recv`` starting from a settled machine
  (``measure.settle``), so both pay the same page-cache and writeback state.
"""

from __future__ import annotations

import os
import shutil
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from bench.engine import dockercomms, identities
from bench.measure import MIB, Series, make_random, report, run_process, settle
from dockercomms.core import protocol
from dockercomms.core._internal import manifest
from dockercomms.core._internal.chunking import layer_stream, plan_chunks
from dockercomms.core._internal.sealed_message import (
    A_ENCRYPTION,
    A_SEALED,
    ENCRYPTION_AGE,
    SEALED_CHUNK_MEDIA_TYPES,
    SealedFacts,
    neutral_filename,
    seal_annotation,
    span_sha256,
)
from dockercomms.core._internal.sealing import seal_pieces
from dockercomms.core._internal.signatures import attach_bundle, push_empty_config
from dockercomms.core.age_keys import create_identity_file, load_identity_file, parse_recipient
from dockercomms.core.config import DEFAULT_CHUNK_BYTES
from dockercomms.core.paths import resolve_paths
from dockercomms.core.workspace import Workspace

TARGET_RATIO = 1.3
TARGET_RSS_MIB = 150


def _workspace(env: dict[str, str]) -> Workspace:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return Workspace.load(resolve_paths())
    finally:
        os.environ.clear()
        os.environ.update(saved)


def push_sealed(sender: Workspace, recipient: str, age_recipient: str, source: Path) -> str:
    """Push ``source`` sealed to ``age_recipient`` as SPEC 9 says; the manifest digest."""
    client = sender.client()
    recipients = [parse_recipient(age_recipient, "the recipient's age key")]
    total = source.stat().st_size
    spans = plan_chunks(total, DEFAULT_CHUNK_BYTES)
    media_type = SEALED_CHUNK_MEDIA_TYPES["zstd"]
    push_empty_config(client)
    layers, digests = [], []
    fd = os.open(source, os.O_RDONLY)
    try:
        for span in spans:
            with closing(seal_pieces(layer_stream(fd, span, "zstd"), recipients)) as sealed:
                blob = client.push_blob_stream(sealed, media_type)
            annotations = {protocol.A_CHUNK_INDEX: str(span.index)}
            layers.append(manifest.Descriptor(media_type, blob.digest, blob.size, annotations))
            digests.append(span_sha256(fd, span))
    finally:
        os.close(fd)
    message_id = protocol.new_message_id()
    created_at = datetime.now(UTC).replace(microsecond=0)
    annotations = manifest.message_annotations(
        sender=sender.identity,
        recipient=recipient,
        created_at=created_at,
        ttl_seconds=protocol.DEFAULT_TTL_SECONDS,
        message_id=message_id,
        filename=neutral_filename(message_id),
        total_bytes=total,
        chunk_bytes=DEFAULT_CHUNK_BYTES,
        chunk_count=len(spans),
        compression="zstd",
    )
    facts = SealedFacts(source.name, total, tuple(digests))
    annotations[A_ENCRYPTION] = ENCRYPTION_AGE
    annotations[A_SEALED] = seal_annotation(facts, recipients)
    raw = manifest.build_message(annotations, layers)
    pushed = client.push_manifest(raw)
    subject = manifest.Descriptor(protocol.OCI_MANIFEST, pushed.digest, len(raw))
    attach_bundle(client, subject, sender.signer().sign_digest(pushed.digest))
    tag = protocol.message_tag(recipient, created_at, message_id, message_id)
    client.push_manifest(raw, tag)
    return pushed.digest


def run(work: Path, size: int, runs: int) -> list[str]:
    """The sealed-recv suite; returns report lines."""
    lines = [
        f"sealed-recv suite: {size // MIB} MiB random, {runs} runs, embedded registry "
        "(the floor of the sealed ratio is the plaintext recv of the same run)"
    ]
    alice_env, bob_env = identities(work)
    alice, bob = _workspace(alice_env), _workspace(bob_env)
    identity_file = bob.paths.age_identity_file
    if not identity_file.exists():
        create_identity_file(identity_file)
    bob_age = load_identity_file(identity_file).recipient
    plain = Series("recv random, plaintext", size)
    sealed = Series("recv random, sealed", size)
    for n in range(runs):
        source = make_random(work / "random.bin", size, n)
        for series in (plain, sealed):
            if series is plain:
                run_process(dockercomms("send", str(source), "-r", "bob"), alice_env)
            else:
                push_sealed(alice, "bob", bob_age, source)
            out = work / f"out-{n}"
            settle(work, size)
            series.samples.append(
                run_process(
                    dockercomms("recv", "--out", str(out), "--no-write-receipt"), env=bob_env
                )
            )
            received = out / source.name
            if received.stat().st_size != size:
                raise RuntimeError(f"received {received} has the wrong size")
            shutil.rmtree(out)
        source.unlink()
    lines += [report(plain), report(sealed, plain, target=TARGET_RATIO)]
    for series in (plain, sealed):
        verdict = "OK" if series.median_rss <= TARGET_RSS_MIB * MIB else "MISSED"
        lines.append(f"  {series.name}: peak RSS target <= {TARGET_RSS_MIB} MiB: {verdict}")
    shutil.rmtree(work / "data", ignore_errors=True)
    return lines
