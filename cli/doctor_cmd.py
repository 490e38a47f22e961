"""``doctor``: which backend and storage commands use here, and can we read and write it.

Caveats first:

* It checks the repository the other commands would use (``--repo``, else the
  settings, else the embedded registry), through the same client they use.
* Read: the tag list. Write: for ``storage:NAME``, a probe file written, read back and
  removed in distribution's upload scratch space (see ``core.registry.storage.probe``);
  for a registry or the embedded store, an upload session started and cancelled, which
  stores nothing.
* Exit 0 when every check passed; otherwise the exit code of the first failure (3 for
  refused credentials or permissions, 1 for an unreachable or misconfigured store).
* Only argparse-level imports at the top: building the parser must stay cheap.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from dockercomms.cli.output import emit
from dockercomms.cli.registry_flags import registry_options
from dockercomms.core.errors import DockerCommsError

if TYPE_CHECKING:
    from dockercomms.core.registry.client import RegistryClient
    from dockercomms.core.registry.reference import RepositoryRef
    from dockercomms.core.workspace import RegistryOptions, Workspace


def cmd_doctor(args: argparse.Namespace) -> int:
    """Describe the backend, then check that it can be read and written."""
    from dockercomms.core.workspace import Workspace

    workspace = Workspace.load()
    options = registry_options(args)
    ref = workspace.repository(options)
    result: dict[str, Any] = {"repository": str(ref), **_describe(ref), "checks": []}
    codes = _run_checks(workspace, options, ref, result["checks"])
    result["ok"] = not codes
    emit(args, result, _text)
    return codes[0] if codes else 0


def _describe(ref: RepositoryRef) -> dict[str, Any]:
    """Backend and location, without touching the network or the storage."""
    if ref.layout_dir is not None:
        return {"backend": "embedded OCI image layout", "location": str(ref.layout_dir)}
    if ref.storage:
        from dockercomms.core.registry.storage import load_storage_config, open_driver

        described: dict[str, Any] = {"backend": "distribution storage, no server"}
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
    workspace: Workspace, options: RegistryOptions, ref: RepositoryRef, checks: list[dict[str, Any]]
) -> list[int]:
    """Open, read, write, in order; a failed step ends the run. Returns the exit codes."""
    try:
        client = workspace.client(options)
    except DockerCommsError as exc:
        checks.append(_failed("open", exc))
        return [exc.exit_code]
    with client:
        try:
            tags = client.list_tags()
        except DockerCommsError as exc:
            checks.append(_failed("read", exc))
            return [exc.exit_code]
        checks.append({"check": "read", "ok": True, "detail": f"{len(tags)} tags"})
        try:
            detail = _write_probe(client, ref)
        except DockerCommsError as exc:
            checks.append(_failed("write", exc))
            return [exc.exit_code]
        checks.append({"check": "write", "ok": True, "detail": detail})
    return []


def _write_probe(client: RegistryClient, ref: RepositoryRef) -> str:
    if ref.storage:
        from dockercomms.core.errors import AuthError, ConfigError, RegistryError
        from dockercomms.core.registry.storage import load_storage_config, open_driver
        from dockercomms.core.registry.storage.drivers import StorageFailure
        from dockercomms.core.registry.storage.probe import probe_write

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


def _failed(check: str, exc: DockerCommsError) -> dict[str, Any]:
    return {"check": check, "ok": False, "detail": exc.diagnostics(), "exit_code": exc.exit_code}


def _text(result: dict[str, Any]) -> str:
    lines = [f"repository: {result['repository']}", f"backend: {result['backend']}"]
    for key in ("driver", "location", "config", "config_error"):
        if key in result:
            lines.append(f"{key.replace('_', ' ')}: {result[key]}")
    for check in result["checks"]:
        verdict = "ok" if check["ok"] else "FAILED"
        lines.append(f"{check['check']}: {verdict} ({check['detail']})")
    return "\n".join(lines)


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    registry: argparse.ArgumentParser,
) -> None:
    """Register ``doctor``."""
    d = sub.add_parser(
        "doctor",
        parents=[common, registry],
        help="which backend and storage are used, and can they be read and written",
        description="Says which repository the other commands would use (--repo, else the\n"
        "settings, else the embedded registry), its backend (embedded OCI layout, a\n"
        "registry over HTTP(S), or a registry's storage with no server) and where it\n"
        "lives, then checks that it can be read (the tag list) and written (a probe\n"
        "that stores nothing). Exits with the first failed check's code.",
        examples=[
            "dockercomms doctor",
            "dockercomms doctor --repo storage:team/comms --storage-config config.yml --json",
        ],
    )
    d.set_defaults(func=cmd_doctor)
