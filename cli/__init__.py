"""The command line: one entry point over the engine, the syncer and the mount."""
