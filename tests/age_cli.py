"""The stock ``age`` tool (Debian's ``age`` package), for interoperability tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pyrage


def tool(name: str) -> str:
    """The path of ``age`` or ``age-keygen``; fails with the fix when missing."""
    path = shutil.which(name)
    assert path, f"{name} is missing: run scripts/install-system-packages.sh (Debian's 'age')"
    return path


def run(*args: str, data: bytes = b"") -> bytes:
    """Run the stock ``age`` with ``args``, feeding ``data``; its stdout, or a failure."""
    done = subprocess.run(
        [tool("age"), *args], input=data, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"age {' '.join(args)}: {done.stderr.decode(errors='replace')}"
    return done.stdout


def encrypt(data: bytes, recipients: list[str]) -> bytes:
    """``age -r R1 -r R2 …`` of ``data``."""
    return run(*(word for r in recipients for word in ("-r", r)), data=data)


def decrypt(sealed: bytes, identity_file: Path) -> bytes:
    """``age -d -i FILE`` of ``sealed``."""
    return run("-d", "-i", str(identity_file), data=sealed)


class CountingDecrypt:
    """Wraps the real ``pyrage.decrypt_io`` to count calls (work done before a refusal)."""

    def __init__(self) -> None:
        self.calls = 0
        self._real = pyrage.decrypt_io

    def __call__(self, *args: object) -> None:
        self.calls += 1
        self._real(*args)
