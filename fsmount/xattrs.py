"""The ``user.dockercomms.*`` extended attributes, named once.

Attributes with no value (an issuer for a key-signed message, a receipt not
received yet) are left out rather than shown empty, so ``getfattr -d`` lists
only what is known and ``getfattr -n`` on a missing one fails with ``ENODATA``.

Values are stored as given: callers pass verified values, or untrusted ones
already escaped with :func:`~dockercomms.core.untrusted.shown` (``error``,
``claimed_sender``, ``claimed_filename``), so nothing is escaped twice.
"""

from __future__ import annotations

from datetime import datetime

from dockercomms.core import protocol

PREFIX = "user.dockercomms."

#: Root: the status JSON (``getfattr -n user.dockercomms.status MOUNTPOINT``).
STATUS = PREFIX + "status"
#: Root: any value triggers an inbox poll (``setfattr -n user.dockercomms.refresh``).
REFRESH = PREFIX + "refresh"

#: The per-file attributes, in the order ``listxattr`` shows them.
FILE_KEYS = (
    "sender",
    "recipient",
    "digest",
    "verified",
    "signer_identity",
    "issuer",
    "created_at",
    "expires_at",
    "receipt",
    "sealed",
    "state",
    "error",
    "claimed_sender",
    "claimed_filename",
)


def timestamp(moment: datetime | None) -> str | None:
    """RFC 3339 UTC, as in the manifests."""
    return protocol.format_timestamp(moment) if moment is not None else None


def encode(values: dict[str, str | None]) -> dict[str, bytes]:
    """``{"digest": "sha256:..."}`` -> ``{"user.dockercomms.digest": b"sha256:..."}``."""
    return {
        PREFIX + key: value.encode("utf-8")
        for key in FILE_KEYS
        if (value := values.get(key)) is not None and value != ""
    }
