"""The engine: protocol, registry client, signing, chunking, limits, config.

Imports neither ``dockercomms.syncer`` nor ``dockercomms.fsmount``.
"""
