"""The outbox syncer: a watchdog watcher feeding a durable push queue."""
