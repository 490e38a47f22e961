"""Upload bodies that hash what they send, as they send it.

Caveats first:

* A blob upload streams bytes whose digest is only known at the end; the
  client needs it for the closing ``PUT ?digest=``. :class:`HashingBody` hashes
  each piece as it is handed over, so the bytes are produced and read once.
* The embedded registry runs in the same process. When its request body is a
  ``HashingBody`` it adopts that digest instead of hashing the same bytes again:
  the object hashed exactly the pieces the registry stored, in order, by
  construction. Over HTTP nothing changes; the server hashes what it received.
* A body can be iterated once; a retry builds a new one from fresh pieces.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator


class HashingBody:
    """An iterable request body that keeps the sha256 and size of what it yielded."""

    def __init__(self, pieces: Iterable[bytes], on_piece: Callable[[int], None]) -> None:
        self._pieces = pieces
        self._on_piece = on_piece
        self._hasher = hashlib.sha256()
        self._started = False
        self.complete = False
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            raise RuntimeError("an upload body can be sent only once")
        self._started = True
        for piece in self._pieces:
            self._hasher.update(piece)
            self.size += len(piece)
            self._on_piece(len(piece))
            yield piece
        self.complete = True

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of everything yielded so far."""
        return "sha256:" + self._hasher.hexdigest()

    def hasher(self) -> hashlib._Hash:
        """A copy of the running hash, for a registry that adopts it."""
        return self._hasher.copy()
