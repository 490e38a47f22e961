"""The FUSE filesystem (pyfuse3 on trio) over the engine: ``dockercomms mount``.

Layers, one direction (each module knows only the ones below it)::

    operations.py      pyfuse3 handlers: decode, call the node, errors -> errno (errno_map.py)
    drop_folder.py     assembles the tree (the mount, and the fs_api tests, use it)
    root.py            the root and its control xattrs
    status.py          ``.status``: the parts' typed statistics as one tree (core.status)
    outbox.py          outbox/  a passthrough of the syncer's spool (+ send on fsync)
    inbox_view.py      inbox/   polled listing (rules: core.inbox_state), verified reads
    sent_view.py       sent/    the push queue, with states and receipts
    transfers.py       verified byte ranges: chunk fetches through the cache
    chunk_cache.py     verified chunks on disk, LRU under a cap, re-hashed on read
    receipt_sender.py  accepted/rejected receipts in the background (core's one store)
    worker_threads.py  blocking core calls in bounded worker threads
    inodes.py          typed ids, nodes, handles, exact lookup counts
    mount.py           the trio lifetime: one AsyncExitStack, one nursery, signals
    mount_record.py    Paths.mount_record: where this identity is mounted, by which pid

Everything the filesystem asks of the engine goes through core's face
(``core.inbox.Inbox``, ``core.workspace.Workspace``); it never imports the CLI.

The user-visible behaviour of every operation is in ``SEMANTICS.md``.
"""
