"""A local S3 endpoint for tests: ``moto`` in server mode on 127.0.0.1.

Caveats first:

* moto is started as its own process (``python -m moto.server -p 0``) and reports the
  port it bound in its first log lines; the fixture reads it from there, so there is
  no race for a free port. It is stopped by PID (SIGTERM, then SIGKILL) in ``finally``.
* Its environment has no ``AWS_*``, proxy or CA-bundle variables: the endpoint is
  plain HTTP on loopback, and nothing of the developer's AWS set-up may leak in.
* IAM authentication starts off (moto's default), so any key pair is accepted. The
  fixture creates a real user and access key anyway; :meth:`S3Server.authentication`
  switches moto's signature and key checks on for a block (``/moto-api/reset-auth``).
  With it on, OpenDAL's listings fail even with the right key (moto re-canonicalises
  an unencoded ``/`` in the query wrongly; see ``core/_internal/registry/storage/s3.py``), so
  only refused-credential checks run with it on.
* Buckets and objects live in moto's memory and die with the process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import requests

START_DEADLINE = 60.0
"""moto imports a lot (~3 s here, much more on a busy machine); it says when it listens."""
STOP_GRACE = 5.0
REGION = "us-east-1"
_LISTENING = re.compile(rb"Running on http://127\.0\.0\.1:(\d+)")
_DROPPED_PREFIXES = ("AWS_", "REGISTRY_")
_DROPPED = frozenset(
    {
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    }
)


@dataclass
class S3Server:
    """A running moto server.

    Attributes:
        endpoint: ``http://127.0.0.1:PORT``.
        pid: its process ID (stopped and reaped by :meth:`stop`).
        access_key: an access key of a moto IAM user allowed everything.
        secret_key: that key's secret.
        log_path: moto's stdout and stderr.
    """

    endpoint: str
    pid: int
    access_key: str
    secret_key: str
    log_path: Path
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def client(self, service: str = "s3", *, secret: str | None = None) -> object:
        """A boto3 client for this endpoint (the test's own view of the bucket)."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret or self.secret_key,
        )

    def create_bucket(self, name: str) -> None:
        """Create a bucket (idempotent for the test's purposes)."""
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` in ``bucket``."""
        s3 = self.client()
        found: list[str] = []
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)  # type: ignore[attr-defined]
        for page in pages:
            found += [item["Key"] for item in page.get("Contents", [])]
        return found

    @contextmanager
    def authentication(self) -> Iterator[None]:
        """moto checks signatures and keys inside the block (and accepts anything after)."""
        self._reset_auth("0")
        try:
            yield
        finally:
            self._reset_auth("inf")

    def _reset_auth(self, count: str) -> None:
        response = requests.post(
            f"{self.endpoint}/moto-api/reset-auth",
            data=count.encode(),
            headers={"Content-Type": "application/octet-stream"},
            timeout=10,
        )
        response.raise_for_status()

    def stop(self) -> None:
        """SIGTERM by PID, wait, SIGKILL after a grace period. Idempotent."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def plain_environment() -> dict[str, str]:
    """The environment for loopback plain-HTTP helpers: no AWS, proxy or CA settings."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in _DROPPED and not key.startswith(_DROPPED_PREFIXES)
    }


@contextmanager
def running_s3(workdir: Path) -> Iterator[S3Server]:
    """Run moto's S3 (and IAM) on 127.0.0.1 for the duration of the block."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "moto.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=plain_environment(),
            cwd=workdir,
            start_new_session=True,
        )
    server = S3Server("", process.pid, "", "", log_path, process)
    try:
        server.endpoint = f"http://127.0.0.1:{_wait_for_port(process, log_path)}"
        server.access_key, server.secret_key = _make_user(server)
        yield server
    finally:
        server.stop()


def _wait_for_port(process: subprocess.Popen[bytes], log_path: Path) -> int:
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        match = _LISTENING.search(log_path.read_bytes())
        if match:
            return int(match.group(1))
        if process.poll() is not None:
            break
        time.sleep(0.05)
    log = log_path.read_text(errors="replace")
    raise RuntimeError(f"moto did not start (exit {process.poll()}):\n{log}")


def _make_user(server: S3Server) -> tuple[str, str]:
    """An IAM user with an allow-all policy and an access key (made while auth is off)."""
    iam = server.client("iam")
    iam.create_user(UserName="tester")  # type: ignore[attr-defined]
    policy = iam.create_policy(  # type: ignore[attr-defined]
        PolicyName="everything",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
            }
        ),
    )
    iam.attach_user_policy(UserName="tester", PolicyArn=policy["Policy"]["Arn"])  # type: ignore[attr-defined]
    key = iam.create_access_key(UserName="tester")["AccessKey"]  # type: ignore[attr-defined]
    return key["AccessKeyId"], key["SecretAccessKey"]
