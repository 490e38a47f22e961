"""End-to-end level: the command line, the syncer and the engine on real backends.

The embedded store and a ``docker-registry`` process, real signatures, real files.
"""
