"""Sealed send (SPEC 9) of a large random file: against a plaintext send, and to 5 recipients.

Floors (same run, same file, same embedded registry, right before the sealed
sends): ``send --plaintext`` to one recipient. Targets (issue 11): a sealed send
<= 1.3x the plaintext one; a sealed send to 5 recipients <= 1.15x a sealed send to
one (the chunks are sealed and uploaded once; only a manifest, a signature and
a tag are added per recipient); peak RSS <= 150 MiB. Each send has new content,
so the registry never already holds its chunks.

The age keys are given to the trust file directly (as ``trust add --card``
would), so the suite needs no card exchange.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bench.engine import dockercomms
from bench.measure import MIB, Series, make_random, report, run_process, settle
from dockercomms.core.age_keys import create_identity_file, load_identity_file
from dockercomms.core.paths import resolve_paths
from dockercomms.core.trust import Contact, TrustPolicy

TARGET_SEALED_RATIO = 1.3
TARGET_FANOUT_RATIO = 1.15
TARGET_RSS_MIB = 150
RECIPIENTS = tuple(f"peer{i}" for i in range(1, 6))


def _env(work: Path, name: str) -> dict[str, str]:
    return {**os.environ, "DOCKERCOMMS_HOME": str(work / name), "XDG_DATA_HOME": str(work / "data")}


def _age_recipient(env: dict[str, str]) -> str:
    path = resolve_paths(env).age_identity_file
    if not path.exists():
        create_identity_file(path)
    return load_identity_file(path).recipient


def identities(work: Path) -> dict[str, str]:
    """alice, who trusts and knows the age keys of five peers; alice's environment."""
    alice = _env(work, "alice")
    subprocess.run(
        dockercomms("init", "--identity", "alice"), env=alice, check=True, capture_output=True
    )
    trust_file = resolve_paths(alice).trust_file
    _age_recipient(alice)
    for name in RECIPIENTS:
        peer = _env(work, name)
        subprocess.run(
            dockercomms("init", "--identity", name), env=peer, check=True, capture_output=True
        )
        policy = TrustPolicy.load(trust_file)
        policy.set_contact(Contact(name, age_recipient=_age_recipient(peer), source="manual"))
        policy.save(trust_file)
    return alice


def run(work: Path, size: int, runs: int) -> list[str]:
    """The sealed suite; returns report lines."""
    lines = [f"sealed suite: {size // MIB} MiB random, {runs} runs each, embedded registry"]
    alice = identities(work)
    plain = Series("send --plaintext, 1 recipient", size)
    sealed = Series("send sealed, 1 recipient", size)
    fanout = Series(f"send sealed, {len(RECIPIENTS)} recipients", size)
    one = ["-r", RECIPIENTS[0]]
    every = [word for name in RECIPIENTS for word in ("-r", name)]
    cases = ((plain, [*one, "--plaintext"]), (sealed, one), (fanout, every))
    for n in range(runs):
        for series, extra in cases:
            source = make_random(work / "random.bin", size, n)
            settle(work, size)
            series.samples.append(run_process(dockercomms("send", str(source), *extra), env=alice))
            source.unlink()
    lines += [
        report(plain),
        report(sealed, plain, target=TARGET_SEALED_RATIO),
        "  "
        + report(fanout, sealed, target=TARGET_FANOUT_RATIO).replace(
            "floor", "sealed 1-recipient", 1
        ),
    ]
    for series in (plain, sealed, fanout):
        verdict = "OK" if series.median_rss <= TARGET_RSS_MIB * MIB else "MISSED"
        lines.append(f"  {series.name}: peak RSS target <= {TARGET_RSS_MIB} MiB: {verdict}")
    return lines
