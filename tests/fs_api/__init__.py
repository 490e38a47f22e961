"""Filesystem API level: the FUSE operations called directly, as the kernel would.

No kernel and no mount (as s3ql's fs API tests): lookup, readdir, open, read, write,
xattrs and errno mapping through ``DropFolderOperations`` over a real spool, queue and
embedded store.
"""
