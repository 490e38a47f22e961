"""``service``, ``status`` and ``gc``: the mount as a systemd user service, watched and tidied.

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
* ``status`` asks a running mount first: the one this identity's record names
  (``state_dir/mount.json``, written by the mount), then the ``fuse.dockercomms``
  mounts of this user in ``/proc/self/mountinfo`` (or only ``--mountpoint``). It
  reads ``.status`` (bounded, from a thread that gives up after
  :data:`STATUS_TIMEOUT_SECONDS`) and takes the mount whose ``state_dir`` is this
  identity's, whatever ``--repo`` it was started with. With none it reads the
  push queue's database and the chunk cache folder directly, and says who holds
  the queue lock.
* ``gc`` deletes my expired messages where the registry allows it
  (:mod:`dockercomms.core.gc`); a registry that refuses is a warning, exit 0.
* Every CLI call builds these parsers, so the engine, the push queue and the
  garbage collector are imported by the commands that use them, not at the top.
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
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dockercomms.cli.mount_cmd import add_behaviour_flags, behaviour_argv
from dockercomms.cli.output import emit, warn
from dockercomms.cli.registry_flags import registry_options
from dockercomms.core import protocol as p
from dockercomms.core.errors import ConfigError, DockerCommsError

if TYPE_CHECKING:
    from dockercomms.core.gc import GcReport
    from dockercomms.core.paths import Paths
    from dockercomms.core.workspace import Workspace

UNIT = "dockercomms.service"
TEMPLATE = "dockercomms@.service"
DROP_IN = "50-install.conf"
MOUNT_OPTIONS_ENV = "DOCKERCOMMS_MOUNT_OPTIONS"
STATUS_TIMEOUT_SECONDS = 5.0
#: Largest ``.status`` document ``status`` reads.
MAX_STATUS_BYTES = 4 * 1024 * 1024
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
)


def secret_env() -> tuple[str, ...]:
    """Variables never written into a unit file.

    A function so that the credentials module (it imports oras) loads only for
    ``service install``; ``SIGSTORE_ID_TOKEN`` is spelled out because it is
    keyless.TOKEN_ENV, whose module imports all of sigstore.
    """
    from dockercomms.core.registry.credentials import PASSWORD_ENV, USER_ENV

    return (USER_ENV, PASSWORD_ENV, "SIGSTORE_ID_TOKEN")


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


# --- status ------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """Queue, transfers, last poll, errors and cache: from the mount, else from disk."""
    from dockercomms.core.workspace import Workspace
    from dockercomms.fsmount.mount_record import MountRecord
    from dockercomms.fsmount.mount_table import dockercomms_mounts

    workspace = Workspace.load()
    document = None
    if args.mountpoint:
        candidates = [Path(args.mountpoint)]
    else:
        record = MountRecord.live(workspace.paths.mount_record)
        candidates = [record.mountpoint] if record is not None else []
        candidates += [m for m in dockercomms_mounts(uid=os.getuid()) if m not in candidates]
    notes: list[str] = []
    for mountpoint in candidates:
        document, problem = read_status_file(mountpoint.absolute())
        if document is not None and _serves(document, workspace):
            break
        if problem and args.mountpoint:
            notes.append(f"{mountpoint}: {problem}")
        document = None
    result = _from_mount(document, workspace) if document is not None else _from_disk(workspace)
    result["notes"] = notes + result.get("notes", [])
    emit(args, result, _status_text)
    return 0


def read_status_file(
    mountpoint: Path, timeout: float = STATUS_TIMEOUT_SECONDS
) -> tuple[dict[str, Any] | None, str | None]:
    """``MOUNTPOINT/.status`` parsed, or None and why not.

    Read in a daemon thread: a hung daemon makes the read block in the kernel,
    and ``status`` must still answer.
    """
    outcome: list[bytes | BaseException] = []

    def read() -> None:
        try:
            with open(mountpoint / ".status", "rb") as handle:
                outcome.append(handle.read(MAX_STATUS_BYTES + 1))
        except OSError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, name="status-read", daemon=True)
    reader.start()
    reader.join(timeout)
    if not outcome:
        return None, f"the mount did not answer within {timeout:.0f}s"
    value = outcome[0]
    if isinstance(value, BaseException):
        return None, str(value)
    from dockercomms.core.untrusted import parse_json_object

    try:
        return parse_json_object(value, ".status", max_bytes=MAX_STATUS_BYTES), None
    except DockerCommsError as exc:
        return None, exc.diagnostics()


def _serves(document: dict[str, Any], workspace: Workspace) -> bool:
    """The mount is this identity's: same state dir (whatever ``--repo`` it uses).

    A mount from before ``state_dir`` was in ``.status`` is matched by identity and
    default repository instead (profiles may share an identity name).
    """
    if document.get("identity") != workspace.identity:
        return False
    state_dir = document.get("state_dir")
    if isinstance(state_dir, str):
        return Path(state_dir) == workspace.paths.state_dir.absolute()
    try:
        return document.get("repository") == str(workspace.repository())
    except DockerCommsError:
        return True


def _from_mount(document: dict[str, Any], workspace: Workspace) -> dict[str, Any]:
    outbox = document.get("outbox") or {}
    inbox = document.get("inbox") or {}
    return {
        "source": "mount",
        "identity": document.get("identity"),
        "repository": document.get("repository"),
        "daemon": {
            "running": True,
            "pid": document.get("pid"),
            "mountpoint": document.get("mountpoint"),
            "started_at": document.get("started_at"),
        },
        "queue": outbox.get("queue"),
        "transfers": document.get("transfers") or [],
        "last_poll": inbox.get("last_poll"),
        "inbox": {"messages": inbox.get("messages"), "rejected": inbox.get("rejected")},
        "errors": document.get("errors") or [],
        "refusals": document.get("refusals") or [],
        "cache": {
            "path": str(workspace.paths.chunk_cache_dir),
            **(document.get("cache") or {}),
        },
        "mount": document,
    }


def _from_disk(workspace: Workspace) -> dict[str, Any]:
    from dockercomms.syncer.queue import ItemState, PushQueue

    paths = workspace.paths
    holder = queue_lock_holder(paths.queue_lock)
    notes = []
    if holder is not None:
        notes.append(
            f"process {holder} holds the queue (a 'dockercomms sync' or a mount that does "
            "not answer); progress and polls are only known to it"
        )
    queue_json: dict[str, Any] | None = None
    transfers: list[dict[str, Any]] = []
    errors: list[str] = []
    if paths.queue_db.exists():
        with PushQueue(paths.queue_db, paths.queue_dir) as queue:
            statistics = queue.statistics()
            queue_json = statistics.to_json()
            if statistics.last_error:
                errors.append(statistics.last_error)
            for item in queue.items([ItemState.UPLOADING]):
                transfers.append(
                    {
                        "direction": "upload",
                        "filename": item.filename,
                        "recipient": item.recipient,
                        "bytes_total": item.size,
                        "chunks_uploaded": len(queue.known_chunks(item.id)),
                        "state": "uploading" if holder else "interrupted (resumes at next start)",
                    }
                )
    try:
        repository = str(workspace.repository())
    except DockerCommsError:
        repository = workspace.settings.repository
    return {
        "source": "queue",
        "identity": workspace.identity,
        "repository": repository,
        "daemon": {"running": holder is not None, "pid": holder, "mountpoint": None},
        "queue": queue_json,
        "transfers": transfers,
        "last_poll": None,
        "inbox": None,
        "errors": errors,
        "refusals": [],  # only a running mount knows them
        "cache": chunk_cache_usage(paths.chunk_cache_dir),
        "notes": notes,
    }


def queue_lock_holder(lock: Path, locks: Path = Path("/proc/locks")) -> int | None:
    """PID holding ``lock`` (the syncer's ``flock``), read from ``/proc/locks``.

    Reading instead of trying the lock: a try, however short, could make a daemon
    starting at that moment fail to take it.
    """
    try:
        st = lock.stat()
        table = locks.read_text()
    except OSError:
        return None
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        parts = line.split()
        if len(parts) >= 6 and "->" not in parts and parts[5] == wanted:
            return int(parts[4])
    return None


def chunk_cache_usage(directory: Path) -> dict[str, Any]:
    """Entries and bytes of the verified chunk cache, counted on disk."""
    entries = 0
    size = 0
    try:
        listing = list(os.scandir(directory))
    except OSError:
        listing = []
    for entry in listing:
        try:
            if entry.name.endswith(".json"):
                entries += 1
            elif entry.is_file(follow_symlinks=False):
                size += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return {"path": str(directory), "entries": entries, "bytes": size, "cap_bytes": None}


def _size(n: object) -> str:
    if not isinstance(n, int | float):
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _status_text(result: dict[str, Any]) -> str:
    from dockercomms.core.untrusted import shown
    from dockercomms.fsmount.chunk_cache import DEFAULT_CAP_BYTES

    daemon = result["daemon"]
    if result["source"] == "mount":
        lines = [f"daemon: running (pid {daemon['pid']}), mounted at {daemon['mountpoint']}"]
    elif daemon["running"]:
        lines = [f"daemon: pid {daemon['pid']} holds the queue; no mount answers for it"]
    else:
        lines = ["daemon: not running (read from the queue database)"]
    lines.append(f"identity: {result['identity']} on {result['repository']}")
    queue = result.get("queue")
    if queue:
        counts = queue["counts"]
        waiting = counts.get("queued", 0) + counts.get("uploading", 0)
        line = (
            f"queue: {waiting} to send ({counts.get('queued', 0)} queued, "
            f"{counts.get('uploading', 0)} uploading), {counts.get('sent', 0)} sent, "
            f"{counts.get('failed', 0)} failed"
        )
        if waiting:
            line += f"; {_size(queue.get('bytes_queued'))} waiting"
            if queue.get("oldest_queued"):
                line += f" since {queue['oldest_queued']}"
        lines.append(line)
    else:
        lines.append("queue: empty (nothing was ever queued)")
    for t in result["transfers"]:
        if "percent" in t:
            what = f"{t['direction']}: {t['filename']} {t['percent']:.1f}%"
            lines.append(f"{what} ({_size(t['bytes_done'])} of {_size(t['bytes_total'])})")
        else:
            lines.append(
                f"{t['direction']}: {t['filename']} to {t['recipient']}, "
                f"{t['chunks_uploaded']} chunks uploaded, {t['state']}"
            )
    poll = result.get("last_poll")
    if poll:
        inbox = result.get("inbox") or {}
        at = poll.get("at") or "not yet"
        line = f"last poll: {at}"
        if poll.get("seconds") is not None:
            line += f" ({poll['seconds']:.2f}s)"
        line += f"; inbox {inbox.get('messages', 0)} messages, {inbox.get('rejected', 0)} rejected"
        lines.append(line)
    else:
        lines.append("last poll: unknown (only a running mount knows)")
    cache = result["cache"]
    cap = _size(cache["cap_bytes"]) if cache.get("cap_bytes") else _size(DEFAULT_CAP_BYTES)
    lines.append(f"cache: {cache.get('entries', 0)} chunks, {_size(cache.get('bytes'))} of {cap}")
    lines += [f"error: {shown(error)}" for error in result["errors"]]
    for refusal in result.get("refusals") or []:
        lines.append(
            f"refused: {shown(refusal.get('path'))} ({shown(refusal.get('at'))}): "
            f"{shown(refusal.get('reason'))}"
        )
    lines += [f"note: {note}" for note in result.get("notes", [])]
    return "\n".join(lines)


# --- gc ------------------------------------------------------------------------------------


def cmd_gc(args: argparse.Namespace) -> int:
    """Delete my expired messages (``--dry-run``: only say what would go)."""
    from dockercomms.core.gc import GarbageCollector
    from dockercomms.core.workspace import Workspace

    workspace = Workspace.load()
    report = GarbageCollector(workspace, registry_options(args)).run_once(dry_run=args.dry_run)
    if report.unsupported:
        warn(
            f"dockercomms: warning: the registry does not allow deletion ({report.unsupported});"
            " nothing more was deleted"
        )
    for text in report.warnings:
        warn(f"dockercomms: warning: {text}")
    emit(args, report.to_json(), lambda _: _gc_text(report))
    return 1 if report.errors else 0


def _plural(kind: str, n: int) -> str:
    if n == 1:
        return kind
    return "indexes" if kind == "index" else f"{kind}s"


def _gc_text(report: GcReport) -> str:
    verb = "would delete" if report.dry_run else "deleted"
    done = report.planned if report.dry_run else report.deleted
    lines = [f"checked {report.checked} messages; {len(report.expired)} of mine expired"]
    for message in report.expired:
        parts = [d for d in done if d.message == message.digest]
        counts: dict[str, int] = {}
        for deletion in parts:
            counts[deletion.kind] = counts.get(deletion.kind, 0) + 1
        what = ", ".join(f"{n} {_plural(kind, n)}" for kind, n in counts.items())
        expired = p.format_timestamp(message.expires_at)
        lines.append(
            f"{verb} {message.filename} to {message.recipient} "
            f"(expired {expired}): {what or 'nothing yet'}"
        )
    leftovers = [d for d in done if d.message not in {e.digest for e in report.expired}]
    if leftovers:
        lines.append(f"{verb} {len(leftovers)} items an interrupted run had left")
    if report.shared_blobs:
        lines.append(f"kept {report.shared_blobs} chunk blobs other messages still use")
    for tag in report.not_mine:
        lines.append(f"left alone (claims to be mine, not signed by me): {tag}")
    if report.not_mine:
        lines.append("(gc deletes only what verifies as mine under my trust policy, trust.json)")
    lines += [f"error: {error}" for error in report.errors]
    return "\n".join(lines)


# --- parsers -------------------------------------------------------------------------------


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    registry: argparse.ArgumentParser,
) -> None:
    """Register ``service``, ``status`` and ``gc``."""
    service = sub.add_parser(
        "service",
        help="run the mount as a systemd user service",
        description="Install, remove or inspect the systemd user unit that mounts the drop\n"
        "folder at login (dockercomms.service, or dockercomms@NAME with --profile).",
    )
    actions = service.add_subparsers(dest="service_cmd", required=True, metavar="ACTION")
    profile = argparse.ArgumentParser(add_help=False)
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

    st = sub.add_parser(
        "status",
        parents=[common],
        help="queue, transfers, last poll, errors and cache, from the mount or from disk",
        description="What this identity is doing: files queued, sending and failed, the\n"
        "upload in flight, the last inbox poll, recent errors and the chunk cache. It\n"
        "asks the running mount, or reads the queue database when none runs.",
        examples=["dockercomms status", "dockercomms status --json"],
    )
    st.add_argument(
        "--mountpoint", metavar="DIR", help="ask this mount (default: find this identity's)"
    )
    st.set_defaults(func=cmd_status)

    g = sub.add_parser(
        "gc",
        parents=[common, registry],
        help="delete my expired messages from the registry",
        description="Delete from the registry the messages I sent whose time to live has\n"
        "passed, with their signature bundles and receipts. Only what verifies as mine\n"
        "under my trust policy is touched. The mount's daemon runs this hourly.",
        examples=["dockercomms gc --dry-run", "dockercomms gc"],
    )
    g.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    g.set_defaults(func=cmd_gc)
