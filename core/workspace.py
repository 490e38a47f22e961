"""One identity's world, wired once: paths, settings, clients, signer, verifier, inbox, outbox.

The CLI, the syncer and the mount all start here, so they cannot disagree on
where the key lives or which trust root verifies keyless bundles. Nothing here is
global: the Sigstore trust configuration is a parameter read from the settings
(for signing) and from each trust entry (for verifying).

The rest of dockercomms reaches the registry through :meth:`Workspace.inbox` and
:meth:`Workspace.outbox` (over one :meth:`Workspace.clients` pool, one client per
thread); ``client``, ``receiver`` and ``sender`` are the engine's own, for core
and the tests.

An identity written before ``core.names`` existed still loads and works; it is
reported once per process with what to do about it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from dockercomms.core._internal.ledger import ReceivedLedger
from dockercomms.core._internal.limits import DEFAULT_LIMITS, Limits
from dockercomms.core._internal.receive import Opening, Receiver
from dockercomms.core._internal.registry.auth import AuthSource, RegistryAuth
from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core._internal.registry.credentials import (
    PASSWORD_ENV,
    USER_ENV,
    Credentials,
    CredentialSource,
)
from dockercomms.core._internal.registry.reference import RepositoryRef, parse_repository
from dockercomms.core._internal.registry.retry import RetryPolicy
from dockercomms.core._internal.send import DigestSigner, Sender
from dockercomms.core._internal.signatures import DiscoveryMode
from dockercomms.core._internal.signing.keypair import KeyPairSigner, load_private_key
from dockercomms.core._internal.signing.verify import BundleVerifier
from dockercomms.core.clients import ClientPool
from dockercomms.core.config import Settings, load_settings
from dockercomms.core.errors import ConfigError, DockerCommsError
from dockercomms.core.keys import signing_key
from dockercomms.core.names import check_name, name_problem
from dockercomms.core.paths import Paths, resolve_paths
from dockercomms.core.trust import TrustPolicy
from dockercomms.core.untrusted import shown

if TYPE_CHECKING:
    from sigstore.models import ClientTrustConfig, TrustedRoot

    from dockercomms.core.inbox import Inbox
    from dockercomms.core.outbox import Outbox

__all__ = ["SECRET_ENV", "RegistryOptions", "RetryPolicy", "Workspace", "require_identity"]

#: Environment variables holding secrets (registry credentials, an OIDC token):
#: never copied anywhere (a unit file, a log). ``SIGSTORE_ID_TOKEN`` is
#: ``signing.keyless.TOKEN_ENV``, spelled out so sigstore is not imported for it.
SECRET_ENV = (USER_ENV, PASSWORD_ENV, "SIGSTORE_ID_TOKEN")

log = logging.getLogger(__name__)

#: Config files whose identity was already reported as outside the name grammar.
_reported_identities: set[tuple[str, str]] = set()


@dataclass
class RegistryOptions:
    """How to reach the registry (CLI flags override settings).

    Attributes:
        repository: ``--repo``; empty for the settings' or the embedded default.
        insecure: plain HTTP to a non-loopback host.
        ca_file: extra CA bundle for HTTPS.
        authenticator: where clients get credentials; None means anonymous.
        storage_config: ``--storage-config`` (for ``storage:NAME``); empty: settings.
        retry: timeouts and retries per request; None for the interactive default
            (the syncer asks for short ones: its queue does the long waiting).
    """

    repository: str = ""
    insecure: bool = False
    ca_file: str | None = None
    authenticator: AuthSource | None = None
    storage_config: str = ""
    retry: RetryPolicy | None = None

    @classmethod
    def from_flags(
        cls,
        *,
        repository: str = "",
        insecure: bool = False,
        ca_file: str | None = None,
        storage_config: str = "",
        user: str | None = None,
        password: str | None = None,
        source: str = "",
    ) -> RegistryOptions:
        """Options from command-line flags; ``user``/``password`` beat the environment.

        Without them, credentials come from ``DOCKERCOMMS_REGISTRY_USER`` and
        ``DOCKERCOMMS_REGISTRY_PASSWORD``, then the docker config, per registry.
        ``source`` names where ``user`` and ``password`` came from, for errors.
        """
        explicit = None
        if user is not None and password is not None:
            explicit = Credentials(user, password, source=source)
        return cls(
            repository=repository,
            insecure=insecure,
            ca_file=ca_file,
            authenticator=RegistryAuth(CredentialSource(explicit=explicit)),
            storage_config=storage_config,
        )


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells that a small file changed (inode, size, mtime), or None if absent."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


@dataclass
class Workspace:
    """Paths + settings of one identity, and factories for what commands need."""

    paths: Paths
    settings: Settings
    limits: Limits = DEFAULT_LIMITS
    identity_token: str | None = None
    interactive: bool = False
    _trust_config: ClientTrustConfig | None = field(default=None, repr=False)
    _config_stamp: tuple[int, int, int] | None = field(default=None, repr=False)

    @classmethod
    def load(cls, paths: Paths | None = None) -> Workspace:
        """Load the configured identity (``init`` must have run)."""
        paths = paths or resolve_paths()
        stamp = _file_stamp(paths.config_file)  # before reading: a later write shows
        settings = load_settings(paths)
        _report_identity(paths, settings.identity)
        return cls(paths, settings, _config_stamp=stamp)

    @property
    def identity(self) -> str:
        """My sender/recipient name."""
        return self.settings.identity

    def repository(self, options: RegistryOptions | None = None) -> RepositoryRef:
        """The repository to use: flag, then settings, then the embedded default."""
        options = options or RegistryOptions()
        text = options.repository or self.settings.repository or self.paths.default_repository
        storage_config = options.storage_config or self.settings.storage_config
        return parse_repository(text, insecure=options.insecure, storage_config=storage_config)

    def client(self, options: RegistryOptions | None = None) -> RegistryClient:
        """A registry client for the chosen repository."""
        options = options or RegistryOptions()
        tls_verify: bool | str = options.ca_file or True
        return RegistryClient(
            self.repository(options),
            policy=options.retry,
            authenticator=options.authenticator,
            tls_verify=tls_verify,
            limits=self.limits,
        )

    def clients(self, options: RegistryOptions | None = None) -> ClientPool:
        """A pool of clients for the chosen repository, one per thread."""
        return ClientPool(lambda: self.client(options), lambda: self.repository(options))

    def inbox(
        self,
        options: RegistryOptions | None = None,
        *,
        pool: ClientPool | None = None,
        bundle_mode: DiscoveryMode = "auto",
    ) -> Inbox:
        """My inbox, over ``pool`` (shared) or a pool of its own (closed with it)."""
        from dockercomms.core.inbox import Inbox

        if pool is None:
            return Inbox(self, self.clients(options), bundle_mode=bundle_mode, owns_pool=True)
        return Inbox(self, pool, bundle_mode=bundle_mode)

    def outbox(
        self,
        options: RegistryOptions | None = None,
        *,
        pool: ClientPool | None = None,
        card_interval_seconds: float = 0.0,
    ) -> Outbox:
        """Sending as me, over ``pool`` (shared) or a pool of its own (closed with it).

        Before each send, every recipient's card in the repository is looked at
        (SPEC 9.1, :func:`dockercomms.core.cards.card_directory`), at most once per
        ``card_interval_seconds`` per name: a daemon passes its poll interval, a
        one-shot command looks once.
        """
        from dockercomms.core.cards import card_directory
        from dockercomms.core.outbox import Outbox

        owns_pool = pool is None
        clients = self.clients(options) if pool is None else pool
        cards = card_directory(self, clients, interval_seconds=card_interval_seconds)
        return Outbox(self, clients, owns_pool=owns_pool, refresher=cards)

    def trust_policy(self) -> TrustPolicy:
        """The trust file as it is now."""
        return TrustPolicy.load(self.paths.trust_file)

    def verifier(self) -> BundleVerifier:
        """A verifier over the trust policy; keyless roots load only when needed."""
        return BundleVerifier(self.trust_policy(), self.trusted_root)

    def key_fingerprint(self) -> str:
        """My key's fingerprint (the bundle hint), or empty for keyless or an unreadable key."""
        if self.settings.signing != "key":
            return ""
        try:
            return signing_key(self.paths.key_file).fingerprint
        except (DockerCommsError, OSError) as exc:
            log.warning("cannot read my key's fingerprint: %s", exc)
            return ""

    def signer(self) -> DigestSigner:
        """Key-pair or keyless signer, per settings."""
        if self.settings.signing == "key":
            return KeyPairSigner(load_private_key(self.paths.key_file))
        return _KeylessSigner(self)

    def sender(self, client: RegistryClient) -> Sender:
        """A sender from me over ``client``."""
        return Sender(client, self.signer(), self.identity, limits=self.limits)

    def require_sealed_now(self) -> bool:
        """The config's ``require_sealed`` as config.toml says now.

        A running mount or syncer holds one workspace for days; ``config set
        require_sealed true`` must reach it at once, as a trust change does. The
        file is read again only when it changed (inode, size, mtime); one that
        cannot be read now keeps the last value read (and says so).
        """
        stamp = _file_stamp(self.paths.config_file)
        if stamp is None:
            return self.settings.require_sealed
        if stamp != self._config_stamp:
            try:
                fresh = load_settings(self.paths)
            except ConfigError as exc:
                log.warning("keeping require_sealed=%s: %s", self.settings.require_sealed, exc)
                return self.settings.require_sealed
            self.settings = replace(self.settings, require_sealed=fresh.require_sealed)
            self._config_stamp = stamp
        return self.settings.require_sealed

    def receiver(self, client: RegistryClient, bundle_mode: DiscoveryMode = "auto") -> Receiver:
        """A receiver for me over ``client``, opening sealed messages with my age keys."""
        policy = self.trust_policy()
        opening = Opening(
            self.paths.age_identity_file,
            policy=policy,
            require_all=self.require_sealed_now(),
            private_dir=self.paths.chunk_cache_dir,
        )
        verifier = BundleVerifier(policy, self.trusted_root)
        return Receiver(client, verifier, self.identity, bundle_mode=bundle_mode, opening=opening)

    def ledger(self) -> ReceivedLedger:
        """What I already received."""
        return ReceivedLedger(self.paths.state_db)

    # --- Sigstore -------------------------------------------------------------------

    def trust_config(self) -> ClientTrustConfig:
        """The Sigstore ClientTrustConfig named in the settings, for signing (loaded once).

        Its trusted root is cached as well, so the public instances' roots are
        refreshed whenever this identity signs.
        """
        if self._trust_config is None:
            from dockercomms.core._internal.signing.keyless import (
                cache_trusted_root,
                instance_cache_dir,
                load_trust_config,
            )

            source = self.settings.sigstore_trust
            self._trust_config = load_trust_config(source)
            try:
                cache_trusted_root(self._trust_config, instance_cache_dir(self._roots, source))
            except DockerCommsError as exc:
                log.warning("could not cache the Sigstore trusted root: %s", exc.diagnostics())
        return self._trust_config

    def trusted_root(self, instance: str = "") -> TrustedRoot:
        """The trusted root of ``instance`` (a trust entry's); empty means mine.

        Cached per instance under the cache dir, so verifying needs neither the
        network nor, once cached, the trust config file itself.
        """
        from dockercomms.core._internal.signing.keyless import trusted_root_for

        source = instance or self.settings.sigstore_trust
        return trusted_root_for(source, self._roots, entry=bool(instance))

    @property
    def _roots(self) -> Path:
        return self.paths.sigstore_cache_dir


class _KeylessSigner:
    """Sigstore keyless signing with the workspace's trust config and token sources."""

    def __init__(self, workspace: Workspace) -> None:
        self._workspace = workspace
        self._token: str | None = None

    def sign_digest(self, manifest_digest: str) -> bytes:
        from dockercomms.core._internal.signing.keyless import (
            obtain_identity_token,
            sign_digest_keyless,
        )

        config = self._workspace.trust_config()
        if self._token is None:
            self._token = obtain_identity_token(
                self._workspace.identity_token,
                trust_config=config,
                interactive=self._workspace.interactive,
            )
        return sign_digest_keyless(manifest_digest, trust_config=config, identity_token=self._token)


def require_identity(name: str) -> str:
    """Validate an identity name given on the command line (``core.names``)."""
    return check_name(name, "identity")


def _report_identity(paths: Paths, identity: str) -> None:
    """Warn, once per process, about an identity from before the name grammar."""
    problem = name_problem(identity)
    key = (str(paths.config_file), identity)
    if problem is None or key in _reported_identities:
        return
    _reported_identities.add(key)
    log.warning(
        "your identity '%s' is not a valid name (%s): receiving still works, but peers "
        "cannot trust it any more; start over under a valid one with "
        "'dockercomms init --force --identity NAME' (keys and trust are kept)",
        shown(identity),
        problem,
    )
