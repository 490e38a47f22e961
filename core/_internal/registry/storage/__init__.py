"""Registry storage with no registry server (SPEC 10): ``--repo storage:NAME``.

A team that shares a disk or a bucket needs no registry process: this package reads
and writes distribution's own storage layout in process, configured by a distribution
``config.yml`` (its ``storage:`` section) and ``REGISTRY_STORAGE_*`` variables, and
serves it to the registry client through a ``requests`` transport, as the embedded
OCI-layout store is served. A stock ``docker-registry`` on the same storage sees the
same repository.

Modules: :mod:`.config` (the YAML section and environment overrides), :mod:`.layout`
(distribution's paths), :mod:`.drivers` (the driver interface and ``filesystem``),
:mod:`.s3` (``s3`` through Apache OpenDAL, and why OpenDAL), :mod:`.adapter` (the
registry API over a driver), :mod:`.probe` (what ``dockercomms doctor`` checks).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

from dockercomms.core._internal.registry.storage.config import StorageConfig, load_storage_config
from dockercomms.core.errors import ConfigError

if TYPE_CHECKING:
    from dockercomms.core._internal.registry.reference import RepositoryRef
    from dockercomms.core._internal.registry.storage.adapter import StorageRegistryAdapter
    from dockercomms.core._internal.registry.storage.drivers import StorageDriver

__all__ = [
    "DEFAULT_FILESYSTEM_ROOT",
    "SUPPORTED_DRIVERS",
    "StorageConfig",
    "load_storage_config",
    "open_driver",
    "storage_adapter",
]

DEFAULT_FILESYSTEM_ROOT: Final = "/var/lib/registry"
"""distribution's default ``rootdirectory`` for the filesystem driver."""

SUPPORTED_DRIVERS: Final = ("filesystem", "s3")


def open_driver(config: StorageConfig, environ: Mapping[str, str] | None = None) -> StorageDriver:
    """The driver ``config`` names; :class:`ConfigError` for one not supported here."""
    if config.driver == "filesystem":
        from dockercomms.core._internal.registry.embedded import DURABLE_BLOBS_ENV
        from dockercomms.core._internal.registry.storage.drivers import FilesystemDriver

        env = os.environ if environ is None else environ
        root = Path(config.text("rootdirectory") or DEFAULT_FILESYSTEM_ROOT).expanduser()
        return FilesystemDriver(
            root.absolute(), durable_blobs=env.get(DURABLE_BLOBS_ENV, "") not in ("", "0")
        )
    if config.driver == "s3":
        from dockercomms.core._internal.registry.retry import read_timeout_from_env
        from dockercomms.core._internal.registry.storage.s3 import S3Driver

        return S3Driver(config, read_timeout=read_timeout_from_env(environ), environ=environ)
    raise ConfigError(
        f"storage driver {config.driver!r} ({config.source}) is not supported: "
        f"use {' or '.join(SUPPORTED_DRIVERS)}"
    )


def storage_adapter(ref: RepositoryRef) -> StorageRegistryAdapter:
    """The in-process registry for a ``storage:NAME`` repository reference."""
    from dockercomms.core._internal.registry.storage.adapter import StorageRegistryAdapter

    config = load_storage_config(ref.storage_config)
    return StorageRegistryAdapter(
        open_driver(config), delete_enabled=config.delete_enabled, read_only=config.read_only
    )
