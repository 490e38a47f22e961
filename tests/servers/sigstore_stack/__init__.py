"""A local Sigstore stack on 127.0.0.1 for offline tests of unmodified sigstore-python.

Test-only and deliberately not hardened: in-memory keys, no persistence, minimal
input checking. One module per job:

* :mod:`.server` - a ThreadingHTTPServer on a free port in a daemon thread
* :mod:`.oidc` - OIDC issuers (discovery, JWKS, ES256 tokens)
* :mod:`.pki` - Fulcio and TSA certificate chains
* :mod:`.ctlog` - in-process CT log (precert SCTs)
* :mod:`.fulcio` - token + CSR -> leaf certificate
* :mod:`.merkle`, :mod:`.rekor` - Rekor v1 (hashedrekord and dsse 0.0.1)
* :mod:`.der`, :mod:`.tsa` - RFC 3161 timestamp authority
* :mod:`.trust` - the ClientTrustConfig JSON naming all of the above
* :mod:`.stack` - :class:`LocalSigstore`, which starts and stops them together
* :mod:`.fixtures` - the session-scoped ``sigstore_stack`` pytest fixture
"""

from .stack import LocalSigstore

__all__ = ["LocalSigstore"]
