"""Request and response bodies: uploads hashed as they go, answers read under a cap.

Caveats first:

* Every response body the registry client or the token service reads goes
  through :func:`pieces` (or :func:`read_capped` / :func:`read_prefix` on top of
  it): a size cap counted as the bytes arrive, never after, and failures turned
  into :class:`BodyBrokeOffError` with a plain sentence. The time bound sits
  lower down, in :mod:`.transport`, where each read of the socket is made.
* A body read only to decorate an error message (:func:`read_prefix`) never
  raises: the status decides the error, the body only adds words.
* A blob upload streams bytes whose digest is only known at the end; the
  client needs it for the closing ``PUT ?digest=``. :class:`HashingBody` hashes
  each piece as it is handed over, so the bytes are produced and read once.
* The embedded registry runs in the same process. When its request body is a
  ``HashingBody`` it adopts that digest instead of hashing the same bytes again:
  the object hashed exactly the pieces the registry stored, in order, by
  construction. Over HTTP nothing changes; the server hashes what it received.
* A body can be iterated once; a retry builds a new one from fresh pieces.
* An upload's time is bounded by a :class:`~.retry.Pace` checked between pieces
  (each piece's ``sendall`` is bounded by the socket timeout).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Generator, Iterable, Iterator

import requests

from dockercomms.core._internal.registry.retry import Failure, Pace, RetryPolicy, classify
from dockercomms.core.errors import LimitExceededError, RegistryUnavailableError

log = logging.getLogger(__name__)

#: Size of the pieces small bodies are read in.
SMALL_PIECE = 64 * 1024


class BodyBrokeOffError(RegistryUnavailableError):
    """A response body failed while it was read: cut off, stalled, or too slow.

    Only these are worth reading again from the start
    (:meth:`~dockercomms.core._internal.registry.client.RegistryClient.retry_broken_body`);
    a request that failed before it had an answer was already retried, or was
    not worth it.

    Attributes:
        failure: what happened, and whether it is temporary.
    """

    def __init__(self, message: str, failure: Failure) -> None:
        super().__init__(message)
        self.failure = failure


def pieces(
    response: requests.Response, what: str, policy: RetryPolicy, piece: int = SMALL_PIECE
) -> Generator[bytes, None, None]:
    """The body in pieces of at most ``piece`` bytes; transport failures become
    :class:`BodyBrokeOffError`. Closes the response when done or abandoned."""
    try:
        yield from response.iter_content(piece)
    except (requests.RequestException, OSError) as exc:
        failure = classify(exc, policy)
        log.debug("%s: reading the answer failed", what, exc_info=True)
        # The sentence says it all; urllib3's repr of the cause is noise.
        raise BodyBrokeOffError(failure.sentence(what, response.url), failure) from None
    finally:
        response.close()


def read_capped(response: requests.Response, limit: int, what: str, policy: RetryPolicy) -> bytes:
    """The whole body, or :class:`LimitExceededError` as soon as it passes ``limit``."""
    chunks: list[bytes] = []
    total = 0
    body = pieces(response, what, policy, min(SMALL_PIECE, limit + 1))
    try:
        for piece in body:
            total += len(piece)
            if total > limit:
                raise LimitExceededError(f"{what}: the answer is larger than {limit} bytes")
            chunks.append(piece)
    finally:
        body.close()
    return b"".join(chunks)


def read_prefix(response: requests.Response, limit: int, policy: RetryPolicy) -> bytes:
    """At most ``limit`` bytes of the body, for an error message; never raises."""
    chunks: list[bytes] = []
    total = 0
    body = pieces(response, "error body", policy, min(SMALL_PIECE, limit))
    try:
        for piece in body:
            chunks.append(piece[: limit - total])
            total += len(piece)
            if total >= limit:
                break
    except (RegistryUnavailableError, ValueError):
        pass  # the status already says what went wrong
    finally:
        body.close()
    return b"".join(chunks)


class HashingBody:
    """An iterable request body that keeps the sha256 and size of what it yielded."""

    def __init__(
        self,
        pieces: Iterable[bytes],
        on_piece: Callable[[int], None],
        pace: Pace | None = None,
    ) -> None:
        self._pieces = pieces
        self._on_piece = on_piece
        self._pace = pace
        self._hasher = hashlib.sha256()
        self._started = False
        self.complete = False
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            raise RuntimeError("an upload body can be sent only once")
        self._started = True
        for piece in self._pieces:
            if self._pace is not None:
                # Between pieces: a server that takes the upload in a trickle
                # would otherwise hold it for (pieces x socket timeout).
                self._pace.check(self.size)
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
