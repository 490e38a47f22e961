"""Which backend and storage this identity's commands use, and can it be read and written.

``dockercomms doctor`` shows a :class:`Diagnosis`; the probes reach the registry
client and the storage drivers here, behind the face.

Caveats first:

* It checks the repository the other commands would use (``--repo``, else the
  settings, else the embedded registry), through the same client they use.
* Read: the tag list. Write: for ``storage:NAME``, a probe file written, read back
  and removed in distribution's upload scratch space (``registry.storage.probe``);
  for a registry or the embedded store, an upload session started and cancelled,
  which stores nothing.
* Open, read, write, in order: the first failed step ends the run, and its error's
  exit code is the command's (3 for refused credentials or permissions, 1 for an
  unreachable or misconfigured store).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core._internal.registry.reference import RepositoryRef
from dockercomms.core.errors import AuthError, ConfigError, DockerCommsError, RegistryError
from dockercomms.core.status import OMITTED_IF_NONE

if TYPE_CHECKING:
    from dockercomms.core.workspace import RegistryOptions, Workspace


@dataclass(frozen=True)
class Check:
    """One step of the diagnosis, and its error's exit code when it failed."""

    check: str
    ok: bool
    detail: str
    exit_code: int | None = field(default=None, metadata=OMITTED_IF_NONE)


@dataclass(frozen=True)
class Diagnosis:
    """The backend, where it lives, and the checks run on it.

    Attributes:
        driver: the storage driver (``storage:NAME`` only).
        config: the distribution config file it came from (``storage:NAME`` only).
        config_error: why that configuration could not be used.
    """

    repository: str
    backend: str
    location: str | None = field(default=None, metadata=OMITTED_IF_NONE)
    driver: str | None = field(default=None, metadata=OMITTED_IF_NONE)
    config: str | None = field(default=None, metadata=OMITTED_IF_NONE)
    config_error: str | None = field(default=None, metadata=OMITTED_IF_NONE)
    checks: list[Check] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """The first failed check's exit code, 0 when all passed."""
        return next((c.exit_code or 1 for c in self.checks if not c.ok), 0)


def diagnose(workspace: Workspace, options: RegistryOptions) -> Diagnosis:
    """Describe the backend, then check that it can be read and written."""
    ref = workspace.repository(options)
    described = _describe(ref)
    checks: list[Check] = []
    _run_checks(workspace, options, ref, checks)
    return Diagnosis(str(ref), checks=checks, **described)


def _describe(ref: RepositoryRef) -> dict[str, str]:
    """Backend and location, without touching the network or the storage."""
    if ref.layout_dir is not None:
        return {"backend": "embedded OCI image layout", "location": str(ref.layout_dir)}
    if ref.storage:
        from dockercomms.core._internal.registry.storage import load_storage_config, open_driver

        described = {"backend": "distribution storage, no server"}
        try:
            config = load_storage_config(ref.storage_config)
            described |= {"driver": config.driver, "config": config.source}
            driver = open_driver(config)
        except DockerCommsError as exc:
            described["config_error"] = exc.diagnostics()
            return described
        described["location"] = driver.location
        driver.close()
        return described
    return {
        "backend": f"registry over {ref.scheme.upper()}",
        "location": f"{ref.scheme}://{ref.host}",
    }


def _run_checks(
    workspace: Workspace, options: RegistryOptions, ref: RepositoryRef, checks: list[Check]
) -> None:
    """Open, read, write, in order; a failed step ends the run."""
    try:
        client = workspace.client(options)
    except DockerCommsError as exc:
        checks.append(_failed("open", exc))
        return
    with client:
        try:
            tags = client.list_tags()
        except DockerCommsError as exc:
            checks.append(_failed("read", exc))
            return
        checks.append(Check("read", True, f"{len(tags)} tags"))
        try:
            detail = _write_probe(client, ref)
        except DockerCommsError as exc:
            checks.append(_failed("write", exc))
            return
        checks.append(Check("write", True, detail))


def _write_probe(client: RegistryClient, ref: RepositoryRef) -> str:
    if ref.storage:
        from dockercomms.core._internal.registry.storage import load_storage_config, open_driver
        from dockercomms.core._internal.registry.storage.drivers import StorageFailure
        from dockercomms.core._internal.registry.storage.probe import probe_write

        driver = open_driver(load_storage_config(ref.storage_config))
        try:
            probe = probe_write(driver, ref.name)
        except StorageFailure as failure:
            if failure.kind == "auth":
                raise AuthError(str(failure)) from failure
            if failure.kind == "config":
                raise ConfigError(str(failure)) from failure
            raise RegistryError(str(failure)) from failure
        finally:
            driver.close()
        if not probe.read_back:
            raise RegistryError(f"wrote {probe.path} but read back other bytes")
        return f"wrote, read back and removed {probe.path} in {driver.location}"
    response = client.request(
        "POST",
        f"{client.base_url}/v2/{ref.name}/blobs/uploads/",
        push=True,
        ok=(202,),
        what="start an upload",
    )
    response.close()
    location = response.headers.get("Location")
    if location:
        client.request(
            "DELETE",
            urljoin(client.base_url + "/", location),
            push=True,
            ok=(200, 202, 204, 404),
            what="cancel the upload",
        ).close()
    return "started and cancelled an upload session (nothing stored)"


def _failed(check: str, exc: DockerCommsError) -> Check:
    return Check(check, False, exc.diagnostics(), exc.exit_code)
