"""The code checks CI runs as tests: ruff (lint + format) everywhere, mypy --strict on core."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*command: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"


def test_ruff_lint() -> None:
    run(sys.executable, "-m", "ruff", "check", ".")


def test_ruff_format() -> None:
    run(sys.executable, "-m", "ruff", "format", "--check", ".")


@pytest.mark.slow
def test_mypy_strict_core(tmp_path: Path) -> None:
    """mypy cannot follow the editable install's import hook, so give it a real tree."""
    if shutil.which("mypy") is None and not _has_module("mypy"):
        pytest.fail("mypy is not installed; install the project with its [test] extra")
    package = tmp_path / "dockercomms"
    package.mkdir()
    (package / "core").symlink_to(ROOT / "core")
    run(
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(ROOT / "pyproject.toml"),
        "--cache-dir",
        str(tmp_path / "mypy-cache"),
        "-p",
        "dockercomms.core",
        cwd=tmp_path,
        env={"MYPYPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
