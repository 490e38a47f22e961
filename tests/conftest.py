"""Shared fixtures: identities ("parties") on a real backend; the test levels.

The tests are in levels (``unit``, ``fs_api``, ``mount``, ``e2e``), one folder each;
every test gets its level's marker, so ``pytest -m unit`` runs one level. Long
tests are marked ``slow`` as well; ``python -m pytest`` runs everything.

``backend`` is parametrised over the embedded OCI-layout registry and a real
distribution server (Debian's ``docker-registry``) started on 127.0.0.1 for the
session and stopped by PID at the end. Each test gets its own repository.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dockercomms.cli.main import main
from dockercomms.core.workspace import Workspace
from tests.servers.registry_server import RegistryServer, running_registry

pytest_plugins = ["tests.servers.sigstore_stack.fixtures"]

#: The test levels, bottom up; each is a folder of ``tests/`` and a marker.
LEVELS = ("unit", "fs_api", "mount", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its level (the folder it is in under ``tests/``)."""
    root = Path(__file__).parent
    for item in items:
        level = item.path.relative_to(root).parts[0] if item.path.is_relative_to(root) else ""
        if level in LEVELS:
            item.add_marker(level)


@dataclass
class CliResult:
    """Exit code and captured output of one in-process CLI run."""

    code: int
    out: str
    err: str


@contextlib.contextmanager
def patched_env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class Party:
    """One identity with its own ``DOCKERCOMMS_HOME`` on a shared repository."""

    name: str
    home: Path
    repo: str
    data_home: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """Environment that selects this identity."""
        return {
            "DOCKERCOMMS_HOME": str(self.home),
            "XDG_DATA_HOME": str(self.data_home),
            **self.extra_env,
        }

    def cli(self, *args: str) -> CliResult:
        """Run ``dockercomms ARGS`` in-process as this identity."""
        out, err = io.StringIO(), io.StringIO()
        with (
            patched_env(self.env),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            code = main(list(args))
        return CliResult(code, out.getvalue(), err.getvalue())

    def ok(self, *args: str) -> str:
        """Run the CLI and require exit code 0; return stdout."""
        result = self.cli(*args)
        assert result.code == 0, f"dockercomms {' '.join(args)} -> {result.code}\n{result.err}"
        return result.out

    def workspace(self) -> Workspace:
        """This identity's workspace (for driving the engine directly)."""
        with patched_env(self.env):
            return Workspace.load()

    def public_key(self) -> Path:
        """Export this identity's public key to a file."""
        path = self.home / "public.pem"
        path.write_text(self.ok("key", "export"))
        return path


@pytest.fixture(scope="session")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """One distribution server for the session (stopped by PID at the end)."""
    with running_registry(tmp_path_factory.mktemp("distribution")) as server:
        yield server


@pytest.fixture(params=["embedded", "distribution"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh repository on each kind of backend, as a ``--repo`` value."""
    if request.param == "embedded":
        return f"oci-layout:{tmp_path / 'layout'}"
    server: RegistryServer = request.getfixturevalue("registry_server")
    return f"{server.host}/tests/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def backend_storage(request: pytest.FixtureRequest, backend: str) -> Path:
    """Where the backend keeps blobs on disk (to play a compromised registry)."""
    if backend.startswith("oci-layout:"):
        return Path(backend.removeprefix("oci-layout:"))
    server: RegistryServer = request.getfixturevalue("registry_server")
    return server.root


def make_party(tmp_path: Path, name: str, repo: str, *init_args: str) -> Party:
    """Create an identity with ``init`` on ``repo`` (and ``init_args``, e.g. ``--no-publish``)."""
    party = Party(name, tmp_path / f"home-{name}", repo, tmp_path / "xdg-data")
    party.ok("init", "--identity", name, "--repo", repo, *init_args)
    return party


def introduce(*parties: Party) -> None:
    """Make every party trust every other party's key."""
    for truster in parties:
        for other in parties:
            if other is not truster:
                truster.ok("trust", "add", other.name, "--key", str(other.public_key()))


@pytest.fixture
def alice_bob(tmp_path: Path, backend: str) -> tuple[Party, Party]:
    """Two identities who trust each other, on the parametrised backend."""
    alice = make_party(tmp_path, "alice@example.com", backend)
    bob = make_party(tmp_path, "bob", backend)
    introduce(alice, bob)
    return alice, bob


@pytest.fixture
def embedded_pair(tmp_path: Path) -> tuple[Party, Party]:
    """Two identities on the embedded registry only (for engine-level tests)."""
    repo = f"oci-layout:{tmp_path / 'layout'}"
    alice = make_party(tmp_path, "alice@example.com", repo)
    bob = make_party(tmp_path, "bob", repo)
    introduce(alice, bob)
    return alice, bob
