"""CLI start-up: a command imports only what it uses.

``send`` and ``recv`` are timed against a one-second floor, and FUSE, trio, the
syncer, rich and sigstore together cost most of that second before a byte moves.
Each check runs in a fresh interpreter (this test process has imported all of
them already) and lists what ``sys.modules`` holds afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Party

#: Never needed by a key-pair identity sending, receiving or checking messages.
HEAVY = ("pyfuse3", "trio", "sigstore", "sigstore_models", "rich", "watchdog", "jeepney")

#: Runs each JSON-encoded argv through ``main()`` and prints one JSON document:
#: the exit codes, each command's stdout, and every module loaded by then.
RUNNER = """\
import contextlib, io, json, sys
from dockercomms.cli.main import main

codes, outputs = [], []
for argv in sys.argv[1:]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        codes.append(main(json.loads(argv)))
    outputs.append(out.getvalue())
print(json.dumps({"codes": codes, "outputs": outputs, "modules": sorted(sys.modules)}))
"""

PARSER_ONLY = """\
import json, sys
before = set(sys.modules)
from dockercomms.cli.main import build_parser
build_parser().parse_args(["send", "f.txt", "-r", "bob"])
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def fresh_python(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run ``script`` in a new interpreter; its stdout (exit 0 required)."""
    environ = {**os.environ, **(env or {})}
    # Under the journal the CLI loads sdnotify (and trio) for its log format, rightly.
    environ.pop("JOURNAL_STREAM", None)
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_commands(party: Party, *commands: list[str]) -> tuple[list[str], set[str]]:
    """Run ``commands`` as ``party`` in one fresh process; their stdouts and the modules."""
    result = json.loads(fresh_python(RUNNER, *map(json.dumps, commands), env=party.env))
    assert result["codes"] == [0] * len(commands), result["outputs"]
    return result["outputs"], set(result["modules"])


def heavy_in(modules: set[str]) -> list[str]:
    """The heavy packages (or any of their submodules) among ``modules``."""
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_building_the_parser_imports_only_the_standard_library() -> None:
    """Every call builds the whole command tree: it must not load any third-party package."""
    loaded = json.loads(fresh_python(PARSER_ONLY))
    third_party = sorted(
        m for m in loaded if m.split(".")[0] not in sys.stdlib_module_names | {"dockercomms"}
    )
    assert third_party == []


def test_key_pair_send_and_recv_load_no_heavy_module(
    embedded_pair: tuple[Party, Party], tmp_path: Path
) -> None:
    """A real send, then recv, ls, verify and ack, each side in its own process."""
    alice, bob = embedded_pair
    note = tmp_path / "note.txt"
    note.write_bytes(b"x" * 1024)
    (sent,), alice_modules = run_commands(alice, ["send", str(note), "-r", "bob", "--json"])
    digest = json.loads(sent)["digest"]
    assert heavy_in(alice_modules) == []

    outputs, bob_modules = run_commands(
        bob,
        ["recv", "--out", str(tmp_path / "out"), "--json"],
        ["ls"],
        ["verify", "--digest", digest, "--chunks"],
        ["ack", "--for", digest, "--status", "accepted"],
    )
    assert [r["status"] for r in json.loads(outputs[0])] == ["received"]
    assert (tmp_path / "out" / "note.txt").read_bytes() == note.read_bytes()
    assert heavy_in(bob_modules) == []
