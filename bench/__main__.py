"""Run the benchmark suites and print medians and ratios against same-run floors.

Usage::

    python -m bench [--suite engine|registry|mount|storage|sealed|sealed-recv|inbox|all]
                    [--size-mib 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import compileall
import importlib
import shutil
import tempfile
from pathlib import Path

from bench import engine, inbox, mount, registry, sealed, sealed_recv, storage
from bench.measure import MIB

SUITES = {
    "engine": engine.run,
    "registry": registry.run,
    "mount": mount.run,
    "storage": storage.run,
    "sealed": sealed.run,
    "sealed-recv": sealed_recv.run,
    "inbox": inbox.run,
}


def compile_bytecode() -> None:
    """Compile dockercomms' modules, as ``pip install`` does.

    An editable checkout run with ``PYTHONDONTWRITEBYTECODE`` (set on this
    machine) recompiles every module at every CLI start, ~0.1 s per command that
    an installed copy never pays. The bytecode lands in ``__pycache__`` (ignored).
    """
    for name in ("core", "cli", "fsmount", "syncer"):
        package = importlib.import_module(f"dockercomms.{name}")
        for folder in package.__path__:
            compileall.compile_dir(folder, quiet=1)


def main() -> None:
    """Parse flags, run the chosen suites in a scratch folder, print the report."""
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--suite", choices=[*SUITES, "all"], default="all")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--work", type=Path, help="scratch folder (default: a temp dir on /var/tmp)"
    )
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="dockercomms-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    compile_bytecode()
    try:
        for name, suite in SUITES.items():
            if args.suite in (name, "all"):
                for line in suite(work / name, args.size_mib * MIB, args.runs):
                    print(line, flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
