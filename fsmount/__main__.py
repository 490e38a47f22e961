"""``python -m dockercomms.fsmount mount|umount ...`` (what a background mount runs)."""

import sys

from dockercomms.fsmount.mount import main

sys.exit(main())
