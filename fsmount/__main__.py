"""``python -m dockercomms.fsmount mount|umount ...`` (what a background mount runs).

An entry point, so it may wire the layers together: the commands are the CLI's
(``cli.mount_cmd``); the filesystem itself never imports the CLI.
"""

import sys

from dockercomms.cli.mount_cmd import standalone_main

sys.exit(standalone_main())
