"""Can we write this storage? A probe that leaves nothing a registry would mind.

Caveats first:

* The probe file goes where distribution keeps unfinished uploads,
  ``<repository>/_uploads/<uuid>/startedat`` (the very file distribution writes there,
  with the current time), and is removed at once. Should the process die in between,
  a registry's upload purging removes it like any abandoned upload.
* It proves what was exercised: one small write, read back and delete under the
  repository. A policy that allows some prefixes and not others can still refuse
  blob writes elsewhere.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from dockercomms.core._internal.registry.storage.drivers import StorageDriver, StorageFailure
from dockercomms.core._internal.registry.storage.layout import RepositoryLayout

__all__ = ["WriteProbe", "probe_write"]


@dataclass(frozen=True)
class WriteProbe:
    """What the write probe did.

    Attributes:
        path: the probe file, relative to the storage root.
        read_back: the bytes read back were the bytes written.
    """

    path: str
    read_back: bool


def probe_write(driver: StorageDriver, name: str) -> WriteProbe:
    """Write, read back and remove a probe file in ``name``'s upload scratch space.

    Raises :class:`StorageFailure` when the storage refuses any of the three steps.
    """
    layout = RepositoryLayout(name)
    folder = layout.upload_dir(str(uuid.uuid4()))
    path = f"{folder}/startedat"
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    try:
        driver.put(path, stamp, layout.uploads_dir)
        read_back = driver.read(path, 64) == stamp
    finally:
        try:
            driver.delete_tree(folder)
        except StorageFailure:
            if driver.size(path) is not None:
                raise
    return WriteProbe(path, read_back)
