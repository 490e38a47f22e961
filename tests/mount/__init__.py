"""Mount level: real FUSE mounts (daemon processes) used through the kernel.

And the systemd user service that runs the mount.
"""
