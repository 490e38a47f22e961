"""The in-toto statement and DSSE pre-authentication encoding we sign (SPEC 3).

Both signing modes sign the same thing: a DSSE envelope whose payload is an
in-toto Statement v1 naming the manifest digest, as ``cosign sign`` does. Keeping
the statement in one place means key-pair and keyless bundles cannot drift apart.

Caveat first: a key signs many statements (SBOMs, provenance, other tools'
attestations). Only one kind is a message signature: ``predicateType``
``https://sigstore.dev/cosign/sign/v1`` with exactly one subject, the manifest
digest. :func:`signed_digest` is the one reader of that rule, for both modes.
"""

from __future__ import annotations

import json
import re

from dockercomms.core._internal.limits import DEFAULT_LIMITS
from dockercomms.core.errors import DockerCommsError
from dockercomms.core.protocol import (
    COSIGN_PREDICATE_TYPE,
    DSSE_PAYLOAD_TYPE,
    IN_TOTO_STATEMENT_TYPE,
    check_digest,
)
from dockercomms.core.untrusted import parse_json_object

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


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


def signed_digest(payload_type: str, payload: bytes) -> str:
    """The manifest digest a DSSE payload signs, as ``sha256:<hex>``.

    The payload must be an in-toto Statement v1 with ``predicateType`` exactly
    ``https://sigstore.dev/cosign/sign/v1`` and exactly one subject whose sha256
    is lowercase hex (SPEC 3). Raises ``ValueError`` for anything else, so callers
    treat it as a signature that does not cover the manifest.
    """
    if payload_type != DSSE_PAYLOAD_TYPE:
        raise ValueError(f"unexpected DSSE payload type {payload_type[:80]!r}")
    try:
        # The payload sits inside a bundle, so the bundle's cap bounds it too.
        statement = parse_json_object(
            payload, "DSSE payload", max_bytes=DEFAULT_LIMITS.max_bundle_bytes
        )
    except DockerCommsError as exc:
        raise ValueError(str(exc)) from exc
    if statement.get("_type") != IN_TOTO_STATEMENT_TYPE:
        raise ValueError("DSSE payload is not an in-toto Statement v1")
    predicate_type = statement.get("predicateType")
    if predicate_type != COSIGN_PREDICATE_TYPE:
        # An attestation (SBOM, provenance) about the manifest is not a signature of it.
        raise ValueError(
            f"statement predicateType is {str(predicate_type)[:80]!r}, "
            f"expected {COSIGN_PREDICATE_TYPE!r}"
        )
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1:
        raise ValueError("in-toto statement must have exactly one subject")
    digest = subjects[0].get("digest") if isinstance(subjects[0], dict) else None
    value = digest.get("sha256") if isinstance(digest, dict) else None
    if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
        raise ValueError("in-toto statement subject has no lowercase hex sha256 digest")
    return f"sha256:{value}"
