"""``service``: the mount as a systemd user service.

Caveats first:

* The unit texts are ``systemd/*.service``, shipped as package data
  (``dockercomms.systemd``). ``service install`` writes them with
  absolute command paths (``systemd-analyze verify`` and a user manager without
  our ``PATH`` both need those) and puts the mount point and the identity's
  environment (``DOCKERCOMMS_HOME``, ``XDG_*``) in a drop-in, so the service is
  the same identity as the shell that installed it. Secrets in the environment
  (registry password, OIDC token) are never copied into a unit file.
* Without a user manager to talk to (no user bus: containers, CI, ``su``),
  ``install`` still writes the files, prints the commands to run later and exits 0.
* ``service status`` shows the unit's state and the daemon's last ``STATUS=``
  line (``core.status.status_line``, the same tree as ``.status``).
* Every CLI call builds these parsers, so the credentials module is imported by
  the command that uses it, not at the top.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dockercomms.cli.mount_cmd import add_behaviour_flags, behaviour_argv
from dockercomms.cli.output import emit
from dockercomms.cli.parsing import CommandParser, Subcommands
from dockercomms.core.errors import ConfigError

if TYPE_CHECKING:
    from dockercomms.core.paths import Paths

UNIT = "dockercomms.service"
TEMPLATE = "dockercomms@.service"
DROP_IN = "50-install.conf"
MOUNT_OPTIONS_ENV = "DOCKERCOMMS_MOUNT_OPTIONS"
SYSTEMCTL_TIMEOUT_SECONDS = 120.0
PROFILE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: What the service must share with the installing shell to be the same identity.
COPIED_ENV = (
    "DOCKERCOMMS_HOME",
    "XDG_CONFIG_HOME",
    "XDG_STATE_HOME",
    "XDG_CACHE_HOME",
    "XDG_DATA_HOME",
    "DOCKER_CONFIG",
    "DOCKERCOMMS_READ_TIMEOUT",
    "DOCKERCOMMS_EMBEDDED_FSYNC",
    "DOCKERCOMMS_AGE_BINARY",
)


def secret_env() -> tuple[str, ...]:
    """Variables never written into a unit file (``core.workspace.SECRET_ENV``).

    A function so that the workspace (it imports oras) loads only for
    ``service install``.
    """
    from dockercomms.core.workspace import SECRET_ENV

    return SECRET_ENV


def unit_text(name: str) -> str:
    """A unit file as shipped in ``systemd/`` (installed as ``dockercomms.systemd`` data)."""
    return importlib.resources.files("dockercomms.systemd").joinpath(name).read_text()


# --- units on disk ---------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceTarget:
    """Which unit a ``--profile`` (or none) means.

    Attributes:
        unit: the name systemctl starts (``dockercomms@work.service``).
        unit_file: the file that defines it (``dockercomms@.service`` for profiles).
        profile: the profile name, or None for the plain unit.
    """

    unit: str
    unit_file: str
    profile: str | None

    @classmethod
    def for_profile(cls, profile: str | None) -> ServiceTarget:
        """The plain unit, or the template instance of ``profile``."""
        if profile is None:
            return cls(UNIT, UNIT, None)
        if not PROFILE_PATTERN.fullmatch(profile):
            raise ConfigError(
                f"--profile {profile!r}: use letters, digits, '_', '.' and '-' (at most 64)"
            )
        return cls(f"dockercomms@{profile}.service", TEMPLATE, profile)

    @property
    def profile_home(self) -> Path | None:
        """The profile's ``DOCKERCOMMS_HOME``, as the template sets it."""
        if self.profile is None:
            return None
        return Path.home() / ".config" / "dockercomms" / "profiles" / self.profile

    def drop_in_dir(self, unit_dir: Path) -> Path:
        """Where this unit's install drop-in lives."""
        return unit_dir / f"{self.unit}.d"


def unit_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/systemd/user`` (``~/.config/systemd/user`` by default)."""
    env = os.environ if environ is None else environ
    config = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user"


def resolve_commands() -> dict[str, list[str]]:
    """Absolute command lines for the executables the units name.

    The ``dockercomms`` script next to this interpreter comes first (the one in
    this virtualenv, not a shim that depends on the shell's set-up), then ``PATH``,
    then this interpreter with ``-m dockercomms.cli``.
    """
    script = Path(sys.executable).parent / "dockercomms"
    if os.access(script, os.X_OK):
        dockercomms = [str(script.absolute())]
    elif found := shutil.which("dockercomms"):
        dockercomms = [str(Path(found).absolute())]
    else:
        dockercomms = [sys.executable, "-m", "dockercomms.cli"]
    fusermount = shutil.which("fusermount3")
    if fusermount is None:
        raise ConfigError("fusermount3 is not installed (Debian/Ubuntu: apt install fuse3)")
    return {"dockercomms": dockercomms, "fusermount3": [str(Path(fusermount).absolute())]}


def render_unit(text: str, commands: Mapping[str, list[str]]) -> str:
    """``text`` with each ``Exec*=`` command named in ``commands`` replaced by its path."""
    lines = []
    for line in text.splitlines(keepends=True):
        key, sep, value = line.partition("=")
        if sep and key.startswith("Exec"):
            flags = value[: len(value) - len(value.lstrip("-@:+!"))]
            word, space, rest = value[len(flags) :].partition(" ")
            if word in commands:
                command = " ".join(_exec_word(part) for part in commands[word])
                line = f"{key}={flags}{command}{space}{rest}"
        lines.append(line)
    return "".join(lines)


def _exec_word(word: str) -> str:
    """One word of an ``Exec*=`` line, escaped for systemd (specifiers, variables, quotes)."""
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    escaped = escaped.replace("$", "$$")
    return f'"{escaped}"' if any(c.isspace() for c in word) or not word else escaped


def _environment_line(key: str, value: str) -> str:
    """``Environment="KEY=value"`` with systemd's quoting and ``%`` escaped."""
    text = f"{key}={value}".replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'Environment="{text}"\n'


def drop_in_text(
    target: ServiceTarget,
    mountpoint: Path | None,
    environ: Mapping[str, str],
    mount_options: Sequence[str] = (),
) -> str:
    """The install drop-in: mount point, mount options, and the environment of the identity."""
    lines = [
        "# Written by `dockercomms service install`: the mount point and options, and the\n",
        "# environment of the shell it ran in, so the service is the same identity. Install\n",
        "# again to change it.\n",
        "[Service]\n",
    ]
    if mountpoint is not None:
        lines.append(_environment_line("DOCKERCOMMS_MOUNTPOINT", str(mountpoint)))
    if mount_options:
        lines.append(_environment_line(MOUNT_OPTIONS_ENV, " ".join(_unit_words(mount_options))))
    for key in COPIED_ENV:
        if target.profile is not None and key == "DOCKERCOMMS_HOME":
            continue  # the profile is the template's DOCKERCOMMS_HOME
        value = environ.get(key)
        if value:
            lines.append(_environment_line(key, value))
    return "".join(lines)


def _unit_words(words: Sequence[str]) -> Sequence[str]:
    """Words that survive systemd's split of an unbraced ``$VAR`` unchanged."""
    for word in words:
        if not word or any(c.isspace() or c in "\"'\\$;" for c in word):
            raise ConfigError(
                f"mount option {word!r} cannot go into the unit: no spaces, quotes, "
                "backslashes, '$' or ';'"
            )
    return words


def _write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` (0644) unless ``path`` already holds it; True when it changed."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True


# --- systemctl --user -------------------------------------------------------------------


class UserManager:
    """``systemctl --user``, or why it cannot be reached here."""

    def __init__(self) -> None:
        self.systemctl = shutil.which("systemctl")
        self._reason: str | None = None
        self._checked = False

    def unavailable(self) -> str | None:
        """None when the user manager answers, else why not (asked once)."""
        if not self._checked:
            self._checked = True
            if self.systemctl is None:
                self._reason = "systemctl is not installed"
            else:
                done = self.run("show-environment")
                if done.returncode != 0:
                    why = (done.stderr or done.stdout).strip().splitlines()
                    self._reason = why[-1] if why else f"exit {done.returncode}"
        return self._reason

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``systemctl --user ARGS``, output captured."""
        assert self.systemctl is not None
        return subprocess.run(
            [self.systemctl, "--user", *args],
            capture_output=True,
            text=True,
            timeout=SYSTEMCTL_TIMEOUT_SECONDS,
            check=False,
        )

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl --user show UNIT -p ...`` as a dict (empty on failure)."""
        done = self.run("show", unit, *(f"--property={name}" for name in properties))
        if done.returncode != 0:
            return {}
        return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def _command_text(*args: str) -> str:
    return shlex.join(["systemctl", "--user", *args])


@dataclass
class ServiceReport:
    """What ``service install``/``uninstall`` did, for ``--json`` and for people."""

    unit: str
    files: list[dict[str, Any]] = field(default_factory=list)
    systemctl: str = "ok"
    ran: list[str] = field(default_factory=list)
    run_later: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "unit": self.unit,
            "files": self.files,
            "systemctl": self.systemctl,
            "ran": self.ran,
            "run_later": self.run_later,
            "notes": self.notes,
        }


def _service_text(report: dict[str, Any]) -> str:
    lines = [f"{f['action']} {f['path']}" for f in report["files"]]
    lines += [f"ran: {command}" for command in report["ran"]]
    if report["run_later"]:
        lines.append(f"systemctl --user is not available here ({report['systemctl']}).")
        lines.append("In your login session, run:")
        lines += [f"  {command}" for command in report["run_later"]]
    lines += report["notes"]
    return "\n".join(lines)


def _check_identity(target: ServiceTarget, environ: Mapping[str, str]) -> Paths:
    """The service's identity must exist: ``init`` first (it would only fail to start)."""
    from dockercomms.core.config import load_settings
    from dockercomms.core.paths import resolve_paths

    env = dict(environ)
    home = target.profile_home
    if home is not None:
        env["DOCKERCOMMS_HOME"] = str(home)
    paths = resolve_paths(env)
    try:
        load_settings(paths)
    except ConfigError as exc:
        if home is None:
            raise
        raise ConfigError(
            f"profile {target.profile!r} has no identity yet; run "
            f"'DOCKERCOMMS_HOME={home} dockercomms init --identity NAME' first"
        ) from exc
    return paths


def cmd_service_install(args: argparse.Namespace) -> int:
    """Write the unit and its drop-in, then ``daemon-reload`` and ``enable --now``."""
    environ = dict(os.environ)
    target = ServiceTarget.for_profile(args.profile)
    _check_identity(target, environ)
    directory = unit_dir(environ)
    mountpoint = Path(args.mountpoint).expanduser().absolute() if args.mountpoint else None
    files = {
        directory / target.unit_file: render_unit(unit_text(target.unit_file), resolve_commands()),
        target.drop_in_dir(directory) / DROP_IN: drop_in_text(
            target, mountpoint, environ, behaviour_argv(args)
        ),
    }
    report = ServiceReport(target.unit)
    changed = False
    for path, text in files.items():
        wrote = _write_if_changed(path, text)
        changed |= wrote
        report.files.append({"path": str(path), "action": "wrote" if wrote else "unchanged"})
    secrets = [key for key in secret_env() if environ.get(key)]
    if secrets:
        report.notes.append(
            f"not copied into the unit: {', '.join(secrets)}; the service reads registry "
            "credentials from the docker config (docker login) instead"
        )
    manager = UserManager()
    reason = manager.unavailable()
    steps = [("daemon-reload",), ("enable", "--now", target.unit)]
    if reason is not None:
        report.systemctl = reason
        report.run_later = [_command_text(*step) for step in steps]
        emit(args, report.to_json(), _service_text)
        return 0
    was_active = manager.show(target.unit, "ActiveState").get("ActiveState") == "active"
    for step in steps:
        done = manager.run(*step)
        report.ran.append(_command_text(*step))
        if done.returncode != 0:
            emit(args, report.to_json(), _service_text)
            raise ConfigError(
                f"{_command_text(*step)} failed: {done.stderr.strip()} "
                f"(see: journalctl --user -u {target.unit})"
            )
    if changed and was_active:
        report.notes.append(
            f"the service was already running; to apply the change: "
            f"{_command_text('restart', target.unit)} (drains the upload in flight)"
        )
    report.notes.append(
        "to keep it running after you log out: loginctl enable-linger " + _user_name()
    )
    emit(args, report.to_json(), _service_text)
    return 0


def _user_name() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def cmd_service_uninstall(args: argparse.Namespace) -> int:
    """Stop and disable the unit, remove what ``install`` wrote, ``daemon-reload``."""
    target = ServiceTarget.for_profile(args.profile)
    directory = unit_dir()
    report = ServiceReport(target.unit)
    manager = UserManager()
    reason = manager.unavailable()
    if reason is None:
        done = manager.run("disable", "--now", target.unit)
        report.ran.append(_command_text("disable", "--now", target.unit))
        if done.returncode != 0 and (directory / target.unit_file).exists():
            raise ConfigError(
                f"{_command_text('disable', '--now', target.unit)} failed: {done.stderr.strip()}"
            )
    else:
        report.systemctl = reason
        # What `disable` would remove; a dangling link only makes the manager complain.
        for link in directory.glob(f"*.wants/{target.unit}"):
            if link.is_symlink():
                link.unlink()
                report.files.append({"path": str(link), "action": "removed"})
    removed = _remove_tree(target.drop_in_dir(directory))
    if target.profile is None or not _other_instances(directory, target.unit):
        unit_path = directory / target.unit_file
        if unit_path.exists():
            unit_path.unlink()
            removed.append(unit_path)
    report.files += [{"path": str(path), "action": "removed"} for path in removed]
    if reason is None:
        manager.run("daemon-reload")
        report.ran.append(_command_text("daemon-reload"))
    else:
        report.run_later = [_command_text("stop", target.unit), _command_text("daemon-reload")]
    if not report.files and not report.ran:
        report.notes.append(f"{target.unit} was not installed")
    emit(args, report.to_json(), _service_text)
    return 0


def _remove_tree(directory: Path) -> list[Path]:
    """Remove the files of a drop-in folder and the folder; what was removed."""
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for path in sorted(directory.iterdir()):
        path.unlink()
        removed.append(path)
    directory.rmdir()
    removed.append(directory)
    return removed


def _other_instances(directory: Path, unit: str) -> bool:
    """Another profile still uses the template (its drop-in or an enable link)."""
    others = [d for d in directory.glob("dockercomms@*.service.d") if d.name != f"{unit}.d"]
    links = [link for link in directory.glob("*.wants/dockercomms@*.service") if link.name != unit]
    return bool(others or links)


#: ``systemctl show`` properties ``service status`` reports, and their JSON names.
_SHOWN = {
    "LoadState": "load_state",
    "ActiveState": "active_state",
    "SubState": "sub_state",
    "UnitFileState": "unit_file_state",
    "MainPID": "main_pid",
    "NRestarts": "n_restarts",
    "StatusText": "status_text",
}


def cmd_service_status(args: argparse.Namespace) -> int:
    """Whether the unit is installed, enabled and running, and its last ``STATUS=``."""
    target = ServiceTarget.for_profile(args.profile)
    directory = unit_dir()
    unit_path = directory / target.unit_file
    result: dict[str, Any] = {
        "unit": target.unit,
        "installed": unit_path.exists(),
        "path": str(unit_path),
        "systemctl": "ok",
    }
    manager = UserManager()
    reason = manager.unavailable()
    if reason is not None:
        result["systemctl"] = reason
    else:
        shown = manager.show(target.unit, *_SHOWN)
        result |= {_SHOWN[key]: value for key, value in shown.items() if key in _SHOWN}
    emit(args, result, _service_status_text)
    return 0


def _service_status_text(result: dict[str, Any]) -> str:
    unit = result["unit"]
    if not result["installed"]:
        head = f"{unit}: not installed (dockercomms service install)"
    else:
        head = f"{unit}: installed at {result['path']}"
    if result["systemctl"] != "ok":
        return f"{head}\nsystemctl --user is not available here ({result['systemctl']})"
    lines = [head]
    if "active_state" in result:
        state = f"{result['active_state']} ({result.get('sub_state', '?')})"
        enabled = result.get("unit_file_state") or "?"
        line = f"state: {state}, {enabled}"
        if result.get("main_pid") not in (None, "", "0"):
            line += f", pid {result['main_pid']}"
        if result.get("n_restarts") not in (None, "", "0"):
            line += f", restarted {result['n_restarts']} times"
        lines.append(line)
    if result.get("status_text"):
        lines.append(f"status: {result['status_text']}")
    lines.append(f"log: journalctl --user -u {unit}")
    return "\n".join(lines)


# --- parsers -------------------------------------------------------------------------------


def add_parsers(
    sub: Subcommands,
    common: CommandParser,
    registry: CommandParser,
) -> None:
    """Register ``service``."""
    service = sub.add_parser(
        "service",
        help="run the mount as a systemd user service",
        description="Install, remove or inspect the systemd user unit that mounts the drop\n"
        "folder at login (dockercomms.service, or dockercomms@NAME with --profile).",
    )
    actions = service.add_subparsers(dest="service_cmd", required=True, metavar="ACTION")
    profile = CommandParser(add_help=False)
    profile.add_argument(
        "--profile",
        metavar="NAME",
        help="the identity in ~/.config/dockercomms/profiles/NAME, unit dockercomms@NAME "
        "(default: the main identity, unit dockercomms)",
    )
    i = actions.add_parser(
        "install",
        parents=[common, profile],
        help="write the unit, then systemctl --user daemon-reload and enable --now",
        description="Write the user unit (Type=notify, watchdog, drains uploads on stop,\n"
        "clears a stale mount before starting), reload systemd and start it now and at\n"
        "every login. The mount options given here are kept in the unit. Run\n"
        "'loginctl enable-linger' to keep it running while you are logged out.",
        examples=[
            "dockercomms service install --to bob@example.com --poll 2",
            "dockercomms service install --profile work --mountpoint ~/Comms-work",
        ],
    )
    i.add_argument(
        "--mountpoint",
        metavar="DIR",
        help="where to mount (default ~/Comms, or ~/Comms-NAME with --profile)",
    )
    add_behaviour_flags(i, poll_default=None)
    i.set_defaults(func=cmd_service_install)
    u = actions.add_parser(
        "uninstall",
        parents=[common, profile],
        help="stop, disable and remove the unit",
        description="Stop the service (uploads in flight drain first), disable it and\n"
        "remove its unit files. Files still queued stay queued for the next mount.",
        examples=["dockercomms service uninstall"],
    )
    u.set_defaults(func=cmd_service_uninstall)
    s = actions.add_parser(
        "status",
        parents=[common, profile],
        help="the unit's state",
        description="Whether the unit is installed, enabled and running, its PID and\n"
        "restarts, the daemon's last status line, and where its log is.",
        examples=["dockercomms service status"],
    )
    s.set_defaults(func=cmd_service_status)
