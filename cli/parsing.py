"""What every ``dockercomms`` command shares: usage errors, help layout, name arguments.

Caveats first:

* A usage error exits 1, not argparse's 2: SPEC 7 gives 2 to "verification
  failed", and a script must never read a typo as a tampered message.
* argparse hands a subcommand's unknown options up to the top-level parser, which
  then prints the top-level usage; here every parser refuses its own.
* Every CLI call builds the whole command tree, so this module imports only the
  standard library and ``core.names`` (itself standard library only).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeAlias

from dockercomms.core.errors import ConfigError
from dockercomms.core.names import check_name

USAGE_EXIT = 1

EXIT_CODES = """\
exit codes:
  0  success
  1  failure: a usage error, my own set-up (config, keys, trust), the disk, the registry
  2  verification failed: a message or receipt is not what it claims to be
  3  registry authentication or permission error
  4  protocol or format error: an artifact breaks the DockerComms protocol
  5  not found (message, receipt, tag or blob)"""

EXIT_SUMMARY = """\
exit codes: 0 ok, 1 failure or usage error, 2 verification failed,
3 registry auth, 4 protocol error, 5 not found (more in 'dockercomms --help')"""


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors and help belong to its own (sub)command.

    ``examples`` (command lines) end the help, after the exit codes; every
    subcommand made with ``add_parser`` is a ``CommandParser`` too.
    """

    def __init__(self, *args: Any, examples: Sequence[str] = (), **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        if examples:
            lines = "\n".join(f"  {line}" for line in examples)
            epilog = kwargs.pop("epilog", None) or EXIT_SUMMARY
            kwargs["epilog"] = f"{epilog}\n\nexamples:\n{lines}"
        super().__init__(*args, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        assert parsed is not None  # argparse makes one when none is given
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        """Usage, the problem, and where the help is; exit :data:`USAGE_EXIT`."""
        self.print_usage(sys.stderr)
        self.exit(
            USAGE_EXIT,
            f"{self.prog}: error: {message}\n"
            f"run '{self.prog} --help' for the options and an example\n",
        )


#: The subcommands of a :class:`CommandParser`: what each command module's
#: ``add_parsers`` registers its commands on.
Subcommands: TypeAlias = "argparse._SubParsersAction[CommandParser]"


def name_argument(what: str) -> Callable[[str], str]:
    """An argparse ``type=`` that accepts only a valid name (``core.names``)."""

    def parse(text: str) -> str:
        try:
            return check_name(text, what)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = what
    return parse
