"""The FUSE filesystem (pyfuse3 on trio) over the engine."""
