"""``python -m dockercomms.cli``."""

from dockercomms.cli.main import run

run()
