"""The in-toto statement and DSSE pre-authentication encoding we sign (SPEC 3).

Both signing modes sign the same thing: a DSSE envelope whose payload is an
in-toto Statement v1 naming the manifest digest, as ``cosign sign`` does. Keeping
the statement in one place means key-pair and keyless bundles cannot drift apart.
"""

from __future__ import annotations

import json

from dockercomms.core.protocol import (
    COSIGN_PREDICATE_TYPE,
    DSSE_PAYLOAD_TYPE,
    IN_TOTO_STATEMENT_TYPE,
    check_digest,
)


def statement_for(manifest_digest: str) -> dict[str, object]:
    """The in-toto Statement v1 whose only subject is the manifest digest."""
    hex_digest = check_digest(manifest_digest).split(":", 1)[1]
    return {
        "_type": IN_TOTO_STATEMENT_TYPE,
        "subject": [{"name": manifest_digest, "digest": {"sha256": hex_digest}}],
        "predicateType": COSIGN_PREDICATE_TYPE,
        "predicate": {},
    }


def statement_bytes(manifest_digest: str) -> bytes:
    """Compact JSON of :func:`statement_for`; the exact DSSE payload we sign."""
    return json.dumps(statement_for(manifest_digest), separators=(",", ":")).encode()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature actually covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def signed_digests(payload_type: str, payload: bytes) -> list[str]:
    """The sha256 subject digests a DSSE payload claims, as ``sha256:<hex>``.

    Raises ``ValueError`` for anything that is not an in-toto statement of ours,
    so callers treat it as a signature that does not cover the manifest.
    """
    if payload_type != DSSE_PAYLOAD_TYPE:
        raise ValueError(f"unexpected DSSE payload type {payload_type!r}")
    statement = json.loads(payload)
    if not isinstance(statement, dict) or statement.get("_type") != IN_TOTO_STATEMENT_TYPE:
        raise ValueError("DSSE payload is not an in-toto Statement v1")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise ValueError("in-toto statement has no subject")
    found = []
    for subject in subjects:
        digest = subject.get("digest", {}) if isinstance(subject, dict) else {}
        value = digest.get("sha256") if isinstance(digest, dict) else None
        if isinstance(value, str):
            found.append(f"sha256:{value.lower()}")
    if not found:
        raise ValueError("in-toto statement has no sha256 subject digest")
    return found
