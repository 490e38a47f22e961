"""Keyless (Sigstore) signatures over a manifest digest (SPEC 3).

Caveats first:

* Nothing here picks a Sigstore instance on its own. Every function takes the trust
  configuration or trusted root it must use; :func:`load_trust_config` names the
  public-good and staging instances only when asked to.
* Signing needs the network: the Fulcio, Rekor and timestamp authority named by the
  trust config's signing config. Verification is offline; it needs only a trusted root.
* A Sigstore instance is named by a *source*: ``public-good``, ``staging`` or the
  absolute path of a ClientTrustConfig or bare trusted root file.
  :func:`trusted_root_for` caches each instance's root on its own, and uses the
  cached copy when the public instances are not asked or a file is unreadable.
* :func:`certificate_identity` reads the certificate *without* verifying it. Use it to
  choose which trust entry to try or to word an error, never to decide trust.
* Verification never lets a sigstore, pydantic or cryptography exception escape: any
  failure is a :class:`SignatureError`, or an :class:`UntrustedSignerError` when the
  bundle verifies completely except that someone else signed it.
* Rekor v1 bundles are verified exactly as sigstore-python 4.5 does; a DSSE entry in
  Rekor v1 records the payload hash and signatures, not the envelope bytes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

from cryptography import x509
from sigstore import dsse
from sigstore.hashes import Hashed
from sigstore.models import Bundle, ClientTrustConfig, TrustedRoot
from sigstore.oidc import ExpiredIdentity, IdentityError, IdentityToken, Issuer, detect_credential
from sigstore.sign import SigningContext
from sigstore.verify import Verifier
from sigstore.verify.policy import Identity
from sigstore_models.common.v1 import HashAlgorithm
from sigstore_models.trustroot.v1 import TrustedRoot as TrustedRootDocument

from dockercomms.core._internal.limits import MIB
from dockercomms.core._internal.signing.statement import signed_digest, statement_bytes
from dockercomms.core.errors import (
    ConfigError,
    DockerCommsError,
    OutputError,
    SignatureError,
    UntrustedSignerError,
    VerificationError,
)
from dockercomms.core.protocol import check_digest
from dockercomms.core.untrusted import parse_json_object

log = logging.getLogger(__name__)

PUBLIC_GOOD: Final = "public-good"
STAGING: Final = "staging"
TOKEN_ENV: Final = "SIGSTORE_ID_TOKEN"
TRUSTED_ROOT_FILE: Final = "trusted_root.json"
CLIENT_TRUST_CONFIG_TYPE: Final = "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json"
TRUSTED_ROOT_TYPE_PREFIX: Final = "application/vnd.dev.sigstore.trustedroot+json"
#: public-good's trusted root is about 10 KiB; a trust file is a local, small document.
_TRUST_FILE_BYTES: Final = 4 * MIB
_REASON_LIMIT: Final = 300
_FIX_SETTING: Final = "point to it with 'dockercomms config set sigstore_trust FILE'"
_FIX_ENTRY: Final = (
    "point the trust entries that name it to it with 'dockercomms trust remove NAME', "
    "then 'dockercomms trust add NAME ... --sigstore-trust FILE'"
)

# Fulcio certificate extensions (sigstore/fulcio docs/oid-info.md).
_OIDC_ISSUER: Final = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")  # raw UTF-8 bytes
_OIDC_ISSUER_V2: Final = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")  # DER UTF8String
_OTHERNAME_SAN: Final = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.7")

_Content = Literal["dsse", "message"]


@dataclass(frozen=True)
class KeylessIdentity:
    """Who signed, as read from the signing certificate.

    Attributes:
        identity: the certificate's SAN: an email address or a URI (CI workload).
        issuer: the OIDC issuer that vouched for ``identity`` (extension 1.1, else
            1.8). An identity means nothing without its issuer, so they travel together.
    """

    identity: str
    issuer: str

    def __str__(self) -> str:
        return f"{self.identity} (issuer {self.issuer})"


def check_trust_source(text: str, *, signing: bool) -> str:
    """``text`` as it is stored in a setting or trust entry, checked now.

    ``public-good`` and ``staging`` are kept as they are (checking them needs the
    network); anything else must be a file that parses as a ClientTrustConfig or a
    bare trusted root, and is stored as an absolute path so it means the same file
    from any folder. ``signing`` also requires the signing config (Fulcio, Rekor)
    that a bare trusted root lacks. A typo, a missing or an invalid file fails here,
    when it is typed, instead of at the first message.
    """
    if text in (PUBLIC_GOOD, STAGING):
        return text
    path = Path(os.path.abspath(Path(text).expanduser()))
    if not path.is_file():
        raise ConfigError(
            f"Sigstore trust {text!r} is not {PUBLIC_GOOD!r}, {STAGING!r} or an existing file"
        )
    try:
        trust = _read_trust_file(path)
    except OSError as exc:
        raise ConfigError(f"cannot read Sigstore trust file: {exc}") from exc
    if signing:
        if isinstance(trust, TrustedRoot):
            raise ConfigError(
                f"{path} is a bare trusted root: it verifies other people's signatures, "
                "but keyless signing needs a ClientTrustConfig (trusted root and signing config)"
            )
        try:
            _ = trust.signing_config
        except Exception as exc:
            raise ConfigError(f"{path} cannot be used for signing: {_reason(exc)}") from exc
    return str(path)


def load_trust_config(source: str) -> ClientTrustConfig:
    """The trust configuration (trusted root and signing config) named by ``source``.

    ``"public-good"`` and ``"staging"`` fetch the Sigstore instance's config through
    TUF (network, cached by sigstore-python); anything else is a path to a
    ClientTrustConfig JSON file, which is how private and test instances are used.
    A bare trusted root is refused: it has no signing config.
    """
    try:
        if source == PUBLIC_GOOD:
            config = ClientTrustConfig.production()
        elif source == STAGING:
            config = ClientTrustConfig.staging()
        else:
            trust = _read_trust_file(Path(source).expanduser())
            if isinstance(trust, TrustedRoot):
                raise ConfigError(
                    f"{source} is a bare trusted root with no signing config; keyless "
                    f"signing needs a ClientTrustConfig; {_FIX_SETTING}"
                )
            config = trust
        # Parse the trusted root now, so a broken file fails here and not mid-verify.
        _ = config.trusted_root
    except ConfigError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot read Sigstore trust config: {exc}; {_FIX_SETTING}") from exc
    except Exception as exc:
        raise ConfigError(
            f"invalid Sigstore trust config {source!r}: {_reason(exc)} (expected "
            f"{PUBLIC_GOOD!r}, {STAGING!r} or a ClientTrustConfig JSON file)"
        ) from exc
    return config


def trusted_root_for(source: str, cache_root: Path, *, entry: bool = False) -> TrustedRoot:
    """The trusted root of the Sigstore instance ``source``, offline whenever it can be.

    * ``public-good``/``staging``: the cached root when there is one, else fetched
      (TUF, network) and cached.
    * a file: read now, so an edit takes effect at once, and cached. When it cannot
      be read (moved, deleted, on a share that is not mounted) the root cached from
      it last time verifies instead, with a warning.

    Raises :class:`ConfigError` (the receiver's own set-up, never the sender's
    fault) when there is neither a readable source nor a cached copy; ``entry``
    says the source came from a trust entry, not the settings, for the advice.
    """
    fix = _FIX_ENTRY if entry else _FIX_SETTING
    cache_dir = instance_cache_dir(cache_root, source)
    if source in (PUBLIC_GOOD, STAGING):
        cached = load_cached_trusted_root(cache_dir)
        if cached is not None:
            return cached
        root = load_trust_config(source).trusted_root
    else:
        try:
            trust = _read_trust_file(Path(source).expanduser())
        except OSError as exc:
            cached = load_cached_trusted_root(cache_dir)
            if cached is None:
                raise ConfigError(
                    f"cannot read Sigstore trust config: {exc}, and no trusted root from it "
                    f"is cached; put the file back, or {fix}"
                ) from exc
            log.warning(
                "Sigstore trust config %s is unreadable (%s); verifying with the trusted "
                "root cached from it on %s; put the file back, or %s",
                source,
                exc.strerror or exc,
                _modified(cache_dir / TRUSTED_ROOT_FILE),
                fix,
            )
            return cached
        root = trust if isinstance(trust, TrustedRoot) else trust.trusted_root
    try:
        cache_trusted_root(root, cache_dir)
    except OutputError as exc:
        log.warning("%s", exc.diagnostics())
    return root


def instance_cache_dir(cache_root: Path, source: str) -> Path:
    """Where the trusted root of ``source`` is cached: one folder per instance."""
    if source in (PUBLIC_GOOD, STAGING):
        return cache_root / source
    key = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return cache_root / f"file-{key}"


def _read_trust_file(path: Path) -> ClientTrustConfig | TrustedRoot:
    """A ClientTrustConfig or a bare trusted root, by its ``mediaType``.

    ``OSError`` passes through (the caller decides whether a cached copy may
    stand in); anything unparsable is a :class:`ConfigError`.
    """
    with path.open("rb") as handle:
        raw = handle.read(_TRUST_FILE_BYTES + 1)  # the size check below sees the excess
    try:
        document = parse_json_object(raw, str(path), max_bytes=_TRUST_FILE_BYTES)
        media_type = document.get("mediaType")
        trust: ClientTrustConfig | TrustedRoot
        if media_type == CLIENT_TRUST_CONFIG_TYPE:
            config = ClientTrustConfig.from_json(raw.decode())
            trust, root = config, config.trusted_root
        elif isinstance(media_type, str) and media_type.startswith(TRUSTED_ROOT_TYPE_PREFIX):
            trust = root = TrustedRoot(TrustedRootDocument.from_json(raw))
        else:
            raise ValueError(f"mediaType is {media_type!r}")
        # What verification builds first: the Fulcio chain and a transparency log.
        Verifier(trusted_root=root)
    except Exception as exc:
        raise ConfigError(
            f"{path} is not a Sigstore trust config: {_reason(exc)} (expected "
            f"{PUBLIC_GOOD!r}, {STAGING!r}, a ClientTrustConfig or a trusted root JSON file)"
        ) from exc
    return trust


def _modified(path: Path) -> str:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M UTC")
    except OSError:
        return "an earlier run"


def sign_digest_keyless(
    manifest_digest: str, *, trust_config: ClientTrustConfig, identity_token: str
) -> bytes:
    """Sign the in-toto statement for ``manifest_digest``; return the bundle JSON (v0.3).

    The DSSE payload is exactly :func:`statement_bytes`, the same bytes the key-pair
    mode signs, so both modes verify against one statement format. Fulcio binds an
    ephemeral key to the token's identity; Rekor (and the TSA, if configured) prove
    the signature was made while that certificate was valid.
    """
    payload = statement_bytes(manifest_digest)
    try:
        token = IdentityToken(identity_token)
    except IdentityError as exc:
        raise ConfigError(f"identity token rejected before signing: {_reason(exc)}") from exc
    try:
        statement = dsse.Statement(payload)
        context = SigningContext.from_trust_config(trust_config)
        with context.signer(token, cache=True) as signer:
            bundle = signer.sign_dsse(statement)
    except (ExpiredIdentity, IdentityError) as exc:
        raise ConfigError(f"identity token expired or invalid: {_reason(exc)}") from exc
    except Exception as exc:
        raise DockerCommsError(
            f"keyless signing of {manifest_digest} as {token.identity} "
            f"(issuer {token.issuer}) failed: {_reason(exc)}"
        ) from exc
    return bundle.to_json().encode()


def verify_keyless_bundle(
    bundle_json: bytes,
    manifest_digest: str,
    *,
    trusted_root: TrustedRoot,
    identity: str,
    issuer: str,
) -> KeylessIdentity:
    """Verify that ``identity`` via ``issuer`` signed ``manifest_digest``; return the signer.

    Accepts the DSSE bundles :func:`sign_digest_keyless` writes, and plain
    ``messageSignature`` bundles over the manifest bytes (``sigstore sign`` of the
    manifest file), whose signed digest is the manifest digest itself.

    Raises :class:`UntrustedSignerError` when everything verifies but the certificate
    names someone else, and :class:`SignatureError` for every other failure.
    """
    check_digest(manifest_digest)
    expected = KeylessIdentity(identity, issuer)

    # (1): parse. sigstore's Bundle checks the shape: a leaf certificate, exactly one
    #      tlog entry with an inclusion proof and checkpoint, and a source of time.
    try:
        content = _content_of(bundle_json)
        bundle = Bundle.from_json(bundle_json)
    except Exception as exc:
        raise SignatureError(f"not a usable Sigstore bundle: {_reason(exc)}") from exc

    policy = _ExpectedSigner(expected)
    try:
        _verify(bundle, content, manifest_digest, trusted_root, policy)
    except Exception as exc:
        failure = _failure(exc, bundle_json, bundle, content, manifest_digest, trusted_root, policy)
        raise failure from exc

    # (5): report the signer from the verified certificate, not from the caller.
    return _signer_of(bundle.signing_certificate, preferred=identity)


def certificate_identity(bundle_json: bytes) -> KeylessIdentity | None:
    """The SAN and issuer the bundle's leaf certificate *claims*; nothing is verified.

    For choosing which trust entry to try and for error messages only. ``None`` when
    the bundle has no readable certificate (a key-pair bundle, or garbage).
    """
    try:
        document = json.loads(bundle_json)
        material = document["verificationMaterial"]
        if material.get("certificate"):
            raw = material["certificate"]["rawBytes"]
        else:
            raw = material["x509CertificateChain"]["certificates"][0]["rawBytes"]
        certificate = x509.load_der_x509_certificate(base64.b64decode(raw, validate=True))
        sans = _sans(certificate)
        cert_issuer = _issuer_of(certificate)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, binascii.Error):
        return None
    if not sans or cert_issuer is None:
        return None
    return KeylessIdentity(sans[0], cert_issuer)


def obtain_identity_token(
    explicit: str | None, *, trust_config: ClientTrustConfig, interactive: bool
) -> str:
    """An OIDC identity token for signing, from the first source that has one.

    Order: ``explicit``; ``$SIGSTORE_ID_TOKEN``; the CI's ambient credential (GitHub
    Actions, GitLab, Buildkite, CircleCI, GCP); then, only if ``interactive``, a
    browser login at the trust config's OIDC provider. Non-interactive runs never
    open a browser: they fail with a hint instead.
    """
    if explicit and explicit.strip():
        return explicit.strip()
    from_env = os.environ.get(TOKEN_ENV, "").strip()
    if from_env:
        return from_env
    try:
        ambient = detect_credential()
    except IdentityError as exc:
        raise ConfigError(
            f"this looks like a CI run, but its OIDC credential is unavailable: {_reason(exc)} "
            "(on GitHub Actions, grant the job `permissions: id-token: write`)"
        ) from exc
    if ambient:
        return ambient
    if not interactive:
        raise ConfigError(
            "no identity token for keyless signing: pass one explicitly, set "
            f"{TOKEN_ENV}, run in a CI job with OIDC enabled, or run interactively "
            "to log in with a browser"
        )
    try:
        issuer = Issuer(trust_config.signing_config.get_oidc_url())
        return str(issuer.identity_token())
    except Exception as exc:
        raise ConfigError(f"interactive OIDC login failed: {_reason(exc)}") from exc


def cache_trusted_root(trust: ClientTrustConfig | TrustedRoot, cache_dir: Path) -> Path:
    """Write the trusted root (of a trust config) to ``cache_dir``; return the file's path.

    A receiver that cached the root once can verify later without any network.
    The file is replaced atomically, so a reader never sees half a root.
    """
    target = cache_dir / TRUSTED_ROOT_FILE
    # sigstore-python 4.5 has no public serializer for a trusted root; ``_inner`` is
    # the sigstore-models object it wraps, whose ``to_json`` is public in that package.
    inner = trust._inner if isinstance(trust, TrustedRoot) else trust._inner.trusted_root
    text = inner.to_json()
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if target.read_text(encoding="utf-8") == text:
            return target  # verifying reloads the root often; rewrite only a change
    partial = target.with_name(f".{TRUSTED_ROOT_FILE}.{os.getpid()}.tmp")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise OutputError(f"cannot cache the trusted root in {cache_dir}: {exc}") from exc
    return target


def load_cached_trusted_root(cache_dir: Path) -> TrustedRoot | None:
    """The trusted root :func:`cache_trusted_root` wrote, or ``None`` if there is none.

    A file that exists but does not parse is an error, not a miss: silently falling
    back would hide a corrupted or tampered cache.
    """
    path = cache_dir / TRUSTED_ROOT_FILE
    if not path.is_file():
        return None
    try:
        return TrustedRoot.from_file(str(path))
    except Exception as exc:
        raise ConfigError(
            f"cached trusted root {path} is invalid ({_reason(exc)}); delete it to refetch"
        ) from exc


class _ExpectedSigner:
    """``Identity(identity, issuer)`` that remembers why it rejected a certificate.

    sigstore-python applies the policy (its step 3) after the chain and SCT checks.
    Remembering the rejection lets :func:`_failure` tell "valid, but someone else
    signed" from "not a valid signature at all".
    """

    def __init__(self, expected: KeylessIdentity) -> None:
        self.expected = expected
        self._policy = Identity(identity=expected.identity, issuer=expected.issuer)
        self.rejection: str | None = None

    def verify(self, cert: x509.Certificate) -> None:
        try:
            self._policy.verify(cert)
        except Exception as exc:
            self.rejection = _reason(exc)
            raise


class _AnySigner:
    """Accepts every certificate. Used only to classify a failure, never to accept."""

    def verify(self, cert: x509.Certificate) -> None:
        return None


def _verify(
    bundle: Bundle,
    content: _Content,
    manifest_digest: str,
    trusted_root: TrustedRoot,
    policy: _ExpectedSigner | _AnySigner,
) -> None:
    """Steps (2)-(4); raises on any failure, returns only if the bundle covers the digest."""
    verifier = Verifier(trusted_root=trusted_root)
    if content == "dsse":
        # (2): sigstore's steps 0-8: verified time (TSA and/or SET), certificate
        #      chain at that time, SCT, Fulcio profile + identity policy, inclusion
        #      proof and checkpoint, SET, certificate validity at the log time, the
        #      DSSE signature, and the consistency of the Rekor entry with the bundle.
        payload_type, payload = verifier.verify_dsse(bundle, policy)
        # (3): verify_dsse returns the payload unchecked: it must be our statement
        #      type, and name this manifest digest as a subject.
        _require_statement_for(payload_type, payload, manifest_digest)
    else:
        # (4): a messageSignature over the manifest bytes signs sha256(manifest),
        #      which is the manifest digest: verify against that digest, prehashed.
        #      verify_artifact also runs sigstore's steps 0-8 and, when the bundle
        #      states a messageDigest, requires it to equal this one.
        hashed = Hashed(
            algorithm=HashAlgorithm.SHA2_256,
            digest=bytes.fromhex(manifest_digest.split(":", 1)[1]),
        )
        verifier.verify_artifact(hashed, bundle, policy)


def _require_statement_for(payload_type: str, payload: bytes, manifest_digest: str) -> None:
    # signed_digest refuses every other statement: another predicateType (an SBOM
    # or provenance attestation about the manifest is not a signature of it), or
    # more than one subject.
    claimed = signed_digest(payload_type, payload)
    if not hmac.compare_digest(claimed.encode(), manifest_digest.encode()):
        raise ValueError(f"statement covers {claimed}, not {manifest_digest}")


def _failure(
    error: Exception,
    bundle_json: bytes,
    bundle: Bundle,
    content: _Content,
    manifest_digest: str,
    trusted_root: TrustedRoot,
    policy: _ExpectedSigner,
) -> VerificationError:
    """The error to raise for a bundle that did not verify, saying expected vs found."""
    claimed = certificate_identity(bundle_json)
    found = str(claimed) if claimed else "no readable signer identity"
    if policy.rejection is not None:
        # Only the identity policy failed so far. It runs before the log and signature
        # checks, so rerun everything else to learn whether the signature is valid.
        try:
            _verify(bundle, content, manifest_digest, trusted_root, _AnySigner())
        except Exception:
            pass
        else:
            return UntrustedSignerError(
                f"bundle for {manifest_digest} is validly signed by {found}, "
                f"not by the expected {policy.expected}: {policy.rejection}"
            )
    return SignatureError(
        f"keyless bundle does not verify for {manifest_digest} "
        f"(expected signer {policy.expected}, certificate claims {found}): "
        f"{_reason(error)}"
    )


def _content_of(bundle_json: bytes) -> _Content:
    document = json.loads(bundle_json)
    if not isinstance(document, dict):
        raise ValueError("bundle JSON is not an object")
    has_dsse = document.get("dsseEnvelope") is not None
    has_message = document.get("messageSignature") is not None
    if has_dsse == has_message:
        raise ValueError("bundle must hold exactly one of dsseEnvelope or messageSignature")
    return "dsse" if has_dsse else "message"


def _signer_of(certificate: x509.Certificate, *, preferred: str) -> KeylessIdentity:
    sans = _sans(certificate)
    identity = preferred if preferred in sans else (sans[0] if sans else "")
    return KeylessIdentity(identity, _issuer_of(certificate) or "")


def _sans(certificate: x509.Certificate) -> list[str]:
    """Email, URI and Sigstore OtherName SANs, in that order."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    found: list[str] = list(san.get_values_for_type(x509.RFC822Name))
    found += san.get_values_for_type(x509.UniformResourceIdentifier)
    for other in san.get_values_for_type(x509.OtherName):
        if other.type_id == _OTHERNAME_SAN:
            found.append(_der_utf8(other.value) or other.value.decode("utf-8", "replace"))
    return found


def _issuer_of(certificate: x509.Certificate) -> str | None:
    """Extension 1.1 (what ``Identity(issuer=)`` checks), else 1.8."""
    for oid, decode in ((_OIDC_ISSUER, _raw_utf8), (_OIDC_ISSUER_V2, _der_utf8)):
        try:
            value = certificate.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        if isinstance(value, x509.UnrecognizedExtension):
            text = decode(value.value)
            if text:
                return text
    return None


def _raw_utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _der_utf8(data: bytes) -> str | None:
    """The text of a DER UTF8String, or ``None`` if ``data`` is not one."""
    if len(data) < 2 or data[0] != 0x0C:
        return None
    size, start = data[1], 2
    if size & 0x80:
        width = size & 0x7F
        size, start = int.from_bytes(data[2 : 2 + width], "big"), 2 + width
    if start + size != len(data):
        return None
    return _raw_utf8(data[start:])


def _reason(error: BaseException) -> str:
    """``Type: message``, at most ``_REASON_LIMIT`` characters.

    sigstore raises some errors with an empty message and others with the repr of a
    whole log entry; the full exception stays reachable as ``__cause__``.
    """
    text = str(error)
    if len(text) > _REASON_LIMIT:
        text = text[: _REASON_LIMIT - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
