"""Desktop notifications for what a user of the mount must not miss.

Caveats first:

* Only with a session bus (``$DBUS_SESSION_BUS_ADDRESS``); without one, or
  without ``jeepney``, every call is a silent no-op. Notifications are a
  courtesy: any D-Bus failure (no notification server, bus gone, timeout) is
  logged at debug level and ignored.
* ``jeepney``'s blocking API runs in a worker thread, so the trio loop that
  serves FUSE never waits on D-Bus; a call that hangs is abandoned after
  :data:`CALL_TIMEOUT_SECONDS`.
* Four kinds of event (:class:`EventWatcher`): a new verified file in
  ``inbox/``; a send that failed for good; a message rejected, either one of
  mine that the recipient's receipt rejected, or an incoming one that failed
  verification; a drop into ``outbox/`` that was refused (announced even at the
  first look). Several of a kind at once become one notification.
* What the first inbox poll after mounting lists is not announced (it would be
  the whole inbox at every start), so a file that arrived while the mount was
  down shows up in ``inbox/`` without a notification.
* The watcher reads the inbox view on the trio thread (it is only changed there)
  and the push queue's SQLite database in a worker thread.
* Every text is escaped (:func:`~dockercomms.core.untrusted.shown`): a rejection
  reason or a registry's error quotes what a stranger wrote. A notification
  server that renders markup in bodies (capability ``body-markup``: ``<b>``,
  ``<a href>``, ``<img src>``) gets ``&``, ``<`` and ``>`` as entities too, so a
  stranger's ``<img src=…>`` is shown as text and never fetched; one that does
  not render markup gets the text as it is (it would show ``&lt;`` literally).
  The capability is asked once per notifier. A look that fails
  unexpectedly is logged once, with its traceback, and the next one runs on time.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import trio

from dockercomms.core.log_once import LogOnce
from dockercomms.core.untrusted import shown

if TYPE_CHECKING:
    from jeepney import Message

    from dockercomms.fsmount.inbox_view import InboxView
    from dockercomms.syncer.queue import PushQueue

log = logging.getLogger(__name__)

CALL_TIMEOUT_SECONDS = 5.0
#: How often the watcher looks for new events.
WATCH_SECONDS = 5.0
#: Names listed in one folded notification before "and N more".
LISTED = 5
NOTIFICATIONS = "org.freedesktop.Notifications"
NOTIFICATIONS_PATH = "/org/freedesktop/Notifications"

EventKind = Literal["received", "send_failed", "rejected", "refused"]


def notify_call(
    summary: str,
    body: str,
    *,
    app_name: str = "dockercomms",
    icon: str = "",
    urgency: int = 1,
    expire_ms: int = -1,
) -> Message:
    """The ``org.freedesktop.Notifications.Notify`` method call (a D-Bus message)."""
    from jeepney import DBusAddress, new_method_call

    address = DBusAddress(NOTIFICATIONS_PATH, bus_name=NOTIFICATIONS, interface=NOTIFICATIONS)
    hints = {"urgency": ("y", urgency), "desktop-entry": ("s", "dockercomms")}
    return new_method_call(
        address,
        "Notify",
        "susssasa{sv}i",
        (app_name, 0, icon, summary, body, [], hints, expire_ms),
    )


def capabilities_call() -> Message:
    """The ``GetCapabilities`` method call: does the server render body markup?"""
    from jeepney import DBusAddress, new_method_call

    address = DBusAddress(NOTIFICATIONS_PATH, bus_name=NOTIFICATIONS, interface=NOTIFICATIONS)
    return new_method_call(address, "GetCapabilities")


class DesktopNotifier:
    """Shows notifications on the user's desktop, when there is one.

    Attributes:
        address: the session bus address, or None (then nothing is ever sent).
        sent: notifications delivered, for ``.status`` and tests.
    """

    def __init__(self, address: str | None, *, app_name: str = "dockercomms") -> None:
        self.address = address or None
        self.app_name = app_name
        self.sent = 0
        self._renders_markup: bool | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> DesktopNotifier:
        """A notifier on ``$DBUS_SESSION_BUS_ADDRESS`` (disabled when it is unset)."""
        env = os.environ if environ is None else environ
        return cls(env.get("DBUS_SESSION_BUS_ADDRESS"))

    @property
    def enabled(self) -> bool:
        """There is a session bus to try."""
        return self.address is not None

    def notify(self, summary: str, body: str = "", *, icon: str = "") -> bool:
        """Show one notification; blocks (call it from a thread). False if it did not go."""
        if self.address is None:
            return False
        try:
            from jeepney.io.blocking import open_dbus_connection

            with open_dbus_connection(bus=self.address) as connection:
                if self._renders_markup is None:
                    reply = connection.send_and_get_reply(
                        capabilities_call(), timeout=CALL_TIMEOUT_SECONDS
                    )
                    self._renders_markup = "body-markup" in reply.body[0]
                if self._renders_markup:
                    body = html.escape(body, quote=False)
                message = notify_call(summary, body, app_name=self.app_name, icon=icon)
                connection.send_and_get_reply(message, timeout=CALL_TIMEOUT_SECONDS)
        except Exception as exc:  # a courtesy: no D-Bus failure may reach the mount
            log.debug("desktop notification %r not shown: %s: %s", summary, type(exc).__name__, exc)
            return False
        self.sent += 1
        return True

    async def notify_async(self, summary: str, body: str = "", *, icon: str = "") -> bool:
        """:meth:`notify` from a worker thread, so trio never waits on D-Bus."""
        if self.address is None:
            return False
        with trio.move_on_after(CALL_TIMEOUT_SECONDS * 2):
            return await trio.to_thread.run_sync(
                lambda: self.notify(summary, body, icon=icon), abandon_on_cancel=True
            )
        return False


@dataclass(frozen=True)
class Event:
    """Something to tell the user once.

    Attributes:
        key: what makes it new (a message digest, a queue item, a tag).
        text: one line for the notification body.
    """

    kind: EventKind
    key: str
    text: str


_SUMMARIES: dict[EventKind, tuple[str, str, str]] = {
    # kind: (one, several, icon)
    "received": ("New file", "{n} new files", "mail-message-new"),
    "send_failed": ("Send failed", "{n} sends failed", "dialog-error"),
    "rejected": ("Message rejected", "{n} messages rejected", "dialog-warning"),
    "refused": ("Drop refused", "{n} drops refused", "dialog-warning"),
}


def fold(events: Iterable[Event]) -> list[tuple[str, str, str]]:
    """(summary, body, icon) per kind: one event as itself, several in one notification."""
    by_kind: dict[EventKind, list[Event]] = {}
    for event in events:
        by_kind.setdefault(event.kind, []).append(event)
    folded = []
    for kind, group in by_kind.items():
        one, several, icon = _SUMMARIES[kind]
        lines = [event.text for event in group[:LISTED]]
        if len(group) > LISTED:
            lines.append(f"and {len(group) - LISTED} more")
        summary = one if len(group) == 1 else several.format(n=len(group))
        folded.append((summary, "\n".join(lines), icon))
    return folded


def inbox_events(inbox: InboxView) -> list[Event]:
    """New verified files and rejected incoming messages (call on the trio thread)."""
    events = [
        Event("received", f"in:{m.digest}", f"{shown(m.filename)} from {shown(m.sender)}")
        for m in (item.message for item in inbox.items.values())
    ]
    # Tags passed the tag grammar and reasons are escaped already (errno_map.reason).
    events += [
        Event("rejected", f"in-rejected:{tag}", f"incoming {tag}: {reason}")
        for tag, reason in inbox.rejected.items()
    ]
    return events


def queue_events(queue: PushQueue) -> list[Event]:
    """Sends that failed for good and sent messages the recipient rejected (blocking)."""
    from dockercomms.syncer.queue import ItemState

    events = [
        Event(
            "send_failed",
            f"failed:{item.id}",
            shown(f"{item.filename} to {item.recipient}: {item.last_error or 'failed'}", 400),
        )
        for item in queue.items([ItemState.FAILED])
    ]
    events += [
        Event(
            "rejected",
            f"receipt:{item.id}"
            if recipient == item.recipient
            else f"receipt:{item.id}:{recipient}",
            shown(f"{item.filename}: {recipient} rejected it", 400),
        )
        for item, recipient in queue.rejections()
        if item.state == ItemState.SENT
    ]
    return events


class EventWatcher:
    """Background job: notify what is new in the inbox and the queue since the last look."""

    def __init__(
        self,
        notifier: DesktopNotifier,
        inbox: InboxView | None,
        queue: PushQueue | None,
        *,
        interval: float = WATCH_SECONDS,
        refusals: Callable[[], list[Event]] | None = None,
    ) -> None:
        self.notifier = notifier
        self.inbox = inbox
        self.queue = queue
        self.refusals = refusals  # refused outbox drops: all news, they happened while mounted
        self.interval = interval
        self._seen: set[str] | None = None
        self._scope: trio.CancelScope | None = None
        self._failures = LogOnce(log)

    async def run(self) -> None:
        """Look every ``interval`` seconds until stopped; does nothing without a bus."""
        if not self.notifier.enabled:
            return
        with trio.CancelScope() as self._scope:
            if self.inbox is not None:
                await self.inbox.first_poll()
            while True:
                try:
                    await self.check()
                except Exception as exc:
                    self._failures.log(
                        logging.WARNING,
                        "check",
                        "desktop events not checked (%s); trying again",
                        type(exc).__name__,
                        exc_info=True,
                    )
                else:
                    self._failures.clear("check")
                await trio.sleep(self.interval)

    def stop(self) -> None:
        """Stop watching."""
        if self._scope is not None:
            self._scope.cancel()

    async def check(self) -> list[Event]:
        """Notify the events not seen before; the first call only learns what exists."""
        events = inbox_events(self.inbox) if self.inbox is not None else []
        if self.queue is not None:
            events += await trio.to_thread.run_sync(queue_events, self.queue)
        if self._seen is None:
            self._seen = {event.key for event in events}
        events += self.refusals() if self.refusals is not None else []
        fresh = [event for event in events if event.key not in self._seen]
        self._seen |= {event.key for event in fresh}
        for summary, body, icon in fold(fresh):
            await self.notifier.notify_async(summary, body, icon=icon)
        return fresh
