"""Where distribution 2.8 keeps each thing in its storage, and how a link file reads.

Read from what ``docker-registry`` 2.8.2 writes (push, then ``find`` the root)::

    docker/registry/v2/blobs/sha256/<hex[:2]>/<hex>/data          blob bytes, shared
    docker/registry/v2/repositories/<name>/
        _layers/sha256/<hex>/link                                 blob in this repository
        _manifests/revisions/sha256/<hex>/link                    manifest in this repository
        _manifests/tags/<tag>/current/link                        what the tag points at
        _manifests/tags/<tag>/index/sha256/<hex>/link             every digest it pointed at
        _uploads/<uuid>/{data,startedat,hashstates/...}           uploads in progress

A link file holds ``sha256:<hex>`` and nothing else (no newline). Paths are relative
to the driver's root (``rootdirectory``).

Caveats first:

* Every path is built from a repository name, tag or digest that was validated here;
  the builders check again and raise ``ValueError`` on anything else, so no string from
  a request or from storage can climb out of the layout (no ``..``, no ``/`` in a tag).
* What a link file says is untrusted (anyone who can write the storage wrote it):
  :func:`parse_link` accepts exactly one sha256 digest and nothing else, and callers
  compare it with the digest they asked for before it decides any path.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "LINK_LIMIT",
    "ROOT",
    "RepositoryLayout",
    "blob_data_path",
    "link_bytes",
    "parse_link",
]

ROOT: Final = "docker/registry/v2"
LINK_LIMIT: Final = 256
"""Most bytes read from a link file; a valid one has 71."""

_DIGEST: Final = re.compile(r"sha256:([a-f0-9]{64})")
_TAG: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_NAME_COMPONENT: Final = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME: Final = re.compile(rf"{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*")
_UPLOAD_ID: Final = re.compile(r"[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}")


def _hex(digest: str) -> str:
    match = _DIGEST.fullmatch(digest)
    if match is None:
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return match.group(1)


def blob_data_path(digest: str) -> str:
    """The bytes of a blob (or manifest), shared by every repository."""
    hexa = _hex(digest)
    return f"{ROOT}/blobs/sha256/{hexa[:2]}/{hexa}/data"


def link_bytes(digest: str) -> bytes:
    """What a link file to ``digest`` contains, exactly as distribution writes it."""
    _hex(digest)
    return digest.encode("ascii")


def parse_link(raw: bytes | None) -> str | None:
    """The digest a link file names, or None when it is missing or not exactly one digest.

    Surrounding whitespace is tolerated (a hand-edited file); anything else is not.
    """
    if raw is None or len(raw) > LINK_LIMIT:
        return None
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    return text if _DIGEST.fullmatch(text) else None


def is_tag(text: str) -> bool:
    """Whether ``text`` is a tag distribution (and SPEC 1) accepts."""
    return _TAG.fullmatch(text) is not None


class RepositoryLayout:
    """The paths of one repository. ``name`` must be a valid repository name."""

    def __init__(self, name: str) -> None:
        if len(name) > 255 or _NAME.fullmatch(name) is None:
            raise ValueError(f"not a repository name: {name!r}")
        self.name = name
        self.root = f"{ROOT}/repositories/{name}"

    def layer_link(self, digest: str) -> str:
        """The link that makes a blob part of this repository."""
        return f"{self.root}/_layers/sha256/{_hex(digest)}/link"

    def revision_link(self, digest: str) -> str:
        """The link that makes a manifest part of this repository."""
        return f"{self.root}/_manifests/revisions/sha256/{_hex(digest)}/link"

    @property
    def tags_dir(self) -> str:
        """One directory per tag; listing it lists the tags."""
        return f"{self.root}/_manifests/tags"

    def tag_dir(self, tag: str) -> str:
        """Everything about one tag; removing it untags."""
        if not is_tag(tag):
            raise ValueError(f"not a tag: {tag!r}")
        return f"{self.tags_dir}/{tag}"

    def tag_current_link(self, tag: str) -> str:
        """The manifest ``tag`` points at now."""
        return f"{self.tag_dir(tag)}/current/link"

    def tag_index_link(self, tag: str, digest: str) -> str:
        """A record that ``tag`` pointed at ``digest`` (distribution's tag history)."""
        return f"{self.tag_dir(tag)}/index/sha256/{_hex(digest)}/link"

    @property
    def uploads_dir(self) -> str:
        """Distribution's scratch space; its upload purging removes old entries."""
        return f"{self.root}/_uploads"

    def upload_dir(self, upload_id: str) -> str:
        """One upload's scratch directory (``upload_id``: a UUID, as distribution names them)."""
        if _UPLOAD_ID.fullmatch(upload_id) is None:
            raise ValueError(f"not an upload id: {upload_id!r}")
        return f"{self.uploads_dir}/{upload_id}"
