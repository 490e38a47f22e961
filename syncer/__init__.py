"""The outbox syncer: a watchdog watcher feeding a durable push queue, and an inbox poller.

``syncer.Syncer`` wires them; it reaches the registry through core's ``Inbox`` and
``Outbox`` only.
"""
