"""One entry point that verifies any bundle we accept against the trust policy.

A bundle is either key-pair (public-key hint; verified with ``cryptography``) or
keyless (Fulcio certificate; verified by sigstore-python against the trusted
root of the trust entry's Sigstore instance). Whatever goes wrong inside, the
caller sees a ``VerificationError``: verification code never lets an unexpected
exception turn into exposure. The one exception is ``ConfigError``: a trusted
root that cannot be loaded is the receiver's own set-up, not the sender's fault.
The bundle JSON is parsed size- and depth-bounded before anything else reads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from dockercomms.core._internal.limits import DEFAULT_LIMITS
from dockercomms.core._internal.signing.keypair import is_key_bundle, verify_key_bundle
from dockercomms.core.errors import (
    ConfigError,
    DockerCommsError,
    SignatureError,
    UntrustedSignerError,
    VerificationError,
)
from dockercomms.core.trust import TrustPolicy
from dockercomms.core.untrusted import parse_json_object

if TYPE_CHECKING:
    from sigstore.models import TrustedRoot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifiedSigner:
    """Who signed, once the signature verified.

    Attributes:
        name: the trust entry name, i.e. the sender this signer may send as.
        kind: ``key`` or ``keyless``.
        identity: key fingerprint, or the certificate's SAN.
        issuer: OIDC issuer for keyless, empty for keys.
    """

    name: str
    kind: Literal["key", "keyless"]
    identity: str
    issuer: str = ""


class BundleVerifier:
    """Verifies bundles for one trust policy.

    ``trusted_root(instance)`` loads the root of a trust entry's Sigstore instance
    (its ``sigstore_trust``; empty for the receiver's own), lazily and only for
    keyless bundles, so key-pair users never need Sigstore's trust root (or the
    network).
    """

    def __init__(
        self,
        policy: TrustPolicy,
        trusted_root: Callable[[str], TrustedRoot] | None = None,
        *,
        max_bundle_bytes: int = DEFAULT_LIMITS.max_bundle_bytes,
    ) -> None:
        self.policy = policy
        self._trusted_root_loader = trusted_root
        self._trusted_roots: dict[str, TrustedRoot] = {}
        self._max_bundle_bytes = max_bundle_bytes

    @property
    def policy_fingerprint(self) -> str:
        """sha256 of the trust entries: changes exactly when the trust policy does.

        A rejection that trust decided (untrusted signer, no bundle that verifies)
        is remembered under this, so it is retried once the policy changes. The
        Sigstore trusted root is not part of it.
        """
        entries = sorted(json.dumps(asdict(entry), sort_keys=True) for entry in self.policy.entries)
        return hashlib.sha256("\n".join(entries).encode()).hexdigest()

    def verify(self, bundle_json: bytes, manifest_digest: str) -> VerifiedSigner:
        """Verify ``bundle_json`` signs ``manifest_digest`` by a trusted signer."""
        try:
            bundle = parse_json_object(bundle_json, "bundle", max_bytes=self._max_bundle_bytes)
        except DockerCommsError as exc:
            raise SignatureError(f"bundle is unreadable: {exc}") from exc
        if not isinstance(bundle.get("verificationMaterial"), dict):
            raise SignatureError("bundle has no verificationMaterial")
        try:
            if is_key_bundle(bundle):
                return self._verify_key(bundle, manifest_digest)
            return self._verify_keyless(bundle_json, manifest_digest)
        except (VerificationError, ConfigError):
            raise  # a verdict; or none at all (no usable trust root), not the bundle's fault
        except Exception as exc:  # any other failure inside verification is a rejection
            raise SignatureError(
                f"bundle could not be verified: {type(exc).__name__}: {exc}"
            ) from exc

    def _verify_key(self, bundle: dict[str, Any], manifest_digest: str) -> VerifiedSigner:
        keys = self.policy.pinned_keys()
        if not keys:
            raise UntrustedSignerError("bundle is key-signed but no keys are trusted")
        key = verify_key_bundle(bundle, manifest_digest, keys)
        return VerifiedSigner(key.name, "key", key.hint)

    def _root(self, instance: str) -> TrustedRoot:
        if instance not in self._trusted_roots:
            if self._trusted_root_loader is None:
                raise SignatureError("bundle is keyless but no Sigstore trust root is configured")
            self._trusted_roots[instance] = self._trusted_root_loader(instance)
        return self._trusted_roots[instance]

    def _verify_keyless(self, bundle_json: bytes, manifest_digest: str) -> VerifiedSigner:
        from dockercomms.core._internal.signing.keyless import (
            certificate_identity,
            verify_keyless_bundle,
        )

        entries = self.policy.identities()
        claimed = certificate_identity(bundle_json)
        if claimed is not None:
            # Try the entries naming the certificate's identity first; the check
            # below is what decides, this only avoids needless failures.
            entries.sort(key=lambda e: (e.identity, e.issuer) != (claimed.identity, claimed.issuer))
        if not entries:
            who = f"{claimed.identity} via {claimed.issuer}" if claimed else "an unknown identity"
            raise UntrustedSignerError(f"bundle is signed by {who}, which is not trusted")
        last: VerificationError | None = None
        for entry in entries:
            try:
                found = verify_keyless_bundle(
                    bundle_json,
                    manifest_digest,
                    trusted_root=self._root(entry.sigstore_trust),
                    identity=entry.identity,
                    issuer=entry.issuer,
                )
            except VerificationError as exc:
                last = exc
                continue
            return VerifiedSigner(entry.name, "keyless", found.identity, found.issuer)
        assert last is not None
        raise last
