"""The import contract: one-way layers, and nothing outside core reaches past its face.

An ast walk over every module of the shipped packages (no import is run):

* ``fsmount``, ``syncer`` and ``cli`` import nothing from ``dockercomms.core._internal``
  and no name that starts with ``_`` from any ``dockercomms.core`` module;
* the layers go one way, cli -> fsmount -> syncer -> core: core imports none of
  the others, syncer neither fsmount nor cli, fsmount not cli (an entry point,
  ``__main__.py``, may wire the layers together).

Tests may import anything.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "syncer", "fsmount", "cli")
#: What each package may not import at all (besides the face rule).
FORBIDDEN = {
    "core": ("dockercomms.syncer", "dockercomms.fsmount", "dockercomms.cli"),
    "syncer": ("dockercomms.fsmount", "dockercomms.cli"),
    "fsmount": ("dockercomms.cli",),
    "cli": (),
}
PRIVATE = "dockercomms.core._internal"


def imports(path: Path, root: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, names) of every import in ``path``, relative ones resolved."""
    package = "dockercomms." + ".".join(path.relative_to(root).parent.parts)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            yield node.lineno, module, [alias.name for alias in node.names]


def violations(package: str, root: Path = ROOT) -> list[str]:
    """Every import in ``package`` that breaks the contract, as ``file:line: what``."""
    found = []
    for path in sorted((root / package).rglob("*.py")):
        where = path.relative_to(root)
        for line, module, names in imports(path, root):
            full = [module, *(f"{module}.{name}" for name in names)]
            if package != "core" and any(m == PRIVATE or m.startswith(PRIVATE + ".") for m in full):
                found.append(f"{where}:{line}: reaches past core's face ({module})")
            elif package != "core" and module.startswith("dockercomms.core"):
                hidden = [name for name in names if name.startswith("_")]
                if hidden:
                    found.append(f"{where}:{line}: private names {hidden} from {module}")
            if path.name != "__main__.py" and module.startswith(FORBIDDEN[package]):
                found.append(f"{where}:{line}: {package} imports {module} (layers go one way)")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_reaches_past_the_face_or_up_a_layer(package: str) -> None:
    assert violations(package) == []


def test_the_contract_catches_what_it_forbids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module that breaks every rule is caught on each count (the walk works)."""
    fake = tmp_path / "fsmount"
    fake.mkdir()
    (fake / "bad.py").write_text(
        "from dockercomms.core._internal.registry.client import RegistryClient\n"
        "from dockercomms.core import _internal\n"
        "from dockercomms.core.status import _size\n"
        "import dockercomms.cli.main\n"
    )
    found = violations("fsmount", tmp_path)
    assert len(found) == 4, found
