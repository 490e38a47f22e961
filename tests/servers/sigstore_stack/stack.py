"""LocalSigstore: the whole test stack, started and stopped as one object."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType

from . import pki, trust
from .ctlog import CTLog
from .fulcio import Fulcio
from .oidc import OIDCIssuer
from .rekor import Rekor
from .tsa import TimestampAuthority


class LocalSigstore:
    """OIDC issuers, Fulcio, a CT log, Rekor v1 and (optionally) a TSA on 127.0.0.1.

    Attributes:
        issuer_url: the primary OIDC issuer; the signing config's ``oidcUrls``.
        alt_issuer_url: a second issuer Fulcio also accepts, for "wrong issuer"
            tests: its certificates chain to the same CA but name another issuer.
        fulcio_url, rekor_url: the service base URLs.
        tsa_url: the TSA endpoint, or ``None`` when started ``with_tsa=False``.
        fulcio, rekor, tsa: the service objects (``rekor.size`` counts log entries).
    """

    def __init__(self, *, with_tsa: bool = True) -> None:
        # A day in the past, so every validity window and validFor already covers "now".
        self.not_before = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        self.ca = pki.CertificateAuthority.create("fulcio", self.not_before)
        self.rogue_ca = pki.CertificateAuthority.create("rogue fulcio", self.not_before)
        self.ctlog = CTLog()
        self.issuer = OIDCIssuer("primary")
        self.alt_issuer = OIDCIssuer("alternate")
        self.rekor = Rekor()
        self.tsa: TimestampAuthority | None = None
        if with_tsa:
            self.tsa = TimestampAuthority(pki.TimestampingChain.create("tsa", self.not_before))
        self.fulcio: Fulcio | None = None
        self._started: list[OIDCIssuer | Fulcio | Rekor | TimestampAuthority] = []

    def start(self) -> LocalSigstore:
        try:
            for issuer in (self.issuer, self.alt_issuer):
                self._started.append(issuer.start())
            self.fulcio = Fulcio(self.ca, self.ctlog, [self.issuer.url, self.alt_issuer.url])
            self._started.append(self.fulcio.start())
            self._started.append(self.rekor.start())
            if self.tsa is not None:
                self._started.append(self.tsa.start())
        except BaseException:
            self.shutdown()
            raise
        return self

    def shutdown(self) -> None:
        """Stop every server this stack started; safe to call twice."""
        while self._started:
            self._started.pop().stop()

    def __enter__(self) -> LocalSigstore:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    @property
    def issuer_url(self) -> str:
        return self.issuer.url

    @property
    def alt_issuer_url(self) -> str:
        return self.alt_issuer.url

    @property
    def fulcio_url(self) -> str:
        if self.fulcio is None:
            raise RuntimeError("stack is not running")
        return self.fulcio.url

    @property
    def rekor_url(self) -> str:
        return self.rekor.url

    @property
    def tsa_url(self) -> str | None:
        return self.tsa.url if self.tsa is not None else None

    def token(
        self,
        *,
        email: str | None = None,
        subject: str | None = None,
        issuer_url: str | None = None,
        lifetime: int = 300,
    ) -> str:
        """An ES256 identity token (``aud`` "sigstore").

        ``issuer_url`` picks the issuer: the primary one by default, or
        ``alt_issuer_url``. Any other URL yields a token claiming that issuer but
        signed with the primary key, which Fulcio refuses (issuer not allowed).
        """
        issuer = self.issuer
        if issuer_url is not None and issuer_url == self.alt_issuer.url:
            issuer = self.alt_issuer
        return issuer.token(email=email, subject=subject, issuer_url=issuer_url, lifetime=lifetime)

    def description(self, *, ca: pki.CertificateAuthority | None = None) -> trust.StackDescription:
        tsa = self.tsa
        return trust.StackDescription(
            not_before=self.not_before,
            oidc_url=self.issuer_url,
            fulcio_url=self.fulcio_url,
            fulcio_chain=(ca or self.ca).chain,
            rekor_url=self.rekor_url,
            rekor_key_der=self.rekor.public_key_der,
            rekor_log_id=self.rekor.log_id,
            ctlog_key_der=self.ctlog.public_key_der,
            ctlog_log_id=self.ctlog.log_id,
            tsa_url=tsa.url if tsa is not None else None,
            tsa_chain=tsa.chain.chain if tsa is not None else None,
        )

    def client_trust_config_json(self) -> str:
        """ClientTrustConfig JSON: trusted root + signing config for this stack."""
        return json.dumps(trust.client_trust_config(self.description()))

    def trusted_root_json(self) -> str:
        """The trusted root alone, as a verifier with no signing needs would hold it."""
        return json.dumps(trust.trusted_root(self.description()))

    def write_trust_config(self, path: str | Path) -> Path:
        target = Path(path)
        target.write_text(self.client_trust_config_json(), encoding="utf-8")
        return target

    def rogue_ca_trust_config_json(self) -> str:
        """Same services and logs, but a different Fulcio CA in the trusted root.

        Bundles from this stack must not verify against it ("untrusted CA").
        """
        return json.dumps(trust.client_trust_config(self.description(ca=self.rogue_ca)))

    def no_tsa_trust_config_json(self) -> str:
        """This stack's trust config with the TSA removed from root and signing config."""
        description = dataclasses.replace(self.description(), tsa_url=None, tsa_chain=None)
        return json.dumps(trust.client_trust_config(description))
