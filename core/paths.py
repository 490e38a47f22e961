"""Where every file of one identity lives: the one place that names them.

``DOCKERCOMMS_HOME`` puts one identity's config, keys, trust and state under one
folder (so two identities can share a machine); without it the XDG config, state
and cache dirs are used. The embedded registry defaults to the XDG *data* dir in
both cases, so two identities on one machine share a store with no set-up.

Caveats first:

* Every state file, lock, spool, cache folder and log is a property here; the
  code that owns a file opens it from here, and nothing else spells its name.
  Who owns which file is in ``ARCHITECTURE.md``.
* Only standard library and ``core`` leaf imports: ``dockercomms status`` and the
  CLI's parser-level code may use it without loading the engine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from dockercomms.core._internal.registry.reference import LAYOUT_PREFIX

APP = "dockercomms"


@dataclass(frozen=True)
class Paths:
    """Every on-disk location of one identity, resolved once.

    Attributes:
        config_dir: config.toml, trust.json, keys/ (private).
        state_dir: what was received and answered, the push queue, the mount's
            spool, records and logs.
        cache_dir: verified chunk cache, cached Sigstore trusted roots.
        data_dir: the default embedded registry.
    """

    config_dir: Path
    state_dir: Path
    cache_dir: Path
    data_dir: Path

    # --- config ---------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        """The TOML settings file (``core.config``)."""
        return self.config_dir / "config.toml"

    @property
    def trust_file(self) -> Path:
        """The trust policy (``core.trust``)."""
        return self.config_dir / "trust.json"

    @property
    def key_file(self) -> Path:
        """Our ECDSA P-256 signing key (0600)."""
        return self.config_dir / "keys" / "signing.key"

    @property
    def age_identity_file(self) -> Path:
        """My age X25519 identities (0600), newest last (``core.age_keys``, SPEC 9)."""
        return self.key_file.parent / "age.key"

    # --- state ----------------------------------------------------------------------

    @property
    def state_db(self) -> Path:
        """SQLite: messages received and rejected (the ledger), and receipts sent."""
        return self.state_dir / "state.db"

    @property
    def legacy_receipts_db(self) -> Path:
        """Where mounts before one receipt store kept their receipts (read once, then gone)."""
        return self.state_dir / "fsmount.db"

    @property
    def queue_db(self) -> Path:
        """SQLite: the push queue's items (``syncer.queue``)."""
        return self.state_dir / "queue.db"

    @property
    def queue_dir(self) -> Path:
        """The push queue's private copies of the files it sends."""
        return self.state_dir / "queue"

    @property
    def queue_lock(self) -> Path:
        """Held by the one syncer (a mount's or ``dockercomms sync``) that owns the queue."""
        return self.state_dir / "queue.lock"

    @property
    def spool_dir(self) -> Path:
        """The mount's ``outbox/``: real files the syncer's watcher queues."""
        return self.state_dir / "spool"

    @property
    def staging_dir(self) -> Path:
        """Where the mount writes ``fsync`` snapshots before they are queued."""
        return self.state_dir / "fsmount" / "staging"

    @property
    def mount_record(self) -> Path:
        """Where this identity is mounted, by which pid (``fsmount.mount_record``)."""
        return self.state_dir / "mount.json"

    @property
    def mount_log(self) -> Path:
        """The log of a mount started in the background."""
        return self.state_dir / "mount.log"

    @property
    def gc_journal(self) -> Path:
        """Deletions gc planned and has not done yet (``core.garbage``)."""
        return self.state_dir / "gc-journal.json"

    @property
    def gc_lock(self) -> Path:
        """Held by the one gc run of this identity at a time."""
        return self.state_dir / "gc.lock"

    # --- cache ----------------------------------------------------------------------

    @property
    def chunk_cache_dir(self) -> Path:
        """The mount's verified chunk cache (``fsmount.chunk_cache``)."""
        return self.cache_dir / "chunks"

    @property
    def sigstore_cache_dir(self) -> Path:
        """Cached Sigstore trusted roots, one folder per instance."""
        return self.cache_dir / "sigstore"

    # --- data -----------------------------------------------------------------------

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
