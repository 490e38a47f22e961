"""Where the repository lives: ``oci-layout:DIR``, ``storage:NAME`` or ``[scheme://]host/name``.

Parsing is separate from the client so the CLI, the config file and the syncer
all agree on one spelling.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from dockercomms.core.errors import ConfigError

LAYOUT_PREFIX = "oci-layout:"
STORAGE_PREFIX = "storage:"
EMBEDDED_REPOSITORY_NAME = "dockercomms/embedded"
_NAME = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)


@dataclass(frozen=True)
class RepositoryRef:
    """A parsed repository location.

    Attributes:
        layout_dir: set for the embedded registry (an OCI image layout on disk).
        host: ``host[:port]`` of a remote registry (empty for the embedded one).
        name: repository path within the registry.
        scheme: ``https`` unless plain HTTP was asked for or the host is loopback.
        storage: distribution's storage layout, in process (SPEC 10); ``name`` is the
            repository within that storage.
        storage_config: the distribution ``config.yml`` whose ``storage:`` section
            says where that storage is (None: ``REGISTRY_STORAGE_*`` variables only).
    """

    layout_dir: Path | None
    host: str
    name: str
    scheme: str
    storage: bool = False
    storage_config: Path | None = None

    @property
    def embedded(self) -> bool:
        """True for the in-process OCI layout backend."""
        return self.layout_dir is not None

    def __str__(self) -> str:
        if self.layout_dir is not None:
            return f"{LAYOUT_PREFIX}{self.layout_dir}"
        if self.storage:
            return f"{STORAGE_PREFIX}{self.name}"
        return f"{self.host}/{self.name}"


def parse_repository(
    text: str, *, insecure: bool = False, storage_config: str | Path | None = None
) -> RepositoryRef:
    """Parse a ``--repo`` value.

    Loopback hosts default to plain HTTP (a local test registry); every other host
    is HTTPS unless ``insecure`` or an explicit ``http://`` says otherwise.
    ``storage_config`` (``--storage-config``) matters for ``storage:NAME`` only.
    """
    if text.startswith(STORAGE_PREFIX):
        name = text[len(STORAGE_PREFIX) :].strip("/")
        if not _NAME.fullmatch(name):
            raise ConfigError(f"invalid repository name {name!r} (lowercase, digits, . _ - /)")
        config = Path(storage_config).expanduser().absolute() if storage_config else None
        return RepositoryRef(None, "", name, "http", storage=True, storage_config=config)
    if text.startswith(LAYOUT_PREFIX):
        directory = text[len(LAYOUT_PREFIX) :]
        if not directory:
            raise ConfigError("oci-layout: needs a directory")
        return RepositoryRef(
            Path(directory).expanduser().resolve(), "", EMBEDDED_REPOSITORY_NAME, "http"
        )
    scheme = None
    rest = text
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if scheme not in ("http", "https"):
            raise ConfigError(f"unsupported scheme {scheme!r} in {text!r}")
    host, _, name = rest.partition("/")
    name = name.rstrip("/")
    if not host or not name:
        raise ConfigError(f"repository must look like host[:port]/name, got {text!r}")
    if not _NAME.fullmatch(name):
        raise ConfigError(f"invalid repository name {name!r} (lowercase, digits, . _ - /)")
    if scheme is None:
        scheme = "http" if insecure or _is_loopback(host) else "https"
    return RepositoryRef(None, host, name, scheme)


def _is_loopback(host: str) -> bool:
    hostname = host
    if hostname.startswith("["):
        hostname = hostname[1 : hostname.find("]")]
    elif hostname.count(":") == 1:
        hostname = hostname.split(":", 1)[0]
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False
