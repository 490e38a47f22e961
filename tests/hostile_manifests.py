"""Manifests no honest tool writes, placed in a repository the way an attacker would.

Caveats first:

* The embedded registry parses what is pushed to it, so a manifest it would
  refuse (or choke on) is written straight into the OCI layout, as anyone who
  can write the shared folder could. A distribution server takes it over HTTP
  (Go's JSON decoder accepts 10,000 levels and ignores unknown fields).
* Both kinds are tagged like real messages or receipts, so every reader that
  lists the repository meets them.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import filelock

from dockercomms.core import protocol as p
from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core._internal.signatures import push_empty_config

#: Deeper than Python's recursion limit (1,000), shallower than Go's JSON limit.
DEPTH = 5000


def deep_manifest(artifact_type: str = p.MESSAGE_ARTIFACT_TYPE) -> bytes:
    """A valid-looking OCI manifest carrying a field nested ``DEPTH`` levels deep."""
    head = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": p.OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": p.EMPTY_CONFIG_DESCRIPTOR,
            "layers": [],
        },
        separators=(",", ":"),
    ).encode()
    return head[:-1] + b',"x":' + b"[" * DEPTH + b"]" * DEPTH + b"}"


def inbox_tag(recipient: str) -> str:
    """A fresh ``inbox-<rt>-...`` tag for ``recipient``."""
    return p.message_tag(recipient, datetime.now(UTC), p.new_message_id(), p.new_message_id())


def plant(client: RegistryClient, raw: bytes, tag: str) -> str:
    """Put manifest bytes under ``tag`` whatever they contain; their digest."""
    push_empty_config(client)
    layout = client.ref.layout_dir
    if layout is None:
        return client.push_manifest(raw, tag).digest
    return _plant_in_layout(Path(layout), raw, tag)


def _plant_in_layout(layout: Path, raw: bytes, tag: str) -> str:
    digest = p.sha256_digest(raw)
    blob = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(raw)
    entry = {
        "mediaType": p.OCI_MANIFEST,
        "digest": digest,
        "size": len(raw),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }
    index_path = layout / "index.json"
    with filelock.FileLock(layout / "index.json.lock"):
        index = json.loads(index_path.read_bytes())
        index["manifests"] = [*index["manifests"], entry]
        staged = layout / f".plant-{uuid.uuid4().hex}.json"
        staged.write_text(json.dumps(index, separators=(",", ":")))
        os.replace(staged, index_path)
    return digest
