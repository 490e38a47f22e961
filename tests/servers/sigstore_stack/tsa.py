"""A test RFC 3161 timestamp authority.

Neither cryptography nor rfc3161-client can build a TimeStampResp, so the reply
is assembled with :mod:`.der`: a CMS SignedData over a TSTInfo that echoes the
request's message imprint and nonce, signed (ECDSA P-256, SHA-256) over signed
attributes contentType, messageDigest and signingCertificateV2, with the TSA leaf
embedded. The request is parsed with the same DER reader, not a private API.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from datetime import UTC, datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from . import der, pki
from .server import Request, Response, Service

PATH = "/api/v1/timestamp"
POLICY_OID = "1.3.6.1.4.1.57264.2"
_SIGNED_DATA = "1.2.840.113549.1.7.2"
_TST_INFO = "1.2.840.113549.1.9.16.1.4"
_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_SIGNING_CERTIFICATE_V2 = "1.2.840.113549.1.9.16.2.47"
_SHA256 = "2.16.840.1.101.3.4.2.1"
_ECDSA_SHA256 = "1.2.840.10045.4.3.2"


class TimestampAuthority:
    """Signs timestamps with the leaf of ``chain``."""

    name = "tsa"

    def __init__(self, chain: pki.TimestampingChain) -> None:
        self.chain = chain
        self._serials = itertools.count(1)
        self._service: Service | None = None

    @property
    def url(self) -> str:
        """The full endpoint URL, as a signing config's ``tsaUrls[].url`` wants it."""
        if self._service is None:
            raise RuntimeError("TSA is not running")
        return self._service.url + PATH

    def start(self) -> TimestampAuthority:
        self._service = Service(self)
        return self

    def stop(self) -> None:
        if self._service is not None:
            self._service.stop()
            self._service = None

    def handle(self, request: Request) -> Response:
        if request.method != "POST" or request.path != PATH:
            return Response.error(404, f"no route {request.method} {request.path}")
        try:
            imprint, nonce = parse_request(request.body)
        except (ValueError, IndexError) as exc:
            return Response.error(400, f"bad timestamp request: {exc}")
        reply = self.respond(imprint, nonce, datetime.fromtimestamp(int(time.time()), UTC))
        return Response(200, reply, content_type="application/timestamp-reply")

    def respond(self, imprint: bytes, nonce: int | None, when: datetime) -> bytes:
        """DER TimeStampResp granting a token for the encoded ``imprint``."""
        tst_info = der.sequence(
            der.integer(1),
            der.oid(POLICY_OID),
            imprint,
            der.integer(next(self._serials)),
            der.generalized_time(when),
            *([der.integer(nonce)] if nonce is not None else []),
        )
        leaf = self.chain.leaf
        sha256 = der.sequence(der.oid(_SHA256))
        attributes = [
            der.sequence(der.oid(_CONTENT_TYPE), der.set_of(der.oid(_TST_INFO))),
            der.sequence(
                der.oid(_MESSAGE_DIGEST),
                der.set_of(der.octet_string(hashlib.sha256(tst_info).digest())),
            ),
            # ESSCertIDv2 with the default (sha256) algorithm left out, as DER demands.
            der.sequence(
                der.oid(_SIGNING_CERTIFICATE_V2),
                der.set_of(
                    der.sequence(
                        der.sequence(
                            der.sequence(der.octet_string(hashlib.sha256(pki.der(leaf)).digest()))
                        )
                    )
                ),
            ),
        ]
        # The signature covers the attributes encoded as a SET OF, not as [0].
        signature = self.chain.leaf_key.sign(der.set_of(*attributes), ec.ECDSA(hashes.SHA256()))
        signer_info = der.sequence(
            der.integer(1),
            der.sequence(leaf.issuer.public_bytes(), der.integer(leaf.serial_number)),
            sha256,
            der.context(0, b"".join(sorted(attributes))),
            der.sequence(der.oid(_ECDSA_SHA256)),
            der.octet_string(signature),
        )
        signed_data = der.sequence(
            der.integer(3),
            der.set_of(sha256),
            der.sequence(der.oid(_TST_INFO), der.context(0, der.octet_string(tst_info))),
            der.context(0, pki.der(leaf)),
            der.set_of(signer_info),
        )
        token = der.sequence(der.oid(_SIGNED_DATA), der.context(0, signed_data))
        return der.sequence(der.sequence(der.integer(0)), token)


def parse_request(body: bytes) -> tuple[bytes, int | None]:
    """(encoded MessageImprint, nonce) from a DER TimeStampReq."""
    tag, _, contents, end = der.read(body)
    if tag != 0x30 or end != len(body):
        raise ValueError("not a single DER SEQUENCE")
    fields = der.children(contents)
    version = int.from_bytes(fields[0][2], "big")
    if fields[0][0] != 0x02 or version != 1:
        raise ValueError("unsupported TimeStampReq version")
    if fields[1][0] != 0x30:
        raise ValueError("missing messageImprint")
    imprint = fields[1][1]
    nonce = None
    for field_tag, _, value in fields[2:]:
        if field_tag == 0x02:
            nonce = int.from_bytes(value, "big", signed=True)
    return imprint, nonce
