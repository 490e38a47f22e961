"""One rule per failure: temporary, deferred or a rejection is the error class's own attribute.

``recv`` (the receive loop), the mount (``errno_map.is_rejection``) and the push
worker (``is_temporary``) all read it, so they can no longer disagree; a
registry that refuses me (401/403) is my set-up's trouble, not a verdict on the
message, wherever it is met.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dockercomms.core import errors
from dockercomms.core import protocol as p
from dockercomms.core._internal.intake import receive_new
from dockercomms.core.config import Settings, save_settings
from dockercomms.core.errors import Disposition, disposition_of
from dockercomms.core.paths import resolve_paths
from dockercomms.core.workspace import RegistryOptions, Workspace
from dockercomms.fsmount.errno_map import is_rejection
from dockercomms.syncer.worker import is_temporary
from tests.servers.hostile_server import hostile, reply

EXPECTED = {
    errors.DockerCommsError: Disposition.DEFERRED,
    errors.ConfigError: Disposition.DEFERRED,
    errors.OutputError: Disposition.DEFERRED,
    errors.VerificationError: Disposition.REJECTED,
    errors.SignatureError: Disposition.REJECTED,
    errors.UntrustedSignerError: Disposition.REJECTED,
    errors.SenderMismatchError: Disposition.REJECTED,
    errors.DigestMismatchError: Disposition.REJECTED,
    errors.ExpiredError: Disposition.REJECTED,
    errors.RegistryError: Disposition.DEFERRED,
    errors.RegistryUnavailableError: Disposition.TEMPORARY,
    errors.AuthError: Disposition.DEFERRED,
    errors.NotFoundError: Disposition.DEFERRED,
    errors.ProtocolError: Disposition.REJECTED,
    errors.ManifestError: Disposition.REJECTED,
    errors.ChunkError: Disposition.REJECTED,
    errors.LimitExceededError: Disposition.REJECTED,
    errors.FilenameError: Disposition.REJECTED,
}


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda cls: cls.__name__)
def test_each_error_class_has_one_disposition_that_every_reader_follows(
    cls: type[errors.DockerCommsError],
) -> None:
    error = cls("x")
    assert cls.disposition is EXPECTED[cls]
    assert disposition_of(error) is EXPECTED[cls]
    assert is_rejection(error) == (EXPECTED[cls] is Disposition.REJECTED)
    assert is_temporary(error) == (EXPECTED[cls] is Disposition.TEMPORARY)


def test_a_local_network_failure_is_temporary_and_anything_unknown_a_rejection() -> None:
    assert disposition_of(ConnectionResetError()) is Disposition.TEMPORARY
    assert disposition_of(ValueError("a parser choked")) is Disposition.REJECTED


def test_recv_defers_a_message_the_registry_refuses_to_show_me(tmp_path: Path) -> None:
    """A 403 on one manifest: recv calls it deferred, as the mount calls it transient."""
    paths = resolve_paths({"DOCKERCOMMS_HOME": str(tmp_path / "bob")})
    save_settings(paths, Settings(identity="bob"))
    workspace = Workspace.load(paths)
    tag = p.inbox_prefix("bob") + "20260101-0123abcd-01234567"
    with hostile() as registry:
        tags = json.dumps({"name": "comms", "tags": [tag]}).encode()
        registry.on("GET", "/tags/list", reply(200, {"Content-Type": "application/json"}, tags))
        registry.on("GET", "/manifests/", reply(403, body=b'{"errors": []}'))
        options = RegistryOptions(repository=f"{registry.host}/comms", insecure=True)
        with workspace.client(options) as client, workspace.ledger() as ledger:
            outcomes = receive_new(workspace.receiver(client), ledger, tmp_path / "out")

    assert [(o.tag, o.status) for o in outcomes] == [(tag, "deferred")]
    error = outcomes[0].error
    assert isinstance(error, errors.AuthError)
    assert not is_rejection(error) and not is_temporary(error)
