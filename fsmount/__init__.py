"""The FUSE filesystem (pyfuse3 on trio) over the engine: ``dockercomms mount``.

Layers, one direction (each module knows only the ones below it)::

    operations.py      pyfuse3 handlers: decode, call the node, errors -> errno (errno_map.py)
    status.py          the root, ``.status`` and the root's control xattrs
    outbox.py          outbox/  a passthrough of the syncer's spool (+ send on fsync)
    inbox_view.py      inbox/   polled listing, verify at open, ranged verified reads
    sent_view.py       sent/    the push queue, with states and receipts
    transfers.py       verified byte ranges: chunk fetches through the cache
    chunk_cache.py     verified chunks on disk, LRU under a cap, re-hashed on read
    receipt_sender.py  accepted/rejected receipts in the background (core's one store)
    worker_threads.py  blocking core calls in bounded worker threads
    inodes.py          typed ids, nodes, handles, exact lookup counts
    mount.py           the trio lifetime: one AsyncExitStack, one nursery, signals
    mount_record.py    state_dir/mount.json: where this identity is mounted, by which pid

The user-visible behaviour of every operation is in ``SEMANTICS.md``.
"""
