"""Logging a condition a poll loop meets again and again: once, until it changes.

Caveats first:

* A loop that polls every few seconds and logs what it finds per item fills
  the journal with the same line (a receipt it ignores, a tag it cannot check
  yet, a registry that is down). :class:`LogOnce` logs a line for a key only
  when the key is new or its text changed; :meth:`LogOnce.clear` says the
  condition is over, so its next occurrence is logged again.
* Keys often come from the repository (tags, digests), so the memory is
  bounded: past :data:`MAX_KEYS` the oldest key is forgotten (it may then be
  logged once more).
* Thread-safe: the mount's worker threads and its trio thread share one.
* The text is compared after ``%`` formatting, so pass untrusted values through
  :func:`dockercomms.core.untrusted.shown` first, as for any log line.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

#: Keys remembered at most; the oldest is forgotten first.
MAX_KEYS = 10_000


class LogOnce:
    """One logger's memory of what it already said, per key."""

    def __init__(self, logger: logging.Logger, *, max_keys: int = MAX_KEYS) -> None:
        self.logger = logger
        self._said: OrderedDict[str, str] = OrderedDict()
        self._max_keys = max_keys
        self._lock = threading.Lock()

    def log(self, level: int, key: str, text: str, *args: object, exc_info: bool = False) -> bool:
        """Log ``text % args`` unless it is what was last logged for ``key``; True if logged.

        ``exc_info`` adds the traceback of the exception being handled, so a
        repeated unexpected failure shows its traceback once, not once per poll.
        """
        line = text % args if args else text
        with self._lock:
            if self._said.get(key) == line:
                self._said.move_to_end(key)
                return False
            self._said[key] = line
            self._said.move_to_end(key)
            while len(self._said) > self._max_keys:
                self._said.popitem(last=False)
        self.logger.log(level, "%s", line, exc_info=exc_info)
        return True

    def clear(self, key: str) -> bool:
        """The condition of ``key`` is over; True if it had been logged."""
        with self._lock:
            return self._said.pop(key, None) is not None

    def keep_only(self, keys: set[str] | frozenset[str]) -> None:
        """Forget every key not in ``keys`` (their items are gone)."""
        with self._lock:
            for key in [k for k in self._said if k not in keys]:
                del self._said[key]
