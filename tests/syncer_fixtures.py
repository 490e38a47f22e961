"""Two real identities on one embedded registry, for the syncer tests.

Each identity has its own ``DOCKERCOMMS_HOME``; both share ``XDG_DATA_HOME``, so
they share the default embedded registry exactly as two users of one machine do.
Identities are created with the real CLI (``init``, ``trust add``).

Run as a module (``python -m tests.syncer_fixtures sync ...``) this is the
``dockercomms`` command with ``sync`` added, for as long as ``cli/main.py`` does
not register it itself; :data:`SYNC_COMMAND` picks whichever is available.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from dockercomms.cli import main as cli_main
from dockercomms.core import protocol as p
from dockercomms.core._internal.intake import Outcome, receive_new
from dockercomms.core.age_keys import create_identity_file, load_identity_file
from dockercomms.core.cards import my_card
from dockercomms.core.config import save_settings
from dockercomms.core.keys import signing_key
from dockercomms.core.paths import Paths, resolve_paths
from dockercomms.core.trust import Contact, TrustPolicy
from dockercomms.core.workspace import Workspace

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Identity:
    """One user: name, home folder and the environment that selects it."""

    name: str
    home: Path
    env: dict[str, str]

    @property
    def paths(self) -> Paths:
        """Where this identity's files live."""
        return resolve_paths(self.env)

    def workspace(self) -> Workspace:
        """A freshly loaded workspace (settings re-read)."""
        return Workspace.load(self.paths)

    def cli(self, *argv: str) -> int:
        """Run ``dockercomms ARGV`` in-process as this identity."""
        with pytest.MonkeyPatch.context() as patch:
            for key, value in self.env.items():
                patch.setenv(key, value)
            return cli_main.main(list(argv))

    def set_chunk_bytes(self, chunk_bytes: int) -> None:
        """Change ``chunk_bytes`` in config.toml."""
        settings = self.workspace().settings
        save_settings(self.paths, replace(settings, chunk_bytes=chunk_bytes))

    def receive(self, out_dir: Path, *, receipts: bool = True) -> list[Outcome]:
        """``recv`` into ``out_dir``, returning every outcome."""
        workspace = self.workspace()
        signer = workspace.signer() if receipts else None
        with workspace.client() as client, workspace.ledger() as ledger:
            return receive_new(workspace.receiver(client), ledger, out_dir, receipt_signer=signer)

    def inbox_tags(self) -> list[str]:
        """Tags in the registry addressed to me (one per message)."""
        with self.workspace().client() as client:
            return client.list_tags(p.inbox_prefix(self.name))


def make_identity(root: Path, name: str, data_home: Path, *init_args: str) -> Identity:
    """``dockercomms init --identity NAME`` (and ``init_args``) in its own home under ``root``."""
    home = root / name
    identity = Identity(
        name, home, {"DOCKERCOMMS_HOME": str(home), "XDG_DATA_HOME": str(data_home)}
    )
    assert identity.cli("init", "--identity", name, *init_args) == 0
    return identity


def trust(truster: Identity, trusted: Identity, scratch: Path) -> None:
    """``key export`` from one, ``trust add`` at the other (a card: sends are sealed)."""
    card_file = scratch / f"{trusted.name}.card"
    card_file.write_text(my_card(trusted.workspace()).text())
    assert truster.cli("trust", "add", trusted.name, "--key", str(card_file)) == 0


def trust_signing_key_only(truster: Identity, trusted: Identity, scratch: Path) -> None:
    """``trust add --key PEM``: no age key comes with it (only a card could give one)."""
    pem = scratch / f"{trusted.name}.pem"
    pem.write_bytes(signing_key(trusted.paths.key_file).public_pem)
    assert truster.cli("trust", "add", trusted.name, "--key", str(pem)) == 0


def age_key(identity: Identity) -> str:
    """The identity's age recipient (its identity file made if ``init`` did not)."""
    path = identity.paths.age_identity_file
    if not path.exists():
        create_identity_file(path)
    return load_identity_file(path).recipient


def make_team(root: Path, group: str, members: tuple[str, ...]) -> dict[str, Identity]:
    """alice and ``members``, trusting each other; alice knows their age keys and
    groups them as ``group``."""
    people = {name: make_identity(root, name, root / "xdg-data") for name in ("alice", *members)}
    alice = people["alice"]
    age_key(alice)
    for name in members:
        trust(alice, people[name], root)
        trust(people[name], alice, root)
    policy = TrustPolicy.load(alice.paths.trust_file)
    for name in members:
        policy.set_contact(Contact(name, age_recipient=age_key(people[name]), source="manual"))
    policy.groups[group] = members
    policy.save(alice.paths.trust_file)
    return people


def make_pair(root: Path) -> tuple[Identity, Identity]:
    """alice and bob, each trusting the other."""
    data_home = root / "xdg-data"
    alice = make_identity(root, "alice", data_home)
    bob = make_identity(root, "bob", data_home)
    trust(bob, alice, root)
    trust(alice, bob, root)
    return alice, bob


def sha256_file(path: Path) -> str:
    """Hex digest of a file, read in pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while piece := handle.read(1024 * 1024):
            digest.update(piece)
    return digest.hexdigest()


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


# --- the sync command as a subprocess ------------------------------------------------


SYNC_COMMAND = [sys.executable, "-m", "dockercomms.cli"]


@dataclass
class SyncRun:
    """A ``dockercomms sync`` child process and where its output goes."""

    process: subprocess.Popen[bytes]
    log_dir: Path

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    def output(self) -> str:
        """What the child wrote to stderr so far (for failure messages)."""
        return (self.log_dir / "stderr").read_text(errors="replace")[-4000:]

    def wait_until(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        """``wait_until``, failing at once (with the child's stderr) if the child exits."""
        deadline = time.monotonic() + timeout
        while not predicate():
            code = self.process.poll()
            if code is not None:
                pytest.fail(f"sync exited with {code} while waiting for {what}:\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}:\n{self.output()}")
            time.sleep(0.02)


@contextlib.contextmanager
def sync_process(identity: Identity, log_dir: Path, *argv: str) -> Iterator[SyncRun]:
    """``dockercomms sync ARGV`` as a child process; killed by PID on the way out."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ) | identity.env | {"PYTHONPATH": str(REPO_ROOT)}
    with (
        (log_dir / "stdout").open("ab") as out,
        (log_dir / "stderr").open("ab") as err,
    ):
        process = subprocess.Popen(
            [*SYNC_COMMAND, "sync", "-v", *argv], env=env, cwd=REPO_ROOT, stdout=out, stderr=err
        )
        try:
            yield SyncRun(process, log_dir)
        finally:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait()


def run_sync(identity: Identity, log_dir: Path, *argv: str, timeout: float = 60) -> int:
    """``dockercomms sync ARGV`` to completion (``--once``); its exit code."""
    with sync_process(identity, log_dir, *argv) as run:
        code = run.process.wait(timeout)
        if code != 0:
            print(run.output())
        return code
