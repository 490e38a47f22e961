"""Where things live and what the user configured.

``DOCKERCOMMS_HOME`` puts one identity's config, keys, trust and state under one
folder (so two identities can share a machine); without it the XDG config, state
and cache dirs are used. The embedded registry defaults to the XDG *data* dir in
both cases, so two identities on one machine share a store with no set-up.

Caveats first:

* Values are checked when they are typed (:func:`setting_value`, used by ``init``
  and ``config set``): a typo, a missing file or a relative path fails or is made
  absolute then, not at the first message. Paths are stored absolute, so a
  setting means the same from any folder.
* Reading ``config.toml`` is lenient about what older versions wrote (a relative
  path, an identity outside ``core.names``): such a file still loads.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Final

import platformdirs
import tomli_w

from dockercomms.core import protocol as p
from dockercomms.core.errors import ConfigError
from dockercomms.core.limits import MIB
from dockercomms.core.registry.reference import LAYOUT_PREFIX, parse_repository
from dockercomms.core.trust import write_atomic

APP = "dockercomms"
DEFAULT_CHUNK_BYTES = 32 * MIB

#: What each setting ``config set`` changes takes, in the words its error uses.
SETTABLE: Final = {
    "repository": "host[:port]/name, https://host/name, oci-layout:DIR, "
    "or '' for the embedded registry",
    "signing": "key or keyless",
    "sigstore_trust": "public-good, staging, or a ClientTrustConfig or trusted root JSON file",
    "chunk_bytes": "a positive number of bytes",
    "compression": " or ".join(p.COMPRESSIONS),
    "ttl_seconds": "a positive number of seconds",
}


@dataclass(frozen=True)
class Paths:
    """Every on-disk location, resolved once.

    Attributes:
        config_dir: config.toml, trust.json, keys/ (private).
        state_dir: state.db (what was received, the push queue), logs.
        cache_dir: verified chunk cache, cached Sigstore trusted root.
        data_dir: the default embedded registry.
    """

    config_dir: Path
    state_dir: Path
    cache_dir: Path
    data_dir: Path

    @property
    def config_file(self) -> Path:
        """The TOML settings file."""
        return self.config_dir / "config.toml"

    @property
    def trust_file(self) -> Path:
        """The trust policy."""
        return self.config_dir / "trust.json"

    @property
    def key_file(self) -> Path:
        """Our ECDSA P-256 signing key (0600)."""
        return self.config_dir / "keys" / "signing.key"

    @property
    def state_db(self) -> Path:
        """SQLite database of received messages and the outbox queue."""
        return self.state_dir / "state.db"

    @property
    def default_repository(self) -> str:
        """The embedded registry every identity on this machine shares by default."""
        return f"{LAYOUT_PREFIX}{self.data_dir / 'registry'}"


def resolve_paths(environ: Mapping[str, str] | None = None) -> Paths:
    """Paths from ``DOCKERCOMMS_HOME`` or the XDG base directories."""
    env = os.environ if environ is None else environ
    data_home = env.get("XDG_DATA_HOME")
    data_dir = Path(data_home) / APP if data_home else Path(platformdirs.user_data_dir(APP))
    home = env.get("DOCKERCOMMS_HOME")
    if home:
        root = Path(home).expanduser()
        return Paths(root, root / "state", root / "cache", data_dir)
    return Paths(
        Path(platformdirs.user_config_dir(APP)),
        Path(platformdirs.user_state_dir(APP)),
        Path(platformdirs.user_cache_dir(APP)),
        data_dir,
    )


@dataclass(frozen=True)
class Settings:
    """What ``config.toml`` holds.

    Attributes:
        identity: my name; what I send as and receive as.
        repository: ``--repo`` default; empty means the embedded registry.
        signing: ``key`` (local P-256 key) or ``keyless`` (Sigstore).
        sigstore_trust: ``public-good``, ``staging`` or the absolute path of a
            ClientTrustConfig (or, for a key-pair identity, a bare trusted root):
            the Sigstore instance I sign with, and the one new keyless trust
            entries use unless ``trust add --sigstore-trust`` names another.
        chunk_bytes: chunk size for sending.
        compression: ``zstd`` (fast) or ``gzip`` (for old readers).
        ttl_seconds: default message lifetime.
        storage_config: distribution ``config.yml`` for a ``storage:NAME`` repository
            (its ``storage:`` section; an absolute path is best).
    """

    identity: str
    repository: str = ""
    signing: str = "key"
    sigstore_trust: str = "public-good"
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    compression: str = "zstd"
    ttl_seconds: int = p.DEFAULT_TTL_SECONDS
    storage_config: str = ""

    def validate(self) -> Settings:
        """Raise ``ConfigError`` on values no command could use."""
        if not self.identity:
            raise ConfigError("identity must not be empty")
        if self.signing not in ("key", "keyless"):
            raise ConfigError(f"signing must be 'key' or 'keyless', not {self.signing!r}")
        if self.compression not in p.COMPRESSIONS:
            raise ConfigError(f"compression must be one of {', '.join(p.COMPRESSIONS)}")
        if self.chunk_bytes <= 0 or self.ttl_seconds <= 0:
            raise ConfigError("chunk_bytes and ttl_seconds must be positive")
        return self


def load_settings(paths: Paths) -> Settings:
    """Read ``config.toml``; tells the user to run ``init`` when it is missing."""
    try:
        doc = tomllib.loads(paths.config_file.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"no configuration at {paths.config_file}; run 'dockercomms init --identity NAME'"
        ) from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {paths.config_file}: {exc}") from exc
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ConfigError(f"{paths.config_file}: unknown settings {', '.join(unknown)}")
    try:
        return Settings(**doc).validate()
    except TypeError as exc:
        raise ConfigError(f"{paths.config_file}: {exc}") from exc


def setting_value(key: str, text: str, settings: Settings) -> str | int:
    """``text`` checked and normalised as the new value of setting ``key``.

    ``settings`` are the others (whether a trust file must be able to sign depends
    on ``signing``). Raises :class:`ConfigError` naming what the setting takes.
    The Sigstore check imports sigstore, so only when that setting is touched.
    """
    if key == "identity":
        raise ConfigError(
            "the identity is who you are to others and is in their trust files; "
            "start over under another with 'dockercomms init --force --identity NAME'"
        )
    if key not in SETTABLE:
        raise ConfigError(f"unknown setting {key!r}; the settings are {', '.join(SETTABLE)}")
    wanted = f"{key} takes {SETTABLE[key]}, not {text!r}"
    if key in ("chunk_bytes", "ttl_seconds"):
        try:
            number = int(text)
        except ValueError:
            number = 0
        if number <= 0:
            raise ConfigError(wanted)
        return number
    if key == "compression" and text not in p.COMPRESSIONS:
        raise ConfigError(wanted)
    if key == "signing":
        if text not in ("key", "keyless"):
            raise ConfigError(wanted)
        if text == "keyless":
            try:
                _check_sigstore_trust(settings.sigstore_trust, signing=True)
            except ConfigError as exc:
                raise ConfigError(
                    f"keyless signing uses the sigstore_trust setting: {exc}"
                ) from exc
    if key == "sigstore_trust":
        return _check_sigstore_trust(text, signing=settings.signing == "keyless")
    if key == "repository" and text:
        parse_repository(text)
        if text.startswith(LAYOUT_PREFIX):
            folder = Path(text.removeprefix(LAYOUT_PREFIX)).expanduser()
            return f"{LAYOUT_PREFIX}{os.path.abspath(folder)}"
    return text


def _check_sigstore_trust(text: str, *, signing: bool) -> str:
    from dockercomms.core.signing.keyless import check_trust_source

    return check_trust_source(text, signing=signing)


def save_settings(paths: Paths, settings: Settings) -> None:
    """Write ``config.toml`` atomically."""
    write_atomic(paths.config_file, tomli_w.dumps(asdict(settings.validate())).encode(), mode=0o644)
