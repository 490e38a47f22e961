"""My key-pair signing key as the rest of dockercomms sees it: made once, shown, fingerprinted.

Caveats first:

* The private key never leaves ``core``: this module hands out its public half
  (PEM, what peers ``trust add``) and its fingerprint (the hint in every bundle
  I sign, what a peer reads back to check).
* A key is made only when asked (``create``), never over an existing file, and is
  refused when others can read it (``chmod 600``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dockercomms.core._internal.signing.keypair import (
    generate_key,
    key_hint,
    load_private_key,
    load_public_key,
    public_pem,
)

__all__ = ["SigningKey", "check_public_key", "signing_key"]


@dataclass(frozen=True)
class SigningKey:
    """The public facts of my signing key.

    Attributes:
        path: the private key file.
        fingerprint: base64 sha256 of the public key (the bundle hint).
        public_pem: the public key as PEM.
    """

    path: Path
    fingerprint: str
    public_pem: bytes


def signing_key(key_file: Path, *, create: bool = False) -> SigningKey:
    """The key in ``key_file`` (made there first if ``create`` and there is none)."""
    made = create and not key_file.exists()
    public = (generate_key(key_file) if made else load_private_key(key_file)).public_key()
    return SigningKey(key_file, key_hint(public), public_pem(public))


def check_public_key(pem: bytes) -> None:
    """Raise ``ConfigError`` unless ``pem`` is a P-256 public key (``key export --pem``)."""
    load_public_key(pem)
