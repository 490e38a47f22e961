"""Unit level: one module or class at a time, in process.

No kernel mount and no server process; a scripted server in a thread, the embedded
store (in process) and the local Sigstore stack are in.
"""
