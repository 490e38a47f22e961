"""``group``: names of names, so ``send -r team`` and ``outbox/team/`` reach every member.

A group lives in the trust file beside the names it groups: its members must be
trusted names (one level, no group of groups), and its name may not be a
trusted name. Every CLI call builds this parser, so the engine is imported only
when a command runs.
"""

from __future__ import annotations

import argparse

from dockercomms.cli.output import emit
from dockercomms.cli.parsing import CommandParser, Subcommands
from dockercomms.core.errors import ConfigError


def cmd_group_add(args: argparse.Namespace) -> int:
    """Make GROUP, or add members to it."""
    from dockercomms.core.trust import TrustPolicy
    from dockercomms.core.workspace import Workspace

    with TrustPolicy.editing(Workspace.load().paths.trust_file) as policy:
        before = policy.groups.get(args.group, ())
        members = policy.set_group(args.group, [*before, *args.members])
    emit(
        args,
        {"group": args.group, "members": list(members)},
        lambda r: f"{r['group']}: {' '.join(r['members'])}",
    )
    return 0


def cmd_group_list(args: argparse.Namespace) -> int:
    """Every group and its members."""
    from dockercomms.core.workspace import Workspace

    groups = Workspace.load().trust_policy().groups
    emit(
        args,
        {group: list(members) for group, members in sorted(groups.items())},
        lambda r: "\n".join(f"{g}: {' '.join(m)}" for g, m in r.items()) or "(no groups)",
    )
    return 0


def cmd_group_remove(args: argparse.Namespace) -> int:
    """Remove GROUP, or only some of its members (the last one takes the group along)."""
    from dockercomms.core.trust import TrustPolicy
    from dockercomms.core.workspace import Workspace

    with TrustPolicy.editing(Workspace.load().paths.trust_file) as policy:
        members = policy.groups.get(args.group)
        if members is None:
            raise ConfigError(f"no group {args.group!r} ('dockercomms group list' shows them)")
        missing = [m for m in args.members if m not in members]
        if missing:
            raise ConfigError(f"not in {args.group}: {', '.join(missing)}")
        rest = [m for m in members if m not in args.members] if args.members else []
        if rest:
            policy.groups[args.group] = tuple(rest)
        else:
            del policy.groups[args.group]
    emit(
        args,
        {"group": args.group, "members": rest},
        lambda r: f"{r['group']}: {' '.join(r['members'])}" if rest else f"removed {r['group']}",
    )
    return 0


def add_parsers(sub: Subcommands, common: CommandParser) -> None:
    """Register ``group add|list|remove``."""
    group = sub.add_parser(
        "group",
        help="groups of trusted names",
        description="Groups of trusted names: 'send -r GROUP' and outbox/GROUP/ send to\n"
        "every member (sealed to each, the layers uploaded once).",
    ).add_subparsers(dest="group_cmd", required=True, metavar="ACTION")
    g = group.add_parser(
        "add",
        parents=[common],
        help="make a group, or add members to it",
        description="Make GROUP of the trusted names MEMBER..., or add them to GROUP. A\n"
        "member must be a trusted name (not a group); GROUP may not be a trusted name.",
        examples=["dockercomms group add team bob@example.com carol@example.com"],
    )
    g.add_argument("group", metavar="GROUP", help="the group's name, e.g. team")
    g.add_argument("members", metavar="MEMBER", nargs="+", help="a trusted name")
    g.set_defaults(func=cmd_group_add)
    g = group.add_parser(
        "list",
        parents=[common],
        help="list groups",
        description="Every group and its members, as 'group add' made them (the members\n"
        "are trusted names; 'trust list' shows whether each can receive sealed).",
        examples=["dockercomms group list --json"],
    )
    g.set_defaults(func=cmd_group_list)
    g = group.add_parser(
        "remove",
        parents=[common],
        help="remove a group, or members of it",
        description="Remove GROUP, or only the MEMBERs given (a group left empty goes).\n"
        "The names stay trusted.",
        examples=["dockercomms group remove team", "dockercomms group remove team bob"],
    )
    g.add_argument("group", metavar="GROUP", help="the group's name")
    g.add_argument("members", metavar="MEMBER", nargs="*", help="only these members")
    g.set_defaults(func=cmd_group_remove)
