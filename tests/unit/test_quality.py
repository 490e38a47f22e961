"""Code checks as tests: ruff (lint + format) everywhere, mypy --strict on every package.

mypy checks the package as it ships: the project maps ``dockercomms.core`` and
friends to the top-level ``core/``... folders (setuptools ``package-dir``), which
an editable install serves through an import hook mypy cannot follow. So the
packages are built with setuptools' own ``build_py`` (from a copy of the
sources, so the worktree gets no ``build/``) into a temporary tree, mypy runs
there on ``-p dockercomms``, and the paths it reports are mapped back to the
source files.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*command: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_ruff_lint() -> None:
    run(sys.executable, "-m", "ruff", "check", ".")


def test_ruff_format() -> None:
    run(sys.executable, "-m", "ruff", "format", "--check", ".")


def package_dirs() -> dict[str, str]:
    """``dockercomms.core`` -> ``core`` and so on, as pyproject.toml maps them."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return dict(setuptools["package-dir"])


def build_as_shipped(tmp_path: Path) -> Path:
    """The ``dockercomms`` packages laid out as an install has them; the tree's root."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for folder in package_dirs().values():
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    built = tmp_path / "built"
    script = (
        "import sys, setuptools; "
        f"sys.argv = ['setup.py', '-q', 'build_py', '--build-lib', {str(built)!r}]; "
        "setuptools.setup()"
    )
    run(sys.executable, "-W", "ignore", "-c", script, cwd=source)
    return built


def to_source(report: str) -> str:
    """mypy's ``dockercomms/core/x.py:3: error`` lines, as ``core/x.py:3: error``."""
    mapping = {pkg.replace(".", "/") + "/": folder + "/" for pkg, folder in package_dirs().items()}
    pattern = re.compile("|".join(re.escape(p) for p in sorted(mapping, key=len, reverse=True)))
    return pattern.sub(lambda match: mapping[match.group(0)], report)


@pytest.mark.slow
def test_mypy_strict_on_every_package(tmp_path: Path) -> None:
    if shutil.which("mypy") is None and not _has_module("mypy"):
        pytest.fail("mypy is not installed; install the project with its [test] extra")
    built = build_as_shipped(tmp_path)
    command = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(ROOT / "pyproject.toml"),
        "--cache-dir",
        str(tmp_path / "mypy-cache"),
        "-p",
        "dockercomms",
    ]
    result = subprocess.run(
        command,
        cwd=built,
        capture_output=True,
        text=True,
        env={"MYPYPATH": str(built), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, to_source(result.stdout + result.stderr)
    # Every module that ships was checked: the count mypy reports is all of them.
    checked = re.search(r"in (\d+) source files", result.stdout)
    shipped = sum(1 for _ in built.rglob("*.py"))
    assert checked is not None and int(checked.group(1)) >= shipped, result.stdout


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
