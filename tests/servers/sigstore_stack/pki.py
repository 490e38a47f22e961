"""Test certificate authorities: a Fulcio-style root + intermediate, and a TSA chain.

Profiles follow what cryptography's webpki verifier (used by sigstore-python)
insists on: critical BasicConstraints with a path length, critical KeyUsage,
SKI and AKI on every CA certificate, ECDSA P-384 with SHA-384.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_LIFETIME = timedelta(days=3650)


def name(common_name: str, organization: str = "dockercomms-test") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def serial() -> int:
    return secrets.randbits(159) | 1


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.DER)


def pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(Encoding.PEM).decode()


def _ca_certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    path_length: int,
    not_before: datetime,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial())
        .not_valid_before(not_before)
        .not_valid_after(not_before + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA384())
    )


@dataclass(frozen=True)
class CertificateAuthority:
    """A root and the intermediate that issues leaves (Fulcio's layout)."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey
    intermediate: x509.Certificate

    @classmethod
    def create(cls, label: str, not_before: datetime) -> CertificateAuthority:
        root_key = ec.generate_private_key(ec.SECP384R1())
        root_name = name(f"{label} root")
        root = _ca_certificate(root_name, root_key, root_name, root_key, 1, not_before)
        intermediate_key = ec.generate_private_key(ec.SECP384R1())
        intermediate = _ca_certificate(
            name(f"{label} intermediate"), intermediate_key, root_name, root_key, 0, not_before
        )
        return cls(root_key, root, intermediate_key, intermediate)

    @property
    def chain(self) -> list[x509.Certificate]:
        """Issuer first, root last: the order of a trusted root's ``certChain``."""
        return [self.intermediate, self.root]


@dataclass(frozen=True)
class TimestampingChain:
    """A TSA root and the timestamping leaf it certifies."""

    root: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate

    @classmethod
    def create(cls, label: str, not_before: datetime) -> TimestampingChain:
        root_key = ec.generate_private_key(ec.SECP384R1())
        root_name = name(f"{label} root")
        root = _ca_certificate(root_name, root_key, root_name, root_key, 0, not_before)
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(name(f"{label} signer"))
            .issuer_name(root_name)
            .public_key(leaf_key.public_key())
            .serial_number(serial())
            .not_valid_before(not_before)
            .not_valid_after(not_before + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            # RFC 3161 2.3: the only purpose, and critical; rfc3161-client checks both.
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                critical=False,
            )
            .sign(root_key, hashes.SHA384())
        )
        return cls(root, leaf_key, leaf)

    @property
    def chain(self) -> list[x509.Certificate]:
        """Leaf first, root last: the order of a trusted root's TSA ``certChain``."""
        return [self.leaf, self.root]
