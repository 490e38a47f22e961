"""What the user configured: ``config.toml`` (where it lives: :mod:`.paths`).

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
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Final

import tomli_w

from dockercomms.core import protocol
from dockercomms.core._internal.limits import MIB
from dockercomms.core._internal.registry.reference import LAYOUT_PREFIX, parse_repository
from dockercomms.core.errors import ConfigError
from dockercomms.core.paths import Paths
from dockercomms.core.trust import write_atomic

DEFAULT_CHUNK_BYTES = 32 * MIB

#: What each setting ``config set`` changes takes, in the words its error uses.
SETTABLE: Final = {
    "repository": "host[:port]/name, https://host/name, oci-layout:DIR, "
    "or '' for the embedded registry",
    "signing": "key or keyless",
    "sigstore_trust": "public-good, staging, or a ClientTrustConfig or trusted root JSON file",
    "chunk_bytes": "a positive number of bytes",
    "compression": " or ".join(protocol.COMPRESSIONS),
    "ttl_seconds": "a positive number of seconds",
    "storage_config": "the path of a distribution config.yml (its storage: section), "
    "or '' for none",
    "send_plaintext": "true or false",
    "require_sealed": "true or false",
}


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
        send_plaintext: send unsealed to a recipient whose age recipient is unknown
            instead of refusing (SPEC 9); ``send --plaintext`` asks for it once.
        require_sealed: reject a plaintext message from anyone (SPEC 9); a trust
            entry can require it from one sender (``Contact.require_sealed``).
    """

    identity: str
    repository: str = ""
    signing: str = "key"
    sigstore_trust: str = "public-good"
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    compression: str = "zstd"
    ttl_seconds: int = protocol.DEFAULT_TTL_SECONDS
    storage_config: str = ""
    send_plaintext: bool = False
    require_sealed: bool = False

    def validate(self) -> Settings:
        """Raise ``ConfigError`` on values no command could use."""
        if not self.identity:
            raise ConfigError("identity must not be empty")
        if self.signing not in ("key", "keyless"):
            raise ConfigError(f"signing must be 'key' or 'keyless', not {self.signing!r}")
        if self.compression not in protocol.COMPRESSIONS:
            raise ConfigError(f"compression must be one of {', '.join(protocol.COMPRESSIONS)}")
        if self.chunk_bytes <= 0 or self.ttl_seconds <= 0:
            raise ConfigError("chunk_bytes and ttl_seconds must be positive")
        for flag in (self.send_plaintext, self.require_sealed):
            if not isinstance(flag, bool):
                raise ConfigError("send_plaintext and require_sealed must be true or false")
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


def setting_value(key: str, text: str, settings: Settings) -> str | int | bool:
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
    if key in ("send_plaintext", "require_sealed"):
        if text not in ("true", "false"):
            raise ConfigError(wanted)
        return text == "true"
    if key == "compression" and text not in protocol.COMPRESSIONS:
        raise ConfigError(wanted)
    if key == "signing":
        if text not in ("key", "keyless"):
            raise ConfigError(wanted)
        if text == "keyless":
            try:
                check_sigstore_trust(settings.sigstore_trust, signing=True)
            except ConfigError as exc:
                raise ConfigError(
                    f"keyless signing uses the sigstore_trust setting: {exc}"
                ) from exc
    if key == "sigstore_trust":
        return check_sigstore_trust(text, signing=settings.signing == "keyless")
    if key == "storage_config" and text:
        config = Path(text).expanduser()
        if not config.is_file():
            raise ConfigError(f"{wanted}: there is no such file")
        return os.path.abspath(config)
    if key == "repository" and text:
        parse_repository(text)
        if text.startswith(LAYOUT_PREFIX):
            folder = Path(text.removeprefix(LAYOUT_PREFIX)).expanduser()
            return f"{LAYOUT_PREFIX}{os.path.abspath(folder)}"
    return text


def check_sigstore_trust(text: str, *, signing: bool) -> str:
    """``text`` as a Sigstore trust source (public-good, staging, or a file), checked.

    ``signing``: it must be able to sign (a ClientTrustConfig, not a bare trusted
    root). Imports sigstore, so only when a command gets such a value.
    """
    from dockercomms.core._internal.signing.keyless import check_trust_source

    return check_trust_source(text, signing=signing)


def save_settings(paths: Paths, settings: Settings) -> None:
    """Write ``config.toml`` atomically."""
    write_atomic(paths.config_file, tomli_w.dumps(asdict(settings.validate())).encode(), mode=0o644)
