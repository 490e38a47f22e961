"""A big inbox: listing after a restart, polls that find nothing, delivery without a poll.

One embedded registry; dave has sent erin 10,000 small signed messages (made in
process by ``tests.fsmount_fixtures.seed_inbox``: one signature each, one
``index.json`` update for all). Targets (issue #15, items 3 and 4):

* the first ``ls -l`` of ``inbox/<sender>/`` after the mount restarts <= 3 s
  (what verified stays verified: results kept in ``state.db`` by manifest digest
  and trust-policy fingerprint);
* a poll that finds nothing new costs <= 50 ms of the daemon's CPU with 10,000
  listed (all of the daemon's CPU between polls counts, so this is an upper bound);
* ``dockercomms ls`` (a new process) <= 3 s;
* a new message is listed in the mount <= 0.5 s (p50) after its send returned, with
  the mount polling once an hour, so only the watch on the layout's index delivers.

Also shown, without a target: the first listing ever (every signature verified:
what each restart cost before results were kept).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.measure import Sample, Series, run_process
from tests.fsmount_fixtures import Identity, make_identities, mounted, seed_inbox, trust

MESSAGES = 10_000
LISTING_TARGET_SECONDS = 3.0
IDLE_POLL_TARGET_SECONDS = 0.050
IDLE_POLLS = 10
DELIVERY_TARGET_SECONDS = 0.5
DELIVERY_RUNS = 9
DAVE, ERIN = "dave@example.com", "erin@example.com"


def wait_for_path(path: Path, timeout: float = 60.0) -> float:
    """Seconds until ``path`` exists (checked every 5 ms)."""
    started = time.perf_counter()
    while not path.exists():
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int, timeout: float = 60.0) -> None:
    """Wait until the daemon has done its one-off work after the first poll.

    It reads the store ahead once (every stored manifest, seconds at this size),
    which is not the cost of a poll: two quiet seconds in a row (under 0.2 s of
    CPU each) end the wait.
    """
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 2 and time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        quiet = quiet + 1 if cpu_seconds(pid) - before < 0.2 else 0


def ls_l(folder: Path) -> tuple[float, int]:
    """Wall time of ``ls -l folder``, and how many entries it printed."""
    started = time.perf_counter()
    listed = subprocess.run(
        ["ls", "-l", str(folder)], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    return time.perf_counter() - started, len(listed) - 1


def cli_ls(identity: Identity) -> Sample:
    """``dockercomms ls`` in a new process (start-up included, as a user sees it)."""
    return run_process([sys.executable, "-m", "dockercomms.cli", "ls"], env=identity.env)


def restarts(erin: Identity, work: Path, runs: int) -> tuple[Series, Series]:
    """Per run: mount, time the first ``ls -l``, then the daemon's CPU per idle poll."""
    listing = Series(f"mount: first ls -l, {MESSAGES} msgs", 0)
    idle = Series("mount: CPU per poll finding nothing", 0)
    for _ in range(runs):
        with mounted(erin, work / "mnt-erin", "--no-receipts", "--poll", "1") as mount:
            seconds, count = ls_l(mount / f"inbox/{DAVE}")
            if count != MESSAGES:
                raise RuntimeError(f"ls -l listed {count} of {MESSAGES} messages")
            listing.samples.append(Sample(seconds, 0))
            pid = mount.process.pid
            settle(pid)
            # Asking for .status costs the daemon too: once before, once after.
            first = mount.status()["inbox"]["last_poll"]["polls"]
            cpu = cpu_seconds(pid)
            time.sleep(IDLE_POLLS + 0.5)
            spent = cpu_seconds(pid) - cpu
            polls = mount.status()["inbox"]["last_poll"]["polls"] - first
            idle.samples.append(Sample(spent / max(polls, 1), 0))
    return listing, idle


def delivery(dave: Identity, erin: Identity, work: Path) -> list[float]:
    """Seconds from a send returning to the message listed in a mount that polls hourly."""
    note = work / "note.txt"
    samples = []
    with mounted(erin, work / "mnt-watch", "--no-receipts", "--poll", "3600") as mount:
        ls_l(mount / f"inbox/{DAVE}")  # the first poll is done
        for n in range(DELIVERY_RUNS):
            name = f"watched-{n}-{os.getpid()}.txt"
            note.write_text(f"note {n}\n")
            dave.send(note, ERIN, filename=name)
            samples.append(wait_for_path(mount / f"inbox/{DAVE}/{name}"))
    return samples


def _line(name: str, seconds: list[float], target: float | None = None, unit: str = "s") -> str:
    median = statistics.median(seconds)
    scale = 1000 if unit == "ms" else 1
    line = f"{name:<38} median {median * scale:8.2f} {unit}"
    if target is not None:
        verdict = "OK" if median <= target else "MISSED"
        line += f"  target <= {target * scale:g} {unit}: {verdict}"
    runs = ", ".join(f"{s * scale:.2f}" for s in seconds)
    return f"{line}  [runs: {runs}]"


def run(work: Path, size: int, runs: int) -> list[str]:
    """The inbox suite (``size`` unused: the messages are small); returns report lines."""
    work.mkdir(parents=True, exist_ok=True)
    lines = [f"inbox suite: {MESSAGES} messages, {runs} runs, embedded registry"]
    people = make_identities(work, [DAVE, ERIN], data_home=work / "xdg-data")
    dave, erin = people[DAVE], people[ERIN]
    trust(erin, dave)
    started = time.perf_counter()
    seed_inbox(dave, ERIN, MESSAGES)
    lines.append(f"{'seeding (not a measurement)':<38} {time.perf_counter() - started:8.2f} s")
    cold = cli_ls(erin)
    lines.append(_line("dockercomms ls, first ever (verifies)", [cold.seconds]))
    listing, idle = restarts(erin, work, runs)
    lines.append(_line(listing.name, [s.seconds for s in listing.samples], LISTING_TARGET_SECONDS))
    lines.append(
        _line(idle.name, [s.seconds for s in idle.samples], IDLE_POLL_TARGET_SECONDS, "ms")
    )
    again = [cli_ls(erin).seconds for _ in range(runs)]
    lines.append(_line(f"dockercomms ls, {MESSAGES} msgs", again, LISTING_TARGET_SECONDS))
    latency = delivery(dave, erin, work)
    lines.append(_line("delivery, polling hourly (p50)", latency, DELIVERY_TARGET_SECONDS))
    return lines
