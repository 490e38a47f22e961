"""The sender's side of the TTL: deleting my expired messages from the registry.

Caveats first:

* Only what is provably mine goes: a message whose sender annotation is me
  *and* whose signature verifies as me under my own trust policy (``init``
  trusts my key). A message that merely claims to be from me is listed in
  ``not_mine`` and left alone, as is everything not yet expired.
* Expired means ``created_at + ttl_seconds`` is in the past by *my* clock, with no
  skew allowance: the five minutes readers allow protect readers from senders'
  clocks, and here the sender is the one deciding.
* With a message go its signature bundles, the receipts about it (with their
  own bundles and fallback indexes), its ``sha256-<hex>`` fallback index, the
  bundle blobs, and its chunk blobs. Chunk blobs are content-addressed and can
  be shared (the same bytes sent twice, by anyone): one that another listed
  message still names is kept. Attachments of other kinds are not ours to
  delete and stay.
* Manifests are deleted by digest. Distribution removes every tag pointing at
  the manifest with it; each of our manifests is unique (message id, subject,
  signature), so no one else's tag goes along. Distribution keeps blob bytes on
  disk until its own ``registry garbage-collect``; the DELETE makes them
  unreachable.
* A registry that refuses deletion (HTTP 405, distribution without
  ``storage.delete.enabled``) is reported in ``unsupported`` and nothing else is
  tried: it is a setting, not a failure.
* A send racing with gc that reuses a chunk blob gc just deleted fails at its
  manifest PUT; the push queue retries it and uploads the chunk again.

The order of one run (numbered in the code)::

    1. finish the deletions an interrupted run left in the journal
    2. list every tag once
    3. read every message manifest; keep those that claim me and are expired
    4. prove each is mine (a bundle verifies as me)
    5. plan: message first (so it leaves every inbox at once), then receipts,
       fallback indexes, bundles, and last the blobs nothing else names
    6. write the plan to the journal (bundles that prove ownership may be gone
       after a crash, so the plan itself must survive)
    7. delete; a 404 is success (someone was faster)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import filelock

from dockercomms.core import manifest as m
from dockercomms.core import protocol as p
from dockercomms.core.errors import DockerCommsError, ManifestError, NotFoundError
from dockercomms.core.receive import Receiver
from dockercomms.core.registry.client import RegistryClient
from dockercomms.core.signing.verify import BundleVerifier
from dockercomms.core.trust import write_atomic
from dockercomms.core.workspace import RegistryOptions, Workspace

log = logging.getLogger(__name__)

Kind = Literal["message", "receipt", "bundle", "index", "blob"]
KINDS: tuple[Kind, ...] = ("message", "receipt", "bundle", "index", "blob")
JOURNAL_VERSION = 1
#: How long a run waits for another run of the same identity (CLI vs. daemon).
LOCK_SECONDS = 300.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Deletion:
    """One DELETE that gc makes, or would make with ``--dry-run``.

    Attributes:
        kind: what ``digest`` names: a message, receipt or bundle manifest, a
            fallback index, or a blob.
        digest: what is deleted.
        message: the expired message it belongs to.
        note: a tag or file name, for people reading the report.
    """

    kind: Kind
    digest: str
    message: str
    note: str = ""

    def to_json(self) -> dict[str, str]:
        """JSON-ready dict (also the journal's entry format)."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: object) -> Deletion:
        """Parse a journal entry; ``ManifestError`` when it is not one."""
        if not isinstance(value, dict):
            raise ManifestError("journal entry is not an object")
        kind, digest, message = value.get("kind"), value.get("digest"), value.get("message")
        note = value.get("note", "")
        if kind not in KINDS or not isinstance(note, str):
            raise ManifestError(f"journal entry has an unknown kind {kind!r}")
        if not isinstance(digest, str) or not isinstance(message, str):
            raise ManifestError("journal entry lacks digests")
        return cls(cast(Kind, kind), p.check_digest(digest), p.check_digest(message), note)


@dataclass(frozen=True)
class ExpiredMessage:
    """One of my messages whose time to live is over."""

    digest: str
    recipient: str
    filename: str
    created_at: datetime
    expires_at: datetime
    tags: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (timestamps RFC 3339)."""
        return {
            "digest": self.digest,
            "recipient": self.recipient,
            "filename": self.filename,
            "created_at": p.format_timestamp(self.created_at),
            "expires_at": p.format_timestamp(self.expires_at),
            "tags": list(self.tags),
        }


@dataclass
class GcReport:
    """What one run found and did.

    Attributes:
        dry_run: nothing was deleted; ``planned`` is what would be.
        checked: message manifests read.
        expired: my expired messages (proven mine).
        planned: every deletion of this run, in order.
        deleted: deletions done (or found already done: 404).
        not_mine: tags of expired messages that claim me as sender but carry no
            signature of mine; left alone.
        shared_blobs: chunk blobs kept because another message names them.
        unsupported: the registry's answer when it does not allow deletion.
        warnings: what made this run do less than it could (nothing failed).
        errors: deletions that failed; what is left is retried next run.
    """

    dry_run: bool
    checked: int = 0
    expired: list[ExpiredMessage] = field(default_factory=list)
    planned: list[Deletion] = field(default_factory=list)
    deleted: list[Deletion] = field(default_factory=list)
    not_mine: list[str] = field(default_factory=list)
    shared_blobs: int = 0
    unsupported: str | None = None
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "dry_run": self.dry_run,
            "checked": self.checked,
            "expired": [e.to_json() for e in self.expired],
            "planned": [d.to_json() for d in self.planned],
            "deleted": [d.to_json() for d in self.deleted],
            "not_mine": list(self.not_mine),
            "shared_blobs": self.shared_blobs,
            "unsupported": self.unsupported,
            "warnings": list(self.warnings),
            "errors": list(self.errors),
        }


# --- the journal -------------------------------------------------------------------------


def load_journal(path: Path | None) -> list[Deletion]:
    """Deletions an earlier run planned and did not finish (unreadable: none, logged)."""
    if path is None:
        return []
    try:
        doc = json.loads(path.read_bytes())
        if not isinstance(doc, dict) or doc.get("version") != JOURNAL_VERSION:
            raise ManifestError(f"not a version {JOURNAL_VERSION} gc journal")
        entries = doc.get("pending")
        if not isinstance(entries, list):
            raise ManifestError("gc journal has no pending list")
        return [Deletion.from_json(entry) for entry in entries]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, DockerCommsError) as exc:
        # Everything in it is found again by a fresh scan, except orphans of a
        # crashed run; dropping a damaged journal costs at most those.
        log.warning("ignoring unreadable gc journal %s: %s", path, exc)
        return []


def save_journal(path: Path | None, pending: list[Deletion]) -> None:
    """Write (or, when nothing is pending, remove) the journal atomically."""
    if path is None:
        return
    if not pending:
        path.unlink(missing_ok=True)
        return
    doc = {"version": JOURNAL_VERSION, "pending": [d.to_json() for d in pending]}
    write_atomic(path, json.dumps(doc, indent=1).encode() + b"\n")


# --- one run ---------------------------------------------------------------------------


def collect_garbage(
    client: RegistryClient,
    verifier: BundleVerifier,
    me: str,
    *,
    now: datetime,
    dry_run: bool = False,
    journal: Path | None = None,
) -> GcReport:
    """Delete ``me``'s messages that expired before ``now`` (see the module docstring)."""
    report = GcReport(dry_run)
    # 1.
    leftover = load_journal(journal)
    if leftover:
        log.info("gc: %d deletions left by an earlier run", len(leftover))
        report.planned += leftover
        if not dry_run and not _delete_all(client, leftover, report, journal):
            return report
    # 2.
    tags = client.list_tags()
    # 3.
    scan = _scan_messages(client, [t for t in tags if t.startswith("inbox-")], me, now, report)
    # 4.
    receiver = Receiver(client, verifier, me)
    mine: list[tuple[m.Message, tuple[str, ...]]] = []
    for message, message_tags in scan.candidates.values():
        if _signed_by_me(receiver, message):
            mine.append((message, message_tags))
        else:
            report.not_mine += message_tags
    # 5.
    doomed = {message.digest for message, _ in mine}
    live_layers: set[str] | None = None
    if scan.complete:
        live_layers = set()
        for digest, layers in scan.layers.items():
            if digest not in doomed:
                live_layers |= layers
    plan: list[Deletion] = []
    for message, message_tags in mine:
        report.expired.append(
            ExpiredMessage(
                message.digest,
                message.recipient,
                message.filename,
                message.created_at,
                message.expires_at,
                message_tags,
            )
        )
        plan += _plan_message(client, tags, message, live_layers, report)
    report.planned = _once_each(report.planned + plan)
    if dry_run or not plan:
        return report
    # 6. and 7.
    save_journal(journal, plan)
    _delete_all(client, plan, report, journal)
    return report


@dataclass
class _Scan:
    """Step 3's result.

    Attributes:
        candidates: messages that claim me and are expired, with their tags, by digest.
        layers: the layer digests of every message manifest read, by digest.
        complete: every listed message was read (else no chunk blob is known unshared).
    """

    candidates: dict[str, tuple[m.Message, tuple[str, ...]]] = field(default_factory=dict)
    layers: dict[str, set[str]] = field(default_factory=dict)
    complete: bool = True


def _scan_messages(
    client: RegistryClient, inbox_tags: list[str], me: str, now: datetime, report: GcReport
) -> _Scan:
    scan = _Scan()
    for tag in inbox_tags:
        try:
            raw, digest = client.fetch_manifest(tag)
        except NotFoundError:
            continue  # deleted since the listing
        except DockerCommsError as exc:
            # Its layers are unknown, so no chunk blob can be known to be unshared.
            if scan.complete:
                report.warnings.append(
                    f"cannot read {tag} ({exc.diagnostics()}); keeping every chunk blob this run"
                )
            scan.complete = False
            continue
        report.checked += 1
        scan.layers[digest] = _layer_digests(raw)
        if digest in scan.candidates:
            message, seen = scan.candidates[digest]
            scan.candidates[digest] = (message, (*seen, tag))
            continue
        try:
            message = m.parse_message(raw, digest, tag=tag, limits=client.limits)
        except DockerCommsError as exc:
            log.debug("gc: %s is not a valid message (%s); not ours to judge", tag, exc)
            continue
        if message.sender == me and message.expires_at < now:
            scan.candidates[digest] = (message, (tag,))
    return scan


def _layer_digests(raw: bytes) -> set[str]:
    """Every layer digest a manifest names, read leniently: a malformed message still counts."""
    try:
        layers = json.loads(raw).get("layers")
    except (ValueError, AttributeError):
        return set()
    if not isinstance(layers, list):
        return set()
    return {
        layer["digest"]
        for layer in layers
        if isinstance(layer, dict) and isinstance(layer.get("digest"), str)
    }


def _signed_by_me(receiver: Receiver, message: m.Message) -> bool:
    try:
        signer = receiver.verify_signature(message.digest)
    except DockerCommsError as exc:
        log.info("gc: %s claims to be mine but is not signed by me: %s", message.tag, exc)
        return False
    if signer.name != receiver.me:
        log.info("gc: %s claims to be mine but is signed as %r", message.tag, signer.name)
        return False
    return True


def _plan_message(
    client: RegistryClient,
    tags: list[str],
    message: m.Message,
    live_layers: set[str] | None,
    report: GcReport,
) -> list[Deletion]:
    """Step 5 for one message: what to delete, in order.

    ``live_layers`` is every chunk blob another message names, or None when some
    message could not be read, so that every chunk blob must be kept.
    """
    subject = message.digest

    def deletion(kind: Kind, digest: str, note: str = "") -> Deletion:
        return Deletion(kind, digest, subject, note)

    plan = [deletion("message", subject, message.tag or message.filename)]
    attached = _attachments(client, tags, subject)
    blobs: list[Deletion] = []
    for receipt_digest in attached.receipts:
        plan.append(deletion("receipt", receipt_digest, "receipt"))
        of_receipt = _attachments(client, tags, receipt_digest)
        plan += [deletion("bundle", d, "receipt bundle") for d in of_receipt.bundles]
        if of_receipt.index:
            index_tag = p.referrers_fallback_tag(receipt_digest)
            plan.append(deletion("index", of_receipt.index, index_tag))
        blobs += [deletion("blob", d, "receipt bundle blob") for d in of_receipt.bundle_blobs]
    if attached.index:
        plan.append(deletion("index", attached.index, p.referrers_fallback_tag(subject)))
    plan += [deletion("bundle", d, "bundle") for d in attached.bundles]
    blobs += [deletion("blob", d, "bundle blob") for d in attached.bundle_blobs]
    for layer in message.chunks:
        if live_layers is None or layer.digest in live_layers:
            report.shared_blobs += 1
        else:
            blobs.append(deletion("blob", layer.digest, "chunk"))
    return _once_each(plan + blobs)


def _once_each(deletions: list[Deletion]) -> list[Deletion]:
    """Drop repeats (the same chunk at two indexes; a journal entry found again)."""
    seen: set[str] = set()
    unique: list[Deletion] = []
    for deletion in deletions:
        if deletion.digest not in seen:
            seen.add(deletion.digest)
            unique.append(deletion)
    return unique


@dataclass
class _Attachments:
    """Referrers of one subject that gc deletes with it."""

    bundles: list[str] = field(default_factory=list)
    bundle_blobs: list[str] = field(default_factory=list)
    receipts: list[str] = field(default_factory=list)
    index: str | None = None


def _attachments(client: RegistryClient, tags: list[str], subject: str) -> _Attachments:
    """Bundles and receipts of ``subject`` by every discovery route (SPEC 5 step 4).

    Each candidate is fetched and must name ``subject`` as its subject: a tag
    prefix is only 48 bits of the digest, and an index entry is only a claim.
    """
    found = _Attachments()
    candidates: dict[str, bytes | None] = {}
    from_api = client.referrers(subject)
    candidates |= {d.digest: None for d in from_api or []}
    index_tag = p.referrers_fallback_tag(subject)
    if index_tag in tags:
        try:
            raw, found.index = client.fetch_manifest(index_tag)
            candidates |= {d.digest: None for d in m.parse_index(raw) if d.digest not in candidates}
        except NotFoundError:
            pass
    hex12 = subject.split(":", 1)[1][:12]
    for tag in _with_prefixes(tags, (f"bundle-{hex12}-", f"receipt-{hex12}-")):
        try:
            raw, digest = client.fetch_manifest(tag)
        except NotFoundError:
            continue
        candidates[digest] = raw
    for digest, known in candidates.items():
        try:
            raw = known if known is not None else client.fetch_manifest(digest)[0]
        except NotFoundError:
            continue
        _classify(raw, digest, subject, found)
    return found


def _with_prefixes(tags: Iterable[str], prefixes: tuple[str, ...]) -> list[str]:
    return [tag for tag in tags if tag.startswith(prefixes)]


def _classify(raw: bytes, digest: str, subject: str, found: _Attachments) -> None:
    try:
        doc = m.parse_json(raw, "referrer")
        if m.parse_descriptor(doc.get("subject"), "referrer subject").digest != subject:
            return
        kind = doc.get("artifactType")
        if kind == p.BUNDLE_MEDIA_TYPE:
            layer, _ = m.bundle_layer(raw)
            found.bundles.append(digest)
            found.bundle_blobs.append(layer.digest)
        elif kind == p.RECEIPT_ARTIFACT_TYPE:
            m.parse_receipt(raw, digest)
            found.receipts.append(digest)
    except DockerCommsError as exc:
        log.debug("gc: referrer %s of %s left alone: %s", digest[:19], subject[:19], exc)


# --- deleting ----------------------------------------------------------------------------


def _delete_all(
    client: RegistryClient, plan: list[Deletion], report: GcReport, journal: Path | None
) -> bool:
    """Step 7: delete in order; False when the run must stop (refused or failing).

    The journal keeps whatever is not done, except after a refusal: a registry
    that does not allow deletion will not allow it next run either, and a fresh
    scan finds everything again once it does.
    """
    for position, deletion in enumerate(plan):
        try:
            refusal = _delete(client, deletion)
        except DockerCommsError as exc:
            report.errors.append(f"deleting {deletion.kind} {deletion.digest}: {exc.diagnostics()}")
            save_journal(journal, plan[position:])
            return False
        if refusal is not None:
            report.unsupported = refusal
            save_journal(journal, [])
            return False
        report.deleted.append(deletion)
        log.info("gc: deleted %s %s (%s)", deletion.kind, deletion.digest[:19], deletion.note)
    save_journal(journal, [])
    return True


def _delete(client: RegistryClient, deletion: Deletion) -> str | None:
    """DELETE one manifest or blob; the registry's refusal text on HTTP 405, else None."""
    if deletion.kind == "blob":
        url = client.blob_url(deletion.digest)
    else:
        url = client.manifest_url(deletion.digest)
    response = client.request(
        "DELETE",
        url,
        push=True,
        ok=(200, 202, 204, 404, 405),
        what=f"DELETE {deletion.kind} {deletion.digest[:19]}",
    )
    try:
        if response.status_code != 405:
            return None
        return f"HTTP 405 {_error_text(response.content)}".strip()
    finally:
        response.close()


def _error_text(body: bytes) -> str:
    try:
        errors = json.loads(body[:4096]).get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace").strip()


# --- for the CLI and the daemon ------------------------------------------------------------


class GarbageCollector:
    """One identity's gc: its registry, its journal, and a lock against a second run.

    The daemon calls :meth:`run_once` now and then from a worker thread
    (``trio.to_thread.run_sync``); ``dockercomms gc`` calls it once. Both may run
    at the same time: the second waits for the first.
    """

    def __init__(
        self,
        workspace: Workspace,
        options: RegistryOptions | None = None,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.workspace = workspace
        self.options = options or RegistryOptions()
        self.clock = clock

    @property
    def journal_path(self) -> Path:
        """Deletions planned and not yet done (see step 6)."""
        return self.workspace.paths.state_dir / "gc-journal.json"

    def run_once(self, *, dry_run: bool = False) -> GcReport:
        """Delete my expired messages (or, with ``dry_run``, say what would go)."""
        state = self.workspace.paths.state_dir
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            with (
                filelock.FileLock(state / "gc.lock", timeout=LOCK_SECONDS),
                self.workspace.client(self.options) as client,
            ):
                return collect_garbage(
                    client,
                    self.workspace.verifier(),
                    self.workspace.identity,
                    now=self.clock(),
                    dry_run=dry_run,
                    journal=self.journal_path,
                )
        except filelock.Timeout as exc:
            raise DockerCommsError(
                f"another gc run of {self.workspace.identity} has held {exc.lock_file} "
                f"for {LOCK_SECONDS:.0f}s"
            ) from exc
