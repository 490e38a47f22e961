"""Run a real distribution 2.8 registry (``/usr/bin/docker-registry``) for tests.

Caveats first:

* One registry per ``workdir`` at a time. Starting again on the same ``workdir`` reuses
  its storage (handy for restart tests); the log file is appended to.
* The config is written as JSON, which YAML parsers (distribution's included) accept.
* ``REGISTRY_*`` variables are removed from the child environment: distribution lets
  them override any config key, and a stray one would silently change the fixture.
  So are ``AWS_*``: its S3 driver panics on ``AWS_CA_BUNDLE`` ("unable to load custom
  CA bundle, HTTPClient's transport unsupported type").
* The free port is found by binding port 0 and closing it, so another process may grab
  it first; start-up is retried on "address already in use".
* distribution builds absolute ``Location`` URLs from the request's ``Host`` header
  (or ``X-Forwarded-Host``/``-Proto``); behind a proxy that keeps ``Host``, they point
  at the proxy.
* htpasswd auth accepts bcrypt hashes only (``$2y$``/``$2b$``); this module needs the
  ``bcrypt`` package for it.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.servers.token_server import TokenServer

REGISTRY_BINARY = Path("/usr/bin/docker-registry")
START_DEADLINE = 10.0
STOP_GRACE = 5.0
PORT_ATTEMPTS = 5

AuthMode = Literal["none", "htpasswd", "token"]


@dataclass
class RegistryServer:
    """A running registry process.

    Attributes:
        url: base URL, ``http://127.0.0.1:PORT`` or ``https://127.0.0.1:PORT``.
        host: ``127.0.0.1:PORT`` (what goes into image references).
        pid: process ID; the process is reaped by ``stop()``, after which
            ``os.kill(pid, 0)`` raises ``ProcessLookupError``.
        root: storage root directory (``storage.filesystem.rootdirectory``).
        ca_file: PEM CA bundle that verifies the server certificate (``tls=True`` only).
        username: user for htpasswd or token auth, else ``None``.
        password: that user's password, else ``None``.
        config_path: the config file the registry was started with.
        log_path: stdout/stderr of the registry (log level ``warn``).
        token_server: the token server in ``auth="token"`` mode, else ``None``.
    """

    url: str
    host: str
    pid: int
    root: Path
    ca_file: Path | None
    username: str | None
    password: str | None
    config_path: Path
    log_path: Path
    token_server: TokenServer | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def auth(self) -> tuple[str, str] | None:
        """``(username, password)`` for ``requests``' ``auth=``, or ``None``."""
        if self.username is None or self.password is None:
            return None
        return self.username, self.password

    @property
    def verify(self) -> str | bool:
        """Value for ``requests``' ``verify=``: the CA file with TLS, else ``True``."""
        return str(self.ca_file) if self.ca_file is not None else True

    def is_running(self) -> bool:
        """Whether the process has not exited yet."""
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """SIGTERM the process by PID, wait, SIGKILL after a grace period. Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        _terminate(process)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


# -- TLS material ------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of a throw-away CA and a server certificate it signed."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def generate_tls_files(
    directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
) -> TLSFiles:
    """Write a test CA and a server certificate for ``hosts`` (IPs become IP SANs)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dockercomms test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key_file.chmod(0o600)
    return files


# -- config ------------------------------------------------------------------------------


def write_htpasswd(path: Path, username: str, password: str) -> None:
    """Write an htpasswd file with a bcrypt entry (the only scheme distribution accepts)."""
    import bcrypt  # test dependency; imported lazily so other modes work without it

    # Cost 4 (the minimum) keeps each authenticated request cheap for the registry.
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"{username}:{hashed}\n")
    path.chmod(0o600)


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into ``base``; ``None`` removes a key (another driver)."""
    for key, value in overrides.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _read_log(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _wait_ready(
    process: subprocess.Popen[bytes], url: str, verify: str | bool, expect: int
) -> str | None:
    """Poll ``GET /v2/`` until it answers ``expect``; return why not, or ``None``."""
    deadline = time.monotonic() + START_DEADLINE
    last = "no answer"
    with requests.Session() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return f"registry exited with status {process.returncode}"
            try:
                with session.get(f"{url}/v2/", verify=verify, timeout=1) as resp:
                    if resp.status_code == expect:
                        return None
                    last = f"GET /v2/ answered {resp.status_code}, expected {expect}"
            except requests.RequestException as exc:
                last = f"GET /v2/ failed: {exc}"
            time.sleep(0.05)
    return f"not ready after {START_DEADLINE:.0f} s ({last})"


@contextmanager
def running_registry(
    workdir: Path,
    *,
    auth: AuthMode = "none",
    tls: bool = False,
    token_server: TokenServer | None = None,
    config_overrides: Mapping[str, Any] | None = None,
) -> Iterator[RegistryServer]:
    """Run ``docker-registry serve`` on 127.0.0.1 for the duration of the block.

    ``auth="token"`` uses ``token_server`` (which the caller starts and stops) or, if it
    is ``None``, starts a default :class:`TokenServer` and shuts it down afterwards.
    ``config_overrides`` is deep-merged into the generated config (e.g.
    ``{"storage": {"maintenance": {"readonly": {"enabled": True}}}}``); a ``None``
    value removes that key (``{"storage": {"filesystem": None, "s3": {...}}}``).
    """
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "data"
    root.mkdir(exist_ok=True)
    log_path = workdir / "registry.log"
    config_path = workdir / "config.yml"

    with ExitStack() as stack:
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {
                "level": "warn",
                "formatter": "text",
                "accesslog": {"disabled": True},
                "fields": {"service": "registry"},
            },
            "storage": {
                "filesystem": {"rootdirectory": str(root)},
                "delete": {"enabled": True},
                # Upload purging would scan storage at start-up; nothing here is old.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            # A fixed secret avoids the "No HTTP secret provided" warning; it signs the
            # upload ``_state`` parameter.
            "http": {"addr": "", "secret": secrets.token_hex(16)},
        }
        username: str | None = None
        password: str | None = None
        expect = 200
        if auth == "htpasswd":
            username, password = "tester", secrets.token_urlsafe(12)
            htpasswd = workdir / "htpasswd"
            write_htpasswd(htpasswd, username, password)
            config["auth"] = {"htpasswd": {"realm": "dockercomms-test", "path": str(htpasswd)}}
            expect = 401
        elif auth == "token":
            if token_server is None:
                token_server = stack.enter_context(TokenServer())
            username, password = token_server.username, token_server.password
            bundle = workdir / "token-root.pem"
            bundle.write_bytes(token_server.certificate_pem)
            config["auth"] = {
                "token": {
                    "realm": token_server.realm,
                    "service": token_server.service,
                    "issuer": token_server.issuer,
                    "rootcertbundle": str(bundle),
                }
            }
            expect = 401
        elif auth != "none":
            raise ValueError(f"unknown auth mode {auth!r}")
        ca_file: Path | None = None
        if tls:
            files = generate_tls_files(workdir / "tls")
            ca_file = files.ca_file
            config["http"]["tls"] = {
                "certificate": str(files.cert_file),
                "key": str(files.key_file),
            }
        if config_overrides:
            _merge(config, config_overrides)

        env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "AWS_"))}
        scheme = "https" if tls else "http"
        verify: str | bool = str(ca_file) if ca_file is not None else True
        failures: list[str] = []
        for _attempt in range(PORT_ATTEMPTS):
            port = _free_port()
            config["http"]["addr"] = f"127.0.0.1:{port}"
            config_path.write_text(json.dumps(config, indent=2) + "\n")
            log_offset = log_path.stat().st_size if log_path.exists() else 0
            with log_path.open("ab") as log_file:
                process = subprocess.Popen(
                    [str(REGISTRY_BINARY), "serve", str(config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=workdir,
                    start_new_session=True,
                )
            server = RegistryServer(
                url=f"{scheme}://127.0.0.1:{port}",
                host=f"127.0.0.1:{port}",
                pid=process.pid,
                root=root,
                ca_file=ca_file,
                username=username,
                password=password,
                config_path=config_path,
                log_path=log_path,
                token_server=token_server,
                _process=process,
            )
            try:
                problem = _wait_ready(process, server.url, verify, expect)
            except BaseException:
                server.stop()
                raise
            if problem is None:
                break
            server.stop()
            log = _read_log(log_path, log_offset)
            if "address already in use" not in log:
                raise RuntimeError(
                    f"registry did not start: {problem}\n--- registry log ---\n{log}"
                )
            failures.append(f"port {port}: {problem}")
        else:
            raise RuntimeError("registry did not start, ports taken: " + "; ".join(failures))

        try:
            yield server
        finally:
            server.stop()
