"""send and recv of a large file through the embedded registry, against a local-disk floor.

Floor (measured in the same run, same disk, right before each send/recv pair):
``cp`` of the file plus sha256 of it, which is the least any verified copy must
do. Every timed step starts from the same settled state (see ``settle``).
Targets (issue 2): send and recv each <= 2x the floor for random data; peak RSS
<= 150 MiB.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.measure import (
    MIB,
    Sample,
    Series,
    fsync_file,
    make_compressible,
    make_random,
    report,
    run_process,
    settle,
    sha256_file,
    time_call,
)

TARGET_RATIO = 2.0
TARGET_RSS_MIB = 150


def dockercomms(*args: str) -> list[str]:
    """The command line for one CLI call (same interpreter as the benchmark)."""
    return [sys.executable, "-m", "dockercomms.cli", *args]


def identities(work: Path, repo: str | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """alice and bob, trusting each other, on ``repo`` or an embedded registry in ``work``."""
    where = ["--repo", repo] if repo else []
    envs = []
    for name in ("alice", "bob"):
        env = {
            **os.environ,
            "DOCKERCOMMS_HOME": str(work / name),
            "XDG_DATA_HOME": str(work / "data"),
        }
        subprocess.run(
            dockercomms("init", "--identity", name, *where),
            env=env,
            check=True,
            capture_output=True,
        )
        envs.append(env)
    alice, bob = envs
    for env, other, other_env in ((alice, "bob", bob), (bob, "alice", alice)):
        pem = subprocess.run(
            dockercomms("key", "export"), env=other_env, check=True, capture_output=True
        ).stdout
        key = work / f"{other}.pub"
        key.write_bytes(pem)
        subprocess.run(
            dockercomms("trust", "add", other, "--key", str(key)),
            env=env,
            check=True,
            capture_output=True,
        )
    return alice, bob


def floor_sample(source: Path, work: Path, size: int) -> tuple[Sample, Sample]:
    """cp + sha256 of the same file, same disk; and the same plus fsync of the copy.

    The second is not the target's floor; it shows what the durable write that
    ``recv`` must do (fsync before rename) costs on this disk.
    """
    target = work / "floor-copy"
    settle(work, size)
    copy = run_process(["cp", str(source), str(target)])
    digest = time_call(lambda: sha256_file(source))
    synced = fsync_file(target)
    target.unlink()
    plain = copy.seconds + digest.seconds
    return Sample(plain, 0), Sample(plain + synced.seconds, 0)


def run(work: Path, size: int, runs: int) -> list[str]:
    """The engine suite; returns report lines.

    Each run uses new file content (so the registry never already holds its
    chunks) and measures its floor right before its send and recv, every timed
    step starting from a settled page cache.
    """
    lines = [f"engine suite: {size // MIB} MiB, {runs} runs each, embedded registry in {work}"]
    alice, bob = identities(work)
    for kind, make in (("random", make_random), ("compressible", make_compressible)):
        base = Series("floor: cp + sha256", size)
        durable = Series("floor: cp + sha256 + fsync", size)
        send = Series(f"send {kind}", size)
        recv = Series(f"recv {kind}", size)
        for n in range(runs):
            source = make(work / f"{kind}.bin", size, n)
            plain, synced = floor_sample(source, work, size)
            base.samples.append(plain)
            durable.samples.append(synced)
            out = work / f"out-{kind}-{n}"
            settle(work, size)
            send.samples.append(
                run_process(dockercomms("send", str(source), "-r", "bob"), env=alice)
            )
            settle(work, size)
            recv.samples.append(
                run_process(dockercomms("recv", "--out", str(out), "--no-write-receipt"), env=bob)
            )
            received = out / source.name
            if received.stat().st_size != size:
                raise RuntimeError(f"received {received} has the wrong size")
            shutil.rmtree(out)
            source.unlink()
        target = TARGET_RATIO if kind == "random" else None
        lines += [
            report(base),
            report(durable),
            report(send, base, target=target),
            report(recv, base, target=target),
            "  " + report(recv, durable).replace(recv.name, f"{recv.name} vs fsync floor", 1),
        ]
        for series in (send, recv):
            ok = series.median_rss <= TARGET_RSS_MIB * MIB
            verdict = "OK" if ok else "MISSED"
            lines.append(f"  {series.name}: peak RSS target <= {TARGET_RSS_MIB} MiB: {verdict}")
        shutil.rmtree(work / "data", ignore_errors=True)
    return lines
