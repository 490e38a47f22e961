"""An in-process certificate transparency log that only issues precert SCTs.

Fulcio embeds the SCT in the certificate it is about, so the SCT can only sign
the *pre*certificate: the TBS without the SCT extension (RFC 6962 3.2). That is
what sigstore-python rebuilds from ``tbs_precertificate_bytes``, provided the
SCT extension is the last one and every other field is reused unchanged.
"""

from __future__ import annotations

import hashlib
import struct

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from . import der

SCT_LIST_OID = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
_V1 = 0
_CERTIFICATE_TIMESTAMP = 0
_PRECERT_ENTRY = 1
_SHA256_ECDSA = b"\x04\x03"


def spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


class CTLog:
    """A P-256 log key; ``log_id`` is sha256 of its SubjectPublicKeyInfo."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.public_key_der = spki(self.key.public_key())
        self.log_id = hashlib.sha256(self.public_key_der).digest()

    def sct_extension(
        self, precert_tbs: bytes, issuer: x509.Certificate, timestamp_ms: int
    ) -> x509.UnrecognizedExtension:
        """The SCT list extension for a leaf whose TBS (sans SCTs) is ``precert_tbs``."""
        issuer_key_hash = hashlib.sha256(spki(_ec(issuer.public_key()))).digest()
        signed = (
            struct.pack("!BBQH", _V1, _CERTIFICATE_TIMESTAMP, timestamp_ms, _PRECERT_ENTRY)
            + issuer_key_hash
            + len(precert_tbs).to_bytes(3, "big")
            + precert_tbs
            + struct.pack("!H", 0)  # no CT extensions
        )
        signature = self.key.sign(signed, ec.ECDSA(hashes.SHA256()))
        sct = (
            bytes([_V1])
            + self.log_id
            + struct.pack("!QH", timestamp_ms, 0)
            + _SHA256_ECDSA
            + struct.pack("!H", len(signature))
            + signature
        )
        sct_list = struct.pack("!HH", len(sct) + 2, len(sct)) + sct
        return x509.UnrecognizedExtension(SCT_LIST_OID, der.octet_string(sct_list))


def _ec(key: object) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise TypeError("test CAs use EC keys only")
    return key
