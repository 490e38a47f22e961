"""send/recv through distribution's storage with no server, against same-run floors (#12).

Two pairs, each timed in the same run, alternating, from a settled page cache:

* filesystem: ``storage:NAME`` on a filesystem root against the embedded OCI-layout
  store on the same disk. Target: each <= 1.2x the OCI-layout store.
* S3: ``storage:NAME`` on a moto bucket (127.0.0.1) against the same transfer through
  ``docker-registry`` serving that bucket with its ``s3`` driver (its defaults:
  blobs served by redirect to S3). The registry's own cost is the floor. Target:
  each <= 1.2x the registry.

Random data (stored, not compressed), so the transfer dominates; the bucket is emptied
after each run so moto's memory and spill files stay at one run's worth.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from bench.engine import TARGET_RSS_MIB, dockercomms, identities
from bench.measure import MIB, Series, make_random, report, run_process, settle
from dockercomms.core.config import load_settings, save_settings
from dockercomms.core.paths import resolve_paths
from tests.servers.registry_server import running_registry
from tests.servers.s3_server import REGION, S3Server, running_s3

TARGET_RATIO = 1.2
BUCKET = "bench"


def use_storage_config(env: dict[str, str], config: Path) -> None:
    """Name ``config`` in the identity's config.toml (as a user would)."""
    paths = resolve_paths(env)
    save_settings(paths, dataclasses.replace(load_settings(paths), storage_config=str(config)))


def transfer(
    work: Path, source: Path, repo: str, config: Path | None, send: Series, recv: Series
) -> None:
    """One timed send and one timed recv of ``source`` between new identities on ``repo``."""
    home = work / f"ids-{uuid.uuid4().hex[:8]}"
    alice, bob = identities(home, repo)
    if config is not None:
        for env in (alice, bob):
            use_storage_config(env, config)
    size = source.stat().st_size
    settle(work, size)
    send.samples.append(run_process(dockercomms("send", str(source), "-r", "bob"), env=alice))
    out = home / "out"
    settle(work, size)
    recv.samples.append(
        run_process(dockercomms("recv", "--out", str(out), "--no-write-receipt"), env=bob)
    )
    if (out / source.name).stat().st_size != size:
        raise RuntimeError("received file has the wrong size")
    shutil.rmtree(home)


def paired(
    work: Path,
    size: int,
    runs: int,
    names: tuple[str, str],
    floor_repo: Callable[[int], tuple[str, Path | None]],
    ours_repo: Callable[[int], tuple[str, Path | None]],
    after_run: Callable[[], None],
) -> list[str]:
    """Floor and ours, alternating per run, on new random content each run."""
    floor_send, floor_recv = (
        Series(f"floor: send {names[0]}", size),
        Series(f"floor: recv {names[0]}", size),
    )
    send, recv = Series(f"send {names[1]}", size), Series(f"recv {names[1]}", size)
    for n in range(runs):
        source = make_random(work / "random.bin", size)
        transfer(work, source, *floor_repo(n), floor_send, floor_recv)
        transfer(work, source, *ours_repo(n), send, recv)
        source.unlink()
        after_run()
    lines = [
        report(floor_send),
        report(send, floor_send, target=TARGET_RATIO),
        report(floor_recv),
        report(recv, floor_recv, target=TARGET_RATIO),
    ]
    for series in (send, recv):
        verdict = "OK" if series.median_rss <= TARGET_RSS_MIB * MIB else "MISSED"
        lines.append(f"  {series.name}: peak RSS target <= {TARGET_RSS_MIB} MiB: {verdict}")
    return lines


def filesystem_suite(work: Path, size: int, runs: int) -> list[str]:
    """storage:NAME on a local root against oci-layout:DIR on the same disk."""
    root = work / "fs-storage"
    config = work / "fs-config.yml"
    config.write_text(
        json.dumps({"version": 0.1, "storage": {"filesystem": {"rootdirectory": str(root)}}})
    )

    def clean() -> None:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work / "layouts", ignore_errors=True)

    return paired(
        work,
        size,
        runs,
        ("oci-layout", "storage (filesystem)"),
        lambda n: (f"oci-layout:{work / 'layouts' / str(n)}", None),
        lambda n: (f"storage:bench/fs-{n}", config),
        clean,
    )


def s3_suite(work: Path, size: int, runs: int) -> list[str]:
    """storage:NAME on a moto bucket against docker-registry's s3 driver on that bucket."""
    with running_s3(work / "moto") as s3:
        s3.create_bucket(BUCKET)
        driver = {
            "accesskey": s3.access_key,
            "secretkey": s3.secret_key,
            "region": REGION,
            "regionendpoint": s3.endpoint,
            "secure": False,
            "bucket": BUCKET,
            "rootdirectory": "/registry",
        }
        overrides = {"storage": {"filesystem": None, "s3": driver}}
        with running_registry(work / "registry", config_overrides=overrides) as server:
            return paired(
                work,
                size,
                runs,
                ("docker-registry on S3", "storage (S3)"),
                lambda n: (f"{server.host}/bench/s3-floor-{n}", None),
                lambda n: (f"storage:bench/s3-{n}", server.config_path),
                lambda: empty_bucket(s3),
            )


def empty_bucket(s3: S3Server) -> None:
    """Delete every object (moto keeps them in memory and spill files)."""
    client = s3.client()
    keys = s3.keys(BUCKET)
    for start in range(0, len(keys), 1000):
        batch = [{"Key": key} for key in keys[start : start + 1000]]
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": batch})  # type: ignore[attr-defined]


def run(work: Path, size: int, runs: int) -> list[str]:
    """The storage suite; returns report lines."""
    work.mkdir(parents=True, exist_ok=True)
    lines = [f"storage suite: {size // MIB} MiB random, {runs} runs each, floors in the same run"]
    lines += filesystem_suite(work, size, runs)
    lines += s3_suite(work, size, runs)
    return lines


if __name__ == "__main__":
    sys.exit("run with: python -m bench --suite storage")
