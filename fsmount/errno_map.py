"""Typed errors -> ``errno``, decided once, for everything that crosses the FUSE boundary.

Caveats first:

* ``DigestMismatchError`` is a ``VerificationError`` in ``core.errors``, but to a
  reader it means "the bytes are corrupt", not "policy says no", so it maps to
  ``EIO`` and is checked before its parent class.
* A registry that is down is ``EIO`` as well: ``EAGAIN`` would make ``cat`` and
  friends spin or print confusing text, and the error is visible in
  ``user.dockercomms.error`` and ``.status``.
* Anything that is neither ours nor an ``OSError`` is a bug; it becomes ``EIO``
  and is logged with its traceback by the caller (``operations.py``).
* :func:`reason` is escaped (:func:`~dockercomms.core.untrusted.shown`): error
  texts quote what a message or a registry claimed, and every place that shows a
  reason (log, ``.rejected/``, ``user.dockercomms.error``, ``.status``, receipts,
  notifications) is one a newline or an ESC sequence could forge or garble.
"""

from __future__ import annotations

import errno

from dockercomms.core.errors import (
    AuthError,
    DigestMismatchError,
    Disposition,
    DockerCommsError,
    NotFoundError,
    OutputError,
    ProtocolError,
    RegistryError,
    VerificationError,
)
from dockercomms.core.untrusted import shown

#: Longest reason shown: room for a cause chain, still one bounded line.
MAX_REASON_CHARS = 1000

#: (class, errno) in the order they are tested: most specific first.
_TABLE: tuple[tuple[type[DockerCommsError], int], ...] = (
    (DigestMismatchError, errno.EIO),
    (VerificationError, errno.EACCES),
    (ProtocolError, errno.EIO),
    (NotFoundError, errno.ENOENT),
    (AuthError, errno.EACCES),
    (RegistryError, errno.EIO),
)


def errno_for(error: BaseException) -> int:
    """The ``errno`` a system call should fail with for ``error``."""
    if isinstance(error, OSError) and error.errno:
        return error.errno
    if isinstance(error, OutputError):
        cause = error.__cause__
        if isinstance(cause, OSError) and cause.errno:
            return cause.errno
        return errno.EIO
    for cls, number in _TABLE:
        if isinstance(error, cls):
            return number
    return errno.EIO


def is_rejection(error: DockerCommsError) -> bool:
    """True when ``error`` means "this message is bad" rather than "try again later".

    The error class decides (``core.errors.Disposition``), as it does for ``recv``.
    Rejections are remembered on the file (``user.dockercomms.error``), listed in
    ``inbox/.rejected/`` and answered with a ``rejected`` receipt; registry trouble
    and my own set-up are none of those.
    """
    return error.disposition is Disposition.REJECTED


def reason(error: BaseException) -> str:
    """One escaped line for logs, ``.rejected/`` contents and ``user.dockercomms.error``."""
    if isinstance(error, DockerCommsError):
        return f"{type(error).__name__}: {shown(error.diagnostics(), MAX_REASON_CHARS)}"
    return f"{type(error).__name__}: {shown(error, MAX_REASON_CHARS)}"
