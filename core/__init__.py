"""The engine, behind a small face (``ARCHITECTURE.md``).

The face is the modules directly in ``core`` (``workspace``, ``inbox``,
``outbox``, ``paths``, ``status``, ``errors``...); the machinery is private in
``core._internal``. Imports neither ``dockercomms.syncer`` nor
``dockercomms.fsmount``, and nothing here is imported by this ``__init__``: the
CLI's parser must stay standard-library only.
"""
