"""Real FUSE mounts for the filesystem tests: identities, mount daemons, a fast seeder.

Caveats first:

* Everything lives under ``/dev/shm`` when it exists: the embedded registry and
  the queue fsync a lot, and on a busy disk a test of 200 files would spend
  minutes in ``fsync``. tmpfs makes fsync free without changing any code path.
* Each mount is a real daemon process (``python -m dockercomms.fsmount mount
  --foreground``). The context manager that starts it stops it by PID
  (SIGTERM, then SIGKILL) and unmounts with ``fusermount3 -u`` (``-uz`` if
  that fails) in ``finally``, whatever the test did.
* After a mount stops, its log is checked: a traceback or an ERROR line fails the
  test (the s3ql rule: unexpected errors are failures even if the test passed).
* :func:`seed_inbox` pushes 1,000 signed messages' blobs through the registry
  client but, on the embedded registry, tags them with a single ``index.json``
  update (the OCI layout file, under the embedded registry's lock file), because
  pushing the manifests one by one rewrites the index thousands of times. Over
  HTTP it tags and attaches bundles as ``send`` does. The messages are built and
  signed exactly as ``Sender`` builds them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import filelock

from dockercomms.cli.main import main as cli_main
from dockercomms.core import protocol as p
from dockercomms.core._internal import manifest as m
from dockercomms.core._internal.chunking import ChunkSpan, layer_stream
from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core._internal.send import DigestSigner, SendRequest, SentMessage
from dockercomms.core._internal.signatures import attach_bundle, push_empty_config
from dockercomms.core.config import load_settings, save_settings
from dockercomms.core.paths import resolve_paths
from dockercomms.core.workspace import Workspace

FUSERMOUNT = "fusermount3"
MOUNT_START_SECONDS = 30.0


def scratch_root() -> Path | None:
    """A tmpfs folder for test data when there is one (see the module docstring)."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


@dataclass
class Identity:
    """One ``DOCKERCOMMS_HOME`` on a shared embedded registry (``XDG_DATA_HOME``)."""

    name: str
    home: Path
    data_home: Path

    @property
    def env(self) -> dict[str, str]:
        """The process environment that selects this identity."""
        return {
            **os.environ,
            "DOCKERCOMMS_HOME": str(self.home),
            "XDG_DATA_HOME": str(self.data_home),
        }

    @property
    def layout(self) -> Path:
        """The shared embedded registry's folder."""
        return self.data_home / "dockercomms" / "registry"

    def cli(self, *args: str) -> str:
        """Run ``dockercomms ARGS`` in-process as this identity; stdout, or raise."""
        out, err = io.StringIO(), io.StringIO()
        with (
            replaced_environment(self.env),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            code = cli_main(list(args))
        if code != 0:
            raise AssertionError(f"dockercomms {' '.join(args)} -> {code}: {err.getvalue()}")
        return out.getvalue()

    def workspace(self) -> Workspace:
        """This identity's workspace, for driving the engine directly."""
        return Workspace.load(resolve_paths(self.env))

    def set_chunk_bytes(self, chunk_bytes: int) -> None:
        """Small chunks, so modest test files span many of them."""
        paths = resolve_paths(self.env)
        settings = load_settings(paths)
        save_settings(paths, dataclasses.replace(settings, chunk_bytes=chunk_bytes))

    def fingerprint(self) -> str:
        """My key's fingerprint (the bundle hint, ``signer_identity``)."""
        return self.cli("key", "fingerprint").strip()

    def send(self, path: Path, recipient: str, *, filename: str | None = None) -> SentMessage:
        """Send with the engine, not through a mount."""
        workspace = self.workspace()
        with workspace.client() as client:
            return workspace.sender(client).send(
                SendRequest(
                    path,
                    recipient,
                    filename=filename,
                    chunk_bytes=workspace.settings.chunk_bytes,
                )
            )


@contextlib.contextmanager
def replaced_environment(values: dict[str, str]) -> Iterator[None]:
    """Replace the whole environment for a block (nothing of the developer's leaks in)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def make_identities(root: Path, names: list[str], *, data_home: Path) -> dict[str, Identity]:
    """``init`` each identity on one shared registry."""
    made = {}
    for name in names:
        identity = Identity(name, root / f"home-{name}", data_home)
        identity.cli("init", "--identity", name)
        made[name] = identity
    return made


def trust(truster: Identity, *others: Identity) -> None:
    """``truster`` trusts each of ``others`` (by their exported key)."""
    for other in others:
        key = other.home / "public.pem"
        key.write_text(other.cli("key", "export"))
        truster.cli("trust", "add", other.name, "--key", str(key))


# --- mounts -------------------------------------------------------------------------


@dataclass
class Mount:
    """A running mount daemon.

    Attributes:
        allowed_errors: substrings of ERROR log lines a test expects.
    """

    identity: Identity
    mountpoint: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    allowed_errors: list[str] = field(default_factory=list)

    def __truediv__(self, relative: str) -> Path:
        return self.mountpoint / relative

    def status(self) -> dict[str, Any]:
        """The root's ``user.dockercomms.status`` JSON."""
        status: dict[str, Any] = json.loads(os.getxattr(self.mountpoint, "user.dockercomms.status"))
        return status

    def refresh(self) -> None:
        """Poll the inbox now (returns when the poll is done)."""
        os.setxattr(self.mountpoint, "user.dockercomms.refresh", b"1")

    def log(self) -> str:
        """The daemon's log so far."""
        return self.log_path.read_text(errors="replace")


def mount_command(mountpoint: Path, *extra: str) -> list[str]:
    """The daemon command line (foreground, fast polls for tests)."""
    return [
        sys.executable,
        "-m",
        "dockercomms.fsmount",
        "mount",
        str(mountpoint),
        "--foreground",
        "--poll",
        "1",
        "--drain-timeout",
        "10",
        *extra,
    ]


@contextlib.contextmanager
def mounted(identity: Identity, mountpoint: Path, *extra: str) -> Iterator[Mount]:
    """Start a mount daemon; always stop it by PID and unmount, then check its log."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    log_path = mountpoint.parent / f"{mountpoint.name}-{uuid.uuid4().hex[:6]}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            mount_command(mountpoint, *extra),
            env=identity.env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    mount = Mount(identity, mountpoint, process, log_path)
    try:
        wait_until_mounted(mount)
        yield mount
    finally:
        stop(mount)
    check_log(mount)


@dataclass
class Started:
    """What ``dockercomms mount MOUNTPOINT`` (no ``--foreground``) said and returned."""

    code: int
    out: str
    err: str


@contextlib.contextmanager
def background_mount(identity: Identity, mountpoint: Path, *extra: str) -> Iterator[Started]:
    """``dockercomms mount`` as a user types it: it starts a daemon and returns.

    The daemons it leaves behind (new mount daemons of this identity) are stopped by
    PID in ``finally`` (they unmount on SIGTERM); a mount one of them left dead is
    cleared. A live mount there is never touched: it may be another test's.
    """
    before = mount_daemons(identity)
    command = [sys.executable, "-m", "dockercomms.cli", "mount", str(mountpoint), "--poll", "1"]
    done = subprocess.run(
        [*command, "--drain-timeout", "10", *extra],
        env=identity.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    started = mount_daemons(identity) - before
    try:
        yield Started(done.returncode, done.stdout, done.stderr)
    finally:
        started |= mount_daemons(identity) - before
        for pid in started:
            stop_pid(pid)
        if started and is_stale(mountpoint):
            unmount_quietly(mountpoint)


def mount_daemons(identity: Identity) -> set[int]:
    """PIDs of running mount daemons of ``identity`` (by command line and environment)."""
    found = set()
    home = f"DOCKERCOMMS_HOME={identity.home}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        daemon = b"dockercomms.fsmount" in argv and b"--foreground" in argv
        if daemon and home in environ and alive(int(entry.name)):
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """``pid`` runs (a zombie nobody reaped yet does not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z"


def stop_pid(pid: int) -> None:
    """SIGTERM a daemon that is not our child, wait for it to go, SIGKILL if it hangs."""
    for sig, patience in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + patience
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not alive(pid):
            return


def wait_until_mounted(mount: Mount) -> None:
    """Until the mount answers through its root xattr (or the daemon died)."""
    deadline = time.monotonic() + MOUNT_START_SECONDS
    while time.monotonic() < deadline:
        if mount.process.poll() is not None:
            raise AssertionError(f"mount daemon exited {mount.process.returncode}:\n{mount.log()}")
        with contextlib.suppress(OSError):
            mount.status()
            return
        time.sleep(0.05)
    raise AssertionError(f"mount did not come up:\n{mount.log()}")


def stop(mount: Mount) -> None:
    """SIGTERM by PID (the daemon drains and unmounts), SIGKILL if it hangs; unmount."""
    process = mount.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    unmount_quietly(mount.mountpoint)


def unmount_quietly(mountpoint: Path) -> None:
    """``fusermount3 -u`` if still mounted or stale; ``-uz`` if that fails."""
    if not (os.path.ismount(mountpoint) or is_stale(mountpoint)):
        return
    done = subprocess.run([FUSERMOUNT, "-u", str(mountpoint)], capture_output=True, check=False)
    if done.returncode != 0:
        subprocess.run([FUSERMOUNT, "-uz", str(mountpoint)], capture_output=True, check=False)


def is_stale(mountpoint: Path) -> bool:
    """``statfs`` says "Transport endpoint is not connected" (``stat`` may be cached)."""
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def check_log(mount: Mount) -> None:
    """No traceback, and no ERROR line the test did not expect."""
    bad = [
        line
        for line in mount.log().splitlines()
        if ("Traceback" in line or " ERROR " in line)
        and not any(allowed in line for allowed in mount.allowed_errors)
    ]
    assert not bad, "mount daemon logged errors:\n" + "\n".join(bad) + "\n\n" + mount.log()


def wait_for(
    what: str,
    check: Callable[[], Any],
    *,
    timeout: float = 60.0,
    poke: Callable[[], None] | None = None,
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if poke is not None:
            poke()
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


# --- seeding a big inbox ------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    """One message written by :func:`seed_inbox`."""

    filename: str
    size: int
    created_at: datetime
    digest: str


def seed_inbox(sender: Identity, recipient: str, count: int) -> list[Seeded]:
    """``count`` small signed messages from ``sender`` to ``recipient``.

    On the embedded registry, one ``index.json`` update tags them all. Over HTTP each
    message is tagged and its bundle attached as ``send`` does it, eight at a time.
    """
    workspace = sender.workspace()
    signer = workspace.signer()
    # One second apart, the last an hour ago: all in the past however many there are.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1, seconds=count)
    with workspace.client() as client:
        layers = {size: _chunk_layer(client, size) for size in range(1, 51)}

        def build(i: int) -> tuple[Seeded, bytes, str]:
            size = i % 50 + 1
            created = start + timedelta(seconds=i)
            filename = f"note-{i:04d}.txt"
            message_id = p.new_message_id()
            annotations = m.message_annotations(
                sender=sender.name,
                recipient=recipient,
                created_at=created,
                ttl_seconds=p.DEFAULT_TTL_SECONDS,
                message_id=message_id,
                filename=filename,
                total_bytes=size,
                chunk_bytes=size,
                chunk_count=1,
                compression="zstd",
            )
            raw = m.build_message(annotations, [layers[size]])
            digest = p.sha256_digest(raw)
            tag = p.message_tag(recipient, created, p.new_message_id(), message_id)
            return Seeded(filename, size, created, digest), raw, tag

        built = [build(i) for i in range(count)]
        if client.ref.layout_dir is None:
            push_empty_config(client)
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda one: _push_over_http(workspace, signer, *one), built))
        else:
            _seed_layout(client, signer, sender.layout, built)
    return [seeded for seeded, _, _ in built]


def _push_over_http(
    workspace: Workspace, signer: DigestSigner, seeded: Seeded, raw: bytes, tag: str
) -> None:
    with workspace.client() as client:
        client.push_manifest(raw, tag)
        subject = m.Descriptor(p.OCI_MANIFEST, seeded.digest, len(raw))
        attach_bundle(client, subject, signer.sign_digest(seeded.digest))


def _seed_layout(
    client: RegistryClient,
    signer: DigestSigner,
    layout: Path,
    built: list[tuple[Seeded, bytes, str]],
) -> None:
    descriptors: list[dict[str, Any]] = []
    for seeded, raw, tag in built:
        client.push_blob_bytes(raw, p.OCI_MANIFEST)
        descriptors.append(_index_entry(raw, tag, p.MESSAGE_ARTIFACT_TYPE))
        bundle = client.push_blob_bytes(signer.sign_digest(seeded.digest), p.BUNDLE_MEDIA_TYPE)
        bundle_raw = m.build_bundle_manifest(
            m.Descriptor(p.OCI_MANIFEST, seeded.digest, len(raw)), bundle
        )
        client.push_blob_bytes(bundle_raw, p.OCI_MANIFEST)
        descriptors.append(
            _index_entry(bundle_raw, p.bundle_tag(seeded.digest), p.BUNDLE_MEDIA_TYPE)
        )
    _append_to_index(layout, descriptors)


def _append_to_index(layout: Path, descriptors: list[dict[str, Any]]) -> None:
    """Add descriptors to the OCI layout's ``index.json`` under the registry's own lock."""
    index_path = layout / "index.json"
    with filelock.FileLock(layout / "index.json.lock"):
        index = json.loads(index_path.read_bytes())
        index["manifests"] = [*index["manifests"], *descriptors]
        staged = layout / f".seed-{uuid.uuid4().hex}.json"
        staged.write_text(json.dumps(index, separators=(",", ":")))
        os.replace(staged, index_path)


def _chunk_layer(client: RegistryClient, size: int) -> m.Descriptor:
    """The one-chunk layer for :func:`seeded_content` of ``size`` bytes."""
    with tempfile.TemporaryFile() as handle:
        handle.write(seeded_content(size))
        handle.flush()
        blob = b"".join(layer_stream(handle.fileno(), ChunkSpan(0, 0, size), "zstd"))
    pushed = client.push_blob_bytes(blob, p.CHUNK_MEDIA_TYPES["zstd"])
    return m.Descriptor(pushed.media_type, pushed.digest, pushed.size, {p.A_CHUNK_INDEX: "0"})


def _index_entry(raw: bytes, tag: str, artifact_type: str) -> dict[str, Any]:
    return {
        "mediaType": p.OCI_MANIFEST,
        "digest": p.sha256_digest(raw),
        "size": len(raw),
        "artifactType": artifact_type,
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }


def seeded_content(size: int) -> bytes:
    """What a seeded message of ``size`` bytes contains."""
    return bytes((65 + i % 26) for i in range(size))
