"""Distribution's ``storage:`` configuration: its ``config.yml`` and ``REGISTRY_STORAGE_*``.

Caveats first:

* Only the ``storage:`` section of the file is read; ``http``, ``auth`` and the rest
  mean nothing without a server and are ignored, so the very file a registry runs
  with can be given as it is.
* Environment overrides follow distribution's own parser (``configuration/parser.go``):
  variables apply in lexical order of their names, so ``REGISTRY_STORAGE`` (which
  replaces the whole section) comes before ``REGISTRY_STORAGE_S3_BUCKET``; each
  ``_`` is one level down; a map key is matched case-insensitively and created in
  lower case; every value is parsed as YAML, so ``false`` is a boolean and ``""`` is
  empty. As in distribution, a key that contains ``_`` cannot be reached this way.
* Exactly one driver must remain besides the sections distribution treats as
  options (``maintenance``, ``cache``, ``delete``, ``redirect``, ``tag``).
* ``delete.enabled`` and ``maintenance.readonly.enabled`` count only when they are
  the YAML boolean ``true``, as in distribution.
* The file is the user's own, so it is trusted, but it is still read through
  ``yaml.safe_load`` (no Python objects) and at most :data:`MAX_CONFIG_BYTES`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from dockercomms.core.errors import ConfigError

__all__ = ["ENV_PREFIX", "MAX_CONFIG_BYTES", "StorageConfig", "load_storage_config"]

ENV_PREFIX: Final = "REGISTRY_STORAGE"
"""Environment variables with this prefix override the file, as for distribution."""

MAX_CONFIG_BYTES: Final = 1024 * 1024

#: Keys of ``storage:`` that are options, not drivers (distribution's ``Storage.Type``).
OPTION_SECTIONS: Final = frozenset({"maintenance", "cache", "delete", "redirect", "tag"})

_TRUE_TEXT: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE_TEXT: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})


@dataclass(frozen=True)
class StorageConfig:
    """One storage driver and the options that change what a registry may do.

    Attributes:
        driver: ``filesystem``, ``s3``, ... (the one non-option key of ``storage:``).
        parameters: that driver's parameters, keys as written (distribution reads
            lower-case keys only, and so do we).
        delete_enabled: ``storage.delete.enabled``; without it deletes are refused (405).
        read_only: ``storage.maintenance.readonly.enabled``; writes are refused (405).
        source: where it came from, for messages (``FILE``, ``FILE + environment``).
    """

    driver: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    delete_enabled: bool = False
    read_only: bool = False
    source: str = "environment"

    def text(self, key: str) -> str | None:
        """A parameter as text; None when absent, null or empty (Go's ``fmt.Sprint``)."""
        value = self.parameters.get(key)
        if value is None or value == "":
            return None
        if isinstance(value, dict | list):
            raise ConfigError(f"storage.{self.driver}.{key} in {self.source} must be a scalar")
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def flag(self, key: str, default: bool) -> bool:
        """A boolean parameter: a YAML boolean, or text ``strconv.ParseBool`` accepts."""
        value = self.parameters.get(key)
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            return value
        text = str(value)
        if text in _TRUE_TEXT:
            return True
        if text in _FALSE_TEXT:
            return False
        raise ConfigError(
            f"storage.{self.driver}.{key} in {self.source} must be true or false, not {text!r}"
        )

    def number(self, key: str, default: int) -> int:
        """A whole-number parameter (a YAML integer or decimal text)."""
        value = self.parameters.get(key)
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            raise ConfigError(f"storage.{self.driver}.{key} in {self.source} must be a number")
        try:
            return int(str(value), 10)
        except ValueError:
            raise ConfigError(
                f"storage.{self.driver}.{key} in {self.source} must be a number, not {value!r}"
            ) from None


def load_storage_config(
    path: Path | None, environ: Mapping[str, str] | None = None
) -> StorageConfig:
    """The storage section of ``path`` (if any) with ``REGISTRY_STORAGE*`` applied.

    Raises :class:`ConfigError` when the file cannot be read or parsed, or when no
    driver or more than one driver remains.
    """
    env = os.environ if environ is None else environ
    section: Any = {}
    sources: list[str] = []
    if path is not None:
        section = _section_from_file(path)
        sources.append(str(path))
    overrides = sorted((k, v) for k, v in env.items() if _is_storage_override(k))
    if overrides:
        sources.append("environment")
    where = " + ".join(sources) or "environment"
    storage = _as_storage(section, where)
    for name, value in overrides:
        storage = _apply_override(storage, name, value)
    return _config_from(storage, where)


def _section_from_file(path: Path) -> Any:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read storage config {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"storage config {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        document = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"storage config {path} is not valid YAML: {exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"storage config {path} is not a YAML mapping")
    return document.get("storage") or {}


def _is_storage_override(name: str) -> bool:
    return name == ENV_PREFIX or name.startswith(ENV_PREFIX + "_")


def _as_storage(value: Any, where: str) -> dict[str, Any]:
    """The ``storage:`` value as a map: a bare string names a driver with no parameters."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {value: {}}
    if not isinstance(value, dict):
        raise ConfigError(f"storage in {where} must be a driver name or a mapping")
    return {str(key): item for key, item in value.items()}


def _apply_override(storage: dict[str, Any], name: str, payload: str) -> dict[str, Any]:
    """One ``REGISTRY_STORAGE...`` variable applied as distribution's parser does."""
    try:
        value = yaml.safe_load(payload) if payload else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name} is not a valid YAML value: {exc}") from exc
    path = name.split("_")[2:]  # drop REGISTRY, STORAGE
    if not path:
        return _as_storage(value, name)
    _set_in(storage, path, value)
    return storage


def _set_in(mapping: dict[str, Any], path: list[str], value: Any) -> None:
    head, rest = path[0], path[1:]
    if rest:
        for key, existing in mapping.items():
            if key.upper() == head and isinstance(existing, dict):
                _set_in(existing, rest, value)
                return
        # Missing (or not a map): distribution recreates the key in lower case.
        child: dict[str, Any] = {}
        _set_in(child, rest, value)
        mapping[head.lower()] = child
        return
    mapping[head.lower()] = value


def _config_from(storage: Mapping[str, Any], where: str) -> StorageConfig:
    drivers = sorted(key for key in storage if key not in OPTION_SECTIONS)
    if not drivers:
        raise ConfigError(
            f"no storage driver configured in {where}: give a distribution config.yml with "
            "a storage: section (--storage-config / storage_config) or REGISTRY_STORAGE_* "
            "variables"
        )
    if len(drivers) > 1:
        raise ConfigError(f"more than one storage driver in {where}: {', '.join(drivers)}")
    driver = drivers[0]
    parameters = storage[driver]
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise ConfigError(f"storage.{driver} in {where} must be a mapping of parameters")
    delete = storage.get("delete")
    maintenance = storage.get("maintenance")
    readonly = maintenance.get("readonly") if isinstance(maintenance, dict) else None
    return StorageConfig(
        driver=driver,
        parameters={str(key): item for key, item in parameters.items()},
        delete_enabled=isinstance(delete, dict) and delete.get("enabled") is True,
        read_only=isinstance(readonly, dict) and readonly.get("enabled") is True,
        source=where,
    )
