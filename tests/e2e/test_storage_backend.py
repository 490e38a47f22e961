"""Registry storage with no server (SPEC 10), checked against distribution 2.8 itself.

Two worlds, each a stock ``docker-registry`` and our in-process storage backend on one
storage, both configured by the very same ``config.yml``:

* ``filesystem``: the session's registry (``registry_server`` in conftest) and its root;
* ``s3``: moto in server mode on 127.0.0.1 and a second ``docker-registry`` using its
  ``s3`` driver on the same bucket (one pair for the module).

What goes in through storage must come out through the server and the reverse: tags
(the HTTP tag list), manifests (``skopeo inspect --raw``), messages, bundles, receipts
and ``sha256-<hex>`` fallback indexes, received and verified by our own HTTP client.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from dockercomms.core import protocol as p
from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core._internal.registry.reference import parse_repository
from dockercomms.core._internal.registry.retry import RetryPolicy
from dockercomms.core._internal.registry.storage import load_storage_config, open_driver
from dockercomms.core._internal.registry.storage.drivers import StorageFailure
from dockercomms.core.config import load_settings, save_settings
from dockercomms.core.errors import ConfigError, LimitExceededError, NotFoundError, RegistryError
from dockercomms.core.paths import resolve_paths
from tests.conftest import Party, introduce, make_party
from tests.fsmount_fixtures import Identity, mounted, scratch_root, trust, wait_for
from tests.servers.registry_server import RegistryServer, running_registry
from tests.servers.s3_server import REGION, S3Server, running_s3

CHUNK = 4096
BUCKET = "dockercomms-tests"
V2 = "docker/registry/v2"


@dataclass(frozen=True)
class World:
    """A registry server and our storage backend on one storage.

    Attributes:
        kind: ``filesystem`` or ``s3``.
        server: the ``docker-registry`` process serving that storage over HTTP.
        s3: the moto server holding the bucket (``s3`` only).
    """

    kind: str
    server: RegistryServer
    s3: S3Server | None = None

    @property
    def config(self) -> Path:
        """The registry's own ``config.yml``: our ``--storage-config`` too."""
        return self.server.config_path

    def new_repository(self) -> str:
        return f"storage-tests/{uuid.uuid4().hex[:10]}"

    def keys(self, prefix: str) -> list[str]:
        """Every file (or object) under ``prefix`` of the storage root."""
        if self.s3 is not None:
            root = "registry/"
            return [k[len(root) :] for k in self.s3.keys(BUCKET, root + prefix)]
        top = self.server.root / prefix
        found = [top] if top.is_file() else [path for path in top.rglob("*") if path.is_file()]
        return [str(path.relative_to(self.server.root)) for path in found]


@pytest.fixture(scope="module")
def s3_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """moto, a bucket, and docker-registry's ``s3`` driver on it (stopped by PID)."""
    work = tmp_path_factory.mktemp("s3-world")
    with running_s3(work / "moto") as s3:
        s3.create_bucket(BUCKET)
        driver = {
            "accesskey": s3.access_key,
            "secretkey": s3.secret_key,
            "region": REGION,
            # distribution 2.8 forces path-style requests when regionendpoint is set; an
            # http:// endpoint needs secure: false as well.
            "regionendpoint": s3.endpoint,
            "secure": False,
            "bucket": BUCKET,
            "rootdirectory": "/registry",
        }
        overrides = {
            # Serve blobs itself: a redirect to a presigned moto URL fails (moto 5 with
            # IAM auth wants an Authorization header even there).
            "storage": {"filesystem": None, "s3": driver, "redirect": {"disable": True}}
        }
        with running_registry(work / "registry", config_overrides=overrides) as server:
            yield World("s3", server, s3)


@pytest.fixture(scope="module", params=["filesystem", "s3"])
def world(request: pytest.FixtureRequest) -> World:
    """Each world in turn (the S3 pair starts once for the module)."""
    if request.param == "filesystem":
        return World("filesystem", request.getfixturevalue("registry_server"))
    world: World = request.getfixturevalue("s3_world")
    return world


@pytest.fixture
def fs_world(registry_server: RegistryServer) -> World:
    """The filesystem world only (tests that touch the storage behind our back)."""
    return World("filesystem", registry_server)


def storage_party(tmp_path: Path, name: str, world: World, repository: str) -> Party:
    """An identity on ``storage:REPOSITORY``, its config file named in config.toml."""
    party = make_party(tmp_path, name, f"storage:{repository}")
    paths = resolve_paths(party.env)
    settings = dataclasses.replace(load_settings(paths), storage_config=str(world.config))
    save_settings(paths, settings)
    return party


def server_party(tmp_path: Path, name: str, world: World, repository: str) -> Party:
    """An identity on the same repository through the registry server."""
    return make_party(tmp_path, name, f"{world.server.host}/{repository}")


def write(path: Path, size: int, *, seed: int = 0) -> Path:
    path.write_bytes(bytes((i * 131 + seed) % 251 for i in range(size)))
    return path


def send(party: Party, path: Path, to: str, *extra: str) -> dict[str, Any]:
    sent: dict[str, Any] = json.loads(
        party.ok(
            "send", str(path), "--recipient", to, "--chunk-bytes", str(CHUNK), "--json", *extra
        )
    )
    return sent


def recv(party: Party, out: Path) -> list[dict[str, Any]]:
    outcomes: list[dict[str, Any]] = json.loads(party.ok("recv", "--out", str(out), "--json"))
    return outcomes


def http_tags(world: World, repository: str) -> list[str]:
    """The tag list as the registry serves it."""
    response = requests.get(f"{world.server.url}/v2/{repository}/tags/list", timeout=30)
    response.raise_for_status()
    tags: list[str] = response.json()["tags"]
    return tags


def storage_client(party: Party) -> RegistryClient:
    return party.workspace().client()


def skopeo_raw(world: World, repository: str, tag: str) -> bytes:
    return subprocess.run(
        [
            "skopeo",
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"docker://{world.server.host}/{repository}:{tag}",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- both directions -------------------------------------------------------------------


@pytest.mark.slow
def test_storage_and_server_see_one_repository(world: World, tmp_path: Path) -> None:
    repository = world.new_repository()
    alice = storage_party(tmp_path, "alice@example.com", world, repository)
    bob = server_party(tmp_path, "bob", world, repository)
    introduce(alice, bob)

    # 1. Through storage, seen through the server.
    source = write(tmp_path / "to-bob.bin", 3 * CHUNK + 5)
    sent = send(alice, source, "bob")
    hexa = sent["digest"].removeprefix("sha256:")
    tags = http_tags(world, repository)
    assert sent["tag"] in tags
    assert p.referrers_fallback_tag(sent["digest"]) in tags
    assert any(tag.startswith(f"bundle-{hexa[:12]}-") for tag in tags)
    assert hashlib.sha256(skopeo_raw(world, repository, sent["tag"])).hexdigest() == hexa
    outcomes = recv(bob, tmp_path / "bob-inbox")
    assert [o["status"] for o in outcomes] == ["received"]
    assert Path(outcomes[0]["path"]).read_bytes() == source.read_bytes()

    # 2. Through the server, seen through storage.
    back = write(tmp_path / "to-alice.bin", 2 * CHUNK + 1, seed=7)
    sent_back = send(bob, back, alice.name)
    with storage_client(alice) as client:
        assert sent_back["tag"] in client.list_tags("inbox-")
    outcomes = recv(alice, tmp_path / "alice-inbox")
    assert [o["status"] for o in outcomes] == ["received"]
    assert Path(outcomes[0]["path"]).read_bytes() == back.read_bytes()

    # 3. Like distribution 2.8, storage has no referrers API: bundles are found through
    #    the sha256-<hex> index (and tags), by either side.
    for party, digest in ((alice, sent["digest"]), (bob, sent_back["digest"])):
        assert party.cli("verify", "--digest", digest, "--bundle", "referrers").code == 2
        assert party.cli("verify", "--digest", digest, "--chunks").code == 0

    # 4. Receipts both ways: recv wrote one each; an explicit ack too.
    back_hex = sent_back["digest"].removeprefix("sha256:")
    with storage_client(alice) as client:
        assert any(t.startswith(f"receipt-{hexa[:12]}-") for t in client.list_tags("receipt-"))
    assert any(t.startswith(f"receipt-{back_hex[:12]}-") for t in http_tags(world, repository))
    ack = json.loads(
        bob.ok("ack", "--for", sent["digest"], "--status", "rejected", "--reason", "x", "--json")
    )
    verified = json.loads(alice.ok("verify", "--digest", ack["digest"], "--json"))
    assert verified["kind"] == "receipt" and verified["signer"]["name"] == "bob"

    # 5. Nothing of ours is left in distribution's upload scratch space.
    assert world.keys(f"{V2}/repositories/{repository}/_uploads") == []


def test_doctor_names_backend_and_storage_and_probes_both_ways(
    world: World, tmp_path: Path
) -> None:
    alice = storage_party(tmp_path, "alice", world, world.new_repository())
    report = json.loads(alice.ok("doctor", "--json"))
    assert report["ok"] is True
    assert report["backend"] == "distribution storage, no server"
    assert report["driver"] == world.kind and report["config"] == str(world.config)
    where = f"s3://{BUCKET}/registry at {world.s3.endpoint}" if world.s3 else str(world.server.root)
    assert report["location"] == where
    assert [(c["check"], c["ok"]) for c in report["checks"]] == [("read", True), ("write", True)]
    assert "_uploads/" in report["checks"][1]["detail"]
    text = alice.ok("doctor")
    assert f"location: {where}" in text and "write: ok" in text


@pytest.mark.slow
def test_two_processes_sending_at_once_lose_no_tag_and_no_message(
    world: World, tmp_path: Path
) -> None:
    """Two senders through storage and one through the server, all at the same time."""
    repository = world.new_repository()
    alice = storage_party(tmp_path, "alice", world, repository)
    bob = server_party(tmp_path, "bob", world, repository)
    introduce(alice, bob)
    script = (
        "import sys\nfrom dockercomms.cli.main import main\n"
        "for f in sys.argv[2:]:\n"
        "    assert main(['send', f, '-r', sys.argv[1], '--chunk-bytes', '4096']) == 0\n"
    )
    batches = [
        (alice, "bob", [write(tmp_path / f"a{n}.bin", 9000, seed=n) for n in range(3)]),
        (alice, "bob", [write(tmp_path / f"b{n}.bin", 9000, seed=10 + n) for n in range(3)]),
        (bob, "alice", [write(tmp_path / f"c{n}.bin", 9000, seed=20 + n) for n in range(3)]),
    ]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for party, to, files in batches:
            env = {**os.environ, **party.env}
            argv = [sys.executable, "-c", script, to, *map(str, files)]
            procs.append(subprocess.Popen(argv, env=env))
        for proc in procs:
            assert proc.wait(timeout=300) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    inbox_tags = [t for t in http_tags(world, repository) if t.startswith("inbox-")]
    assert len(inbox_tags) == 9
    for party, out, files in (
        (bob, tmp_path / "bob-in", batches[0][2] + batches[1][2]),
        (alice, tmp_path / "alice-in", batches[2][2]),
    ):
        outcomes = recv(party, out)
        assert sorted(o["filename"] for o in outcomes if o["status"] == "received") == sorted(
            f.name for f in files
        )
        assert all((out / f.name).read_bytes() == f.read_bytes() for f in files)


@pytest.mark.slow
def test_gc_through_storage_deletes_what_distribution_would(world: World, tmp_path: Path) -> None:
    """Manifest delete = revision link and its tags gone; bytes go with registry gc."""
    repository = world.new_repository()
    alice = storage_party(tmp_path, "alice", world, repository)
    bob = server_party(tmp_path, "bob", world, repository)
    introduce(alice, bob)
    expiring = send(
        alice, write(tmp_path / "short.bin", CHUNK + 3, seed=3), "bob", "--ttl-seconds", "1"
    )
    kept = send(alice, write(tmp_path / "long.bin", CHUNK + 3, seed=4), "bob")
    assert len(recv(bob, tmp_path / "bob-in")) == 2  # receipts for both, over HTTP
    with storage_client(alice) as client:
        chunk = json.loads(client.fetch_manifest(expiring["digest"])[0])["layers"][0]["digest"]
    time.sleep(2.1)  # created_at has whole seconds; gc allows no clock skew

    report = json.loads(alice.ok("gc", "--json"))
    assert [e["digest"] for e in report["expired"]] == [expiring["digest"]]
    assert report["errors"] == [] and report["unsupported"] is None
    hexa = expiring["digest"].removeprefix("sha256:")
    left = [t for t in http_tags(world, repository) if hexa[:12] in t or t.endswith(hexa)]
    assert left == [], "inbox, bundle, receipt and index tags all went"
    assert expiring["tag"] not in http_tags(world, repository)
    url = f"{world.server.url}/v2/{repository}/manifests/{expiring['digest']}"
    assert requests.head(url, timeout=30).status_code == 404
    assert kept["tag"] in http_tags(world, repository)
    blob = f"{V2}/blobs/sha256/{chunk[7:9]}/{chunk[7:]}/data"
    assert world.keys(blob) == [blob], "distribution keeps the bytes until its own gc"

    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "AWS_"))}
    subprocess.run(
        ["docker-registry", "garbage-collect", str(world.config)],
        check=True,
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert world.keys(blob) == [], "registry garbage-collect reclaimed the unreferenced chunk"
    assert bob.cli("verify", "--digest", kept["digest"], "--chunks").code == 0


# --- S3: what goes wrong must say so, quickly -------------------------------------------


def test_refused_credentials_missing_bucket_and_dead_endpoint(
    s3_world: World, tmp_path: Path
) -> None:
    assert s3_world.s3 is not None
    alice = storage_party(tmp_path, "alice", s3_world, s3_world.new_repository())

    def as_alice(**env: str) -> Party:
        return dataclasses.replace(alice, extra_env=env)

    with s3_world.s3.authentication():
        wrong = as_alice(REGISTRY_STORAGE_S3_SECRETKEY="not-the-secret")
        result = wrong.cli("ls")
        assert result.code == 3, result.err
        assert "credentials refused" in result.err and "SignatureDoesNotMatch" in result.err
        assert wrong.cli("doctor").code == 3
        # The right key gets past moto's check (a HEAD; moto mis-checks OpenDAL's lists).
        right = open_driver(load_storage_config(s3_world.config))
        assert right.size(f"{V2}/no-such-object") is None
        wrong_driver = open_driver(
            load_storage_config(s3_world.config, {"REGISTRY_STORAGE_S3_SECRETKEY": "x"})
        )
        with pytest.raises(StorageFailure) as refused:
            wrong_driver.size(f"{V2}/no-such-object")
        assert refused.value.kind == "auth"

    started = time.monotonic()
    missing = as_alice(REGISTRY_STORAGE_S3_BUCKET="no-such-bucket").cli("ls")
    assert missing.code == 1 and "bucket 'no-such-bucket' does not exist" in missing.err
    assert time.monotonic() - started < 5, "a missing bucket is not worth retrying"

    started = time.monotonic()
    dead = as_alice(REGISTRY_STORAGE_S3_REGIONENDPOINT=f"http://127.0.0.1:{closed_port()}")
    result = dead.cli("ls")
    elapsed = time.monotonic() - started
    assert result.code == 1 and "unreachable" in result.err and "Connection refused" in result.err
    assert elapsed < RetryPolicy().total_budget, f"{elapsed:.1f} s"


# --- the storage is untrusted -----------------------------------------------------------


def test_hostile_links_and_manifests_in_storage_are_refused(
    fs_world: World, tmp_path: Path
) -> None:
    repository = fs_world.new_repository()
    alice = storage_party(tmp_path, "alice", fs_world, repository)
    bob = storage_party(tmp_path, "bob", fs_world, repository)
    introduce(alice, bob)
    sent = send(alice, write(tmp_path / "real.bin", 10), "bob")
    root = fs_world.server.root / V2
    repo = root / "repositories" / repository
    real_link = repo / "_manifests" / "tags" / sent["tag"] / "current" / "link"

    def plant(tag: str, content: bytes | None = None) -> Path:
        link = repo / "_manifests" / "tags" / tag / "current" / "link"
        link.parent.mkdir(parents=True)
        if content is not None:
            link.write_bytes(content)
        return link

    plant("unknown-digest", b"sha256:" + b"0" * 64)  # not a manifest of this repository
    plant("junk", b"sha256:../../../../etc/passwd")
    plant("huge", b"sha256:" + b"a" * 64 + b" " * 100_000)
    plant("symlinked").symlink_to(real_link)  # a link that is a symlink is no link
    os.mkfifo(plant("fifo"))  # a FIFO would block a naive open()
    # A revision link for bytes that are in the storage (the empty config blob) but
    # naming another digest: it does not make them a manifest of this repository.
    other = p.EMPTY_CONFIG_DIGEST
    revision = repo / "_manifests" / "revisions" / "sha256" / other[7:] / "link"
    revision.parent.mkdir(parents=True)
    revision.write_bytes(sent["digest"].encode())
    plant("lying-revision", other.encode())
    for odd in (".hidden", "-dash", "with space"):
        (repo / "_manifests" / "tags" / odd / "current").mkdir(parents=True)

    big = b'{"schemaVersion":2,"x":"' + b"a" * (4 * 1024 * 1024) + b'"}'
    big_digest = p.sha256_digest(big)
    data = root / "blobs" / "sha256" / big_digest[7:9] / big_digest[7:] / "data"
    data.parent.mkdir(parents=True)
    data.write_bytes(big)
    big_revision = repo / "_manifests" / "revisions" / "sha256" / big_digest[7:] / "link"
    big_revision.parent.mkdir(parents=True)
    big_revision.write_bytes(big_digest.encode())
    plant("oversized", big_digest.encode())

    with storage_client(bob) as client:
        for tag in ("unknown-digest", "junk", "huge", "symlinked", "fifo", "lying-revision"):
            with pytest.raises(NotFoundError):
                client.fetch_manifest(tag)
        with pytest.raises(NotFoundError):
            client.fetch_manifest(other)
        with pytest.raises(LimitExceededError):
            client.fetch_manifest("oversized")
        listed = client.list_tags()
        assert not {".hidden", "-dash", "with space"} & set(listed)
        assert sent["tag"] in listed
    outcomes = recv(bob, tmp_path / "bob-in")
    assert [o["status"] for o in outcomes] == ["received"], "the real message still arrives"


def test_config_file_and_environment_as_distribution_reads_them(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "http": {"addr": ":5000"},
                "storage": {
                    "filesystem": {"rootdirectory": "/from/file"},
                    "delete": {"enabled": True},
                    "maintenance": {"readonly": {"enabled": "true"}},
                },
            }
        )
    )
    loaded = load_storage_config(config, {})
    assert (loaded.driver, loaded.text("rootdirectory")) == ("filesystem", "/from/file")
    assert loaded.delete_enabled and not loaded.read_only, "only a YAML true counts"
    env = {"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/from/env", "UNRELATED": "1"}
    assert load_storage_config(config, env).text("rootdirectory") == "/from/env"
    assert load_storage_config(config, env).source == f"{config} + environment"
    # REGISTRY_STORAGE replaces the section; the longer names apply after it (lexical).
    replaced = load_storage_config(
        config,
        {
            "REGISTRY_STORAGE_S3_SECURE": "false",
            "REGISTRY_STORAGE_S3_BUCKET": "b",
            "REGISTRY_STORAGE": "s3",
        },
    )
    assert replaced.driver == "s3" and replaced.parameters == {"secure": False, "bucket": "b"}
    assert not replaced.delete_enabled
    mixed = tmp_path / "mixed.yml"
    mixed.write_text("storage:\n  s3:\n    regionEndpoint: x\n")
    both = load_storage_config(mixed, {"REGISTRY_STORAGE_S3_REGIONENDPOINT": "y"})
    assert both.text("regionendpoint") == "y", "keys matched case-insensitively, set lower-case"
    with pytest.raises(ConfigError, match="more than one storage driver"):
        load_storage_config(config, {"REGISTRY_STORAGE_S3_BUCKET": "b"})
    with pytest.raises(ConfigError, match="no storage driver"):
        load_storage_config(None, {})
    only_env = load_storage_config(None, {"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/x"})
    assert only_env.driver == "filesystem" and only_env.source == "environment"
    for bad, match in (
        ({"REGISTRY_STORAGE": "gcs"}, "not supported"),
        ({"REGISTRY_STORAGE_S3_BUCKET": "b"}, "needs bucket and region"),
        (
            {
                "REGISTRY_STORAGE_S3_BUCKET": "b",
                "REGISTRY_STORAGE_S3_REGION": "r",
                "REGISTRY_STORAGE_S3_SKIPVERIFY": "true",
            },
            "skipverify",
        ),
    ):
        with pytest.raises(ConfigError, match=match):
            open_driver(load_storage_config(None, bad))
    with pytest.raises(ConfigError, match="invalid repository name"):
        parse_repository("storage:Bad/Name")


def test_delete_disabled_and_read_only_storage_refuse_like_distribution(
    fs_world: World, tmp_path: Path
) -> None:
    repository = fs_world.new_repository()
    alice = storage_party(tmp_path, "alice", fs_world, repository)
    sent = send(alice, write(tmp_path / "a.bin", 10), alice.name)
    config = json.loads(fs_world.config.read_text())
    no_delete = tmp_path / "no-delete.yml"
    no_delete.write_text(
        yaml.safe_dump({"storage": {"filesystem": config["storage"]["filesystem"]}})
    )
    ref = parse_repository(f"storage:{repository}", storage_config=no_delete)
    with RegistryClient(ref) as client, pytest.raises(RegistryError, match="405"):
        client.delete_manifest(sent["digest"])
    read_only = tmp_path / "read-only.yml"
    read_only.write_text(
        yaml.safe_dump(
            {
                "storage": {
                    "filesystem": config["storage"]["filesystem"],
                    "maintenance": {"readonly": {"enabled": True}},
                }
            }
        )
    )
    result = alice.cli(
        "send",
        str(tmp_path / "a.bin"),
        "-r",
        "x",
        "--plaintext",
        "--storage-config",
        str(read_only),
    )
    assert result.code == 1 and "read-only" in result.err
    assert alice.cli("ls", "--storage-config", str(read_only)).code == 0, "reads still work"


def test_tag_pages_follow_links_and_server_agrees(fs_world: World, tmp_path: Path) -> None:
    repository = fs_world.new_repository()
    ref = parse_repository(f"storage:{repository}", storage_config=fs_world.config)
    with RegistryClient(ref) as client:
        client.push_blob_bytes(p.EMPTY_CONFIG_BYTES, p.OCI_EMPTY)
        raw = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": p.OCI_MANIFEST,
                "config": p.EMPTY_CONFIG_DESCRIPTOR,
                "layers": [],
            }
        ).encode()
        names = [f"t{n}" for n in range(5)]
        for name in names:
            client.push_manifest(raw, name)
        url: str | None = f"{client.base_url}/v2/{repository}/tags/list?n=2"
        pages: list[list[str]] = []
        while url:
            response = client.session.get(url)
            pages.append(response.json()["tags"])
            link = response.links.get("next", {}).get("url")
            url = f"{client.base_url}{link}" if link else None
        assert pages == [["t0", "t1"], ["t2", "t3"], ["t4"]]
    assert sorted(http_tags(fs_world, repository)) == names


# --- the syncer and the mount, unchanged, on storage ----------------------------------


def test_sync_once_sends_and_receives_through_storage(fs_world: World, tmp_path: Path) -> None:
    repository = fs_world.new_repository()
    alice = storage_party(tmp_path, "alice", fs_world, repository)
    bob = server_party(tmp_path, "bob", fs_world, repository)
    introduce(alice, bob)
    outbox, inbox = tmp_path / "outbox", tmp_path / "inbox"
    outbox.mkdir()
    source = write(outbox / "synced.bin", 3 * CHUNK)
    content = source.read_bytes()
    send(bob, write(tmp_path / "for-alice.bin", 100), alice.name)
    args = ("sync", "--once", "--outbox", str(outbox), "--inbox", str(inbox), "--to", "bob")
    summary = json.loads(alice.ok(*args, "--settle", "0", "--json"))
    assert [item["filename"] for item in summary["sent"]] == ["synced.bin"]
    received = [(r["filename"], r["status"]) for r in summary["received"]]
    assert received == [("for-alice.bin", "received")]
    outcomes = recv(bob, tmp_path / "bob-in")
    assert [(o["filename"], o["status"]) for o in outcomes] == [("synced.bin", "received")]
    assert (tmp_path / "bob-in" / "synced.bin").read_bytes() == content


def test_mount_outbox_arrives_through_storage_on_the_server(
    fs_world: World,
) -> None:
    root = Path(tempfile.mkdtemp(prefix="storage-mount-", dir=scratch_root()))
    try:
        repository = fs_world.new_repository()
        people = {}
        for name, repo in (
            ("alice", f"storage:{repository}"),
            ("bob", f"{fs_world.server.host}/{repository}"),
        ):
            identity = Identity(name, root / name, root / "xdg-data")
            identity.cli("init", "--identity", name, "--repo", repo)
            paths = resolve_paths(identity.env)
            storage_config = str(fs_world.config) if repo.startswith("storage:") else ""
            save_settings(
                paths,
                dataclasses.replace(
                    load_settings(paths), storage_config=storage_config, chunk_bytes=64 * 1024
                ),
            )
            people[name] = identity
        alice, bob = people["alice"], people["bob"]
        trust(alice, bob)
        trust(bob, alice)
        source = root / "report.bin"
        source.write_bytes(os.urandom(300 * 1024 + 7))
        with mounted(alice, root / "mnt-alice", "--to", "bob") as alice_mount:
            subprocess.run(["cp", str(source), str(alice_mount / "outbox")], check=True)
            sent = alice_mount / "sent" / "bob" / "report.bin"
            wait_for(
                "the file in alice's sent/", sent.exists, timeout=120, poke=alice_mount.refresh
            )
        out = root / "bob-in"
        bob.cli("recv", "--out", str(out))
        assert (out / "report.bin").read_bytes() == source.read_bytes()
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)
