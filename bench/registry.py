"""send/recv against a real distribution server, against curl floors; 10,000-tag listing.

Floors, measured in the same run against the same server: ``curl`` uploading the
same bytes as one blob (POST + PUT ?digest=, digest computed beforehand), and
``curl`` downloading that blob plus sha256 of the result. Targets (issue 3): send
<= 1.25x the upload floor (random data), recv <= 1.25x the download floor, peak
RSS <= 150 MiB; a 10,000-tag repository lists in under 5 s.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.engine import TARGET_RSS_MIB, dockercomms, identities
from bench.measure import (
    MIB,
    Sample,
    Series,
    fsync_file,
    make_random,
    report,
    run_process,
    settle,
    sha256_file,
    time_call,
)
from dockercomms.core import protocol as p
from dockercomms.core._internal import manifest as m
from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core._internal.registry.reference import parse_repository
from tests.servers.registry_server import running_registry

TARGET_RATIO = 1.25
TAG_COUNT = 10_000
TAG_TARGET_SECONDS = 5.0


def _curl(*args: str) -> str:
    return subprocess.run(
        ["curl", "-sS", "-f", *args], check=True, capture_output=True, text=True
    ).stdout


def curl_upload(base: str, repo: str, source: Path, digest: str) -> Sample:
    """POST for a session, then one streamed PUT of the file: the protocol's minimum."""

    def upload() -> None:
        headers = _curl(
            "-D", "-", "-o", "/dev/null", "-X", "POST", f"{base}/v2/{repo}/blobs/uploads/"
        )
        location = next(
            line.split(":", 1)[1].strip()
            for line in headers.splitlines()
            if line.lower().startswith("location:")
        )
        if location.startswith("/"):
            location = base + location
        joiner = "&" if "?" in location else "?"
        _curl(
            "-o",
            "/dev/null",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "-T",
            str(source),
            f"{location}{joiner}digest={digest}",
        )

    return time_call(upload)


def curl_download(base: str, repo: str, digest: str, target: Path) -> tuple[Sample, Sample]:
    """GET the blob to a file, then sha256 it: the least a verified download does.

    Also returns the same plus an fsync of the file: what a durable write costs here.
    """
    fetched = run_process(
        ["curl", "-sS", "-f", "-o", str(target), f"{base}/v2/{repo}/blobs/{digest}"]
    )
    hashed = time_call(lambda: sha256_file(target))
    synced = fsync_file(target)
    target.unlink()
    plain = fetched.seconds + hashed.seconds
    return Sample(plain, 0), Sample(plain + synced.seconds, 0)


def transfer_suite(work: Path, host: str, size: int, runs: int) -> list[str]:
    """1 GiB (or ``size``) random send and recv against the curl floors."""
    base = f"http://{host}"
    source = make_random(work / "random.bin", size)
    digest = "sha256:" + sha256_file(source)
    up, down = Series("floor: curl upload", size), Series("floor: curl download + sha256", size)
    durable = Series("floor: curl download + sha256 + fsync", size)
    send, recv = (
        Series("send random (distribution)", size),
        Series("recv random (distribution)", size),
    )
    for n in range(runs):
        floor_repo = f"bench/floor-{uuid.uuid4().hex[:8]}"
        settle(work, size)
        up.samples.append(curl_upload(base, floor_repo, source, digest))
        settle(work, size)
        plain, synced = curl_download(base, floor_repo, digest, work / "downloaded.bin")
        down.samples.append(plain)
        durable.samples.append(synced)
        repo = f"{host}/bench/run-{uuid.uuid4().hex[:8]}"
        home = work / f"ids-{n}"
        alice, bob = identities(home, repo)
        settle(work, size)
        send.samples.append(run_process(dockercomms("send", str(source), "-r", "bob"), env=alice))
        out = work / f"out-{n}"
        settle(work, size)
        recv.samples.append(
            run_process(dockercomms("recv", "--out", str(out), "--no-write-receipt"), env=bob)
        )
        if (out / source.name).stat().st_size != size:
            raise RuntimeError("received file has the wrong size")
        shutil.rmtree(out)
        shutil.rmtree(home)
    lines = [
        report(up),
        report(send, up, target=TARGET_RATIO),
        report(down),
        report(durable),
        report(recv, down, target=TARGET_RATIO),
        "  " + report(recv, durable).replace(recv.name, f"{recv.name} vs fsync floor", 1),
    ]
    for series in (send, recv):
        verdict = "OK" if series.median_rss <= TARGET_RSS_MIB * MIB else "MISSED"
        lines.append(f"  {series.name}: peak RSS target <= {TARGET_RSS_MIB} MiB: {verdict}")
    source.unlink()
    return lines


def tag_listing_suite(host: str, runs: int) -> list[str]:
    """Tag 10,000 times (as 10,000 messages would), then time a filtered listing."""
    ref = parse_repository(f"{host}/bench/tags-{uuid.uuid4().hex[:8]}")
    with RegistryClient(ref) as client:
        client.push_blob_bytes(p.EMPTY_CONFIG_BYTES, p.OCI_EMPTY)
        raw = m.build_message({}, [])
        prefix = p.inbox_prefix("bob")

        def tag(n: int) -> None:
            client.push_manifest(raw, f"{prefix}20261123-{n:08x}-{n:08x}")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(tag, range(TAG_COUNT)))
        series = Series(f"list {TAG_COUNT} tags (prefix filter)", 0)
        for _ in range(runs):
            started = time.perf_counter()
            found = client.list_tags(prefix)
            series.samples.append(Sample(time.perf_counter() - started, 0))
            if len(found) != TAG_COUNT:
                raise RuntimeError(f"listed {len(found)} tags, expected {TAG_COUNT}")
    seconds = series.median_seconds
    verdict = "OK" if seconds < TAG_TARGET_SECONDS else "MISSED"
    runs_text = ", ".join(f"{s.seconds:.2f}" for s in series.samples)
    target = f"target < {TAG_TARGET_SECONDS} s: {verdict}"
    return [f"{series.name:<34} median {seconds:7.2f} s  {target}  [runs: {runs_text}]"]


def run(work: Path, size: int, runs: int) -> list[str]:
    """The registry suite; returns report lines."""
    work.mkdir(parents=True, exist_ok=True)
    lines = [f"registry suite: {size // MIB} MiB, {runs} runs each, distribution 2.8 on 127.0.0.1"]
    with running_registry(work / "server") as server:
        lines += transfer_suite(work, server.host, size, runs)
        lines += tag_listing_suite(server.host, runs)
    return lines


if __name__ == "__main__":
    sys.exit("run with: python -m bench --suite registry")
