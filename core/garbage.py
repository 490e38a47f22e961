"""The sender's side of the TTL: deleting my expired messages from the registry.

Caveats first:

* What gc deletes is decided by verified facts only. Everything it *discovers*
  (tags, referrers, fallback index entries) anyone who can push may have forged,
  e.g. a "bundle" whose subject is my message and whose layer is the chunk of
  someone else's live message. The rules:

  (a) A message is mine when its sender annotation is me *and* a bundle of it
      verifies as me under my own trust policy (``init`` trusts my key). Every
      bundle found is tried, so a forged one, or someone else's valid signature
      of my digest, listed first cannot hide mine. A message that merely claims
      me is listed in ``not_mine`` and left alone.
  (b) The only blobs deleted are the chunk layers of my verified message (its
      manifest is signed by me, so its layers are my own claim), the blob of each
      bundle that verified as me signing it, and the blob of each bundle that
      verified as a receipt's claimed sender signing that receipt. A bundle that
      does not verify keeps its blob: its layer may be anyone's.
  (c) No blob that a live manifest names is deleted. gc reads every tagged
      manifest of the repository (and every manifest an index lists) and counts
      every digest anywhere in it; live is every manifest read that this run does
      not delete. When some manifest could not be read (network, over the size
      cap, a damaged store) no blob at all is deleted: those deletions stay in the
      journal for a run that can read everything. A manifest that is not bounded
      JSON (nested too deep, not JSON) counts as naming every 64-hex-digit run in
      its bytes; only its author could hide a reference from that (with JSON
      escapes), and no honest tool writes such a manifest.
  (d) The manifests deleted are my message and the bundles, receipts and
      fallback index whose subject is my message (plus the bundles and fallback
      index of those receipts), verified or not. Such a manifest is, by its own
      content, a claim about my message (its digest covers its subject), so
      deleting it removes only a claim about a message that no longer exists; a
      tag someone else put on it they could as well have pushed over. Left alone
      it would dangle forever: nobody else's gc looks for it. Referrers of other
      kinds stay, and keep what they name by (c).
* Receipts about my message were written by its recipient, not by me. They go
  with the message all the same: they are addressed to me, about a message that
  is gone, and their author's gc never looks for them (it deletes messages
  only). Their bundle blobs go only when verified, by (b).
* Expired means ``created_at + ttl_seconds`` is in the past by *my* clock, with
  no skew allowance: the five minutes readers allow protect readers from
  senders' clocks, and here the sender is the one deciding. A message whose
  expiry cannot even be represented (a 20-digit TTL, a date in year 9999)
  never expires.
* A hostile manifest (nested 5,000 deep, absurd numbers, anything a parser
  raises on) is logged and left alone; it never stops a run.
* Manifests are deleted by digest. Distribution removes every tag pointing at
  the manifest with it; each of our manifests is unique (message id, subject,
  signature), so no one else's tag goes along. Distribution keeps blob bytes on
  disk until its own ``registry garbage-collect``; the DELETE makes them
  unreachable.
* A registry that refuses deletion (HTTP 405, distribution without
  ``storage.delete.enabled``) is reported in ``unsupported`` and nothing else is
  tried: it is a setting, not a failure.
* Sends racing with gc: right before the blobs go, the tag list is read again
  and every new tag's manifest counts as live, so a send tagged meanwhile that
  reuses a chunk keeps it. A send whose manifest is tagged in the instant between
  that second look and the blob DELETE loses the chunk; a send still untagged
  then fails at its tag PUT (the registry checks that layers exist), and the push
  queue retries it and uploads the chunk again.
* Cost: one manifest GET per tag of the repository per run, plus the
  discovery and verification of the attachments of my expired messages.

The order of one run (numbered in the code)::

    1. load the journal: deletions an interrupted run planned from verified
       facts (the bundles that proved them mine may be gone since)
    2. list every tag; read every manifest; keep messages that claim me and are
       expired
    3. prove each mine by (a), finding its attachments and verifying bundles
    4. plan: the journal's leftovers, then my messages, their receipts (with
       their bundles and indexes), their fallback indexes and bundles; then
       the blobs of (b)
    5. keep the blobs a live manifest names (c); defer them all when some
       manifest could not be read
    6. write the plan to the journal (bundles that prove ownership may be gone
       after a crash, so the plan itself must survive)
    7. delete the manifests, look at the tags again, delete the blobs; a 404 is
       success (someone was faster)
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import filelock

from dockercomms.core import protocol
from dockercomms.core._internal import manifest as manifests
from dockercomms.core._internal.receive import Opening
from dockercomms.core._internal.registry.client import RegistryClient
from dockercomms.core._internal.sealed_message import A_SEALED, open_annotation
from dockercomms.core._internal.signing.verify import BundleVerifier
from dockercomms.core.errors import (
    DockerCommsError,
    LimitExceededError,
    ManifestError,
    NotFoundError,
)
from dockercomms.core.trust import write_atomic
from dockercomms.core.untrusted import parse_json_object, shown
from dockercomms.core.workspace import RegistryOptions, Workspace

log = logging.getLogger(__name__)

Kind = Literal["message", "receipt", "bundle", "index", "blob"]
KINDS: tuple[Kind, ...] = ("message", "receipt", "bundle", "index", "blob")
JOURNAL_VERSION = 1
#: How long a run waits for another run of the same identity (CLI vs. daemon).
LOCK_SECONDS = 300.0
#: Largest journal read back (about 300,000 deletions); a bigger one is ignored.
MAX_JOURNAL_BYTES = 64 * 1024 * 1024
#: Most manifest GETs one run makes while scanning; past it the scan counts as incomplete.
MAX_MANIFEST_READS = 500_000
#: Most referrers of one subject considered; past it the scan counts as incomplete.
MAX_REFERRERS = 1_000
#: Most of a registry's error body read to explain a refusal.
MAX_ERROR_BYTES = 64 * 1024
_HEX_RUN = re.compile(rb"(?<![0-9A-Fa-f])[0-9A-Fa-f]{64}(?![0-9A-Fa-f])")


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
            raise ManifestError(f"journal entry has an unknown kind {shown(kind)}")
        if not isinstance(digest, str) or not isinstance(message, str):
            raise ManifestError("journal entry lacks digests")
        return cls(
            cast(Kind, kind), protocol.check_digest(digest), protocol.check_digest(message), note
        )


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
            "created_at": protocol.format_timestamp(self.created_at),
            "expires_at": protocol.format_timestamp(self.expires_at),
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
        deferred: blob deletions postponed because some manifest could not be
            read (see ``warnings``); they wait in the journal for the next run.
        not_mine: tags of expired messages that claim me as sender but carry no
            signature of mine; left alone.
        shared_blobs: blobs of mine kept because a live manifest names them.
        unsupported: the registry's answer when it does not allow deletion.
        warnings: what made this run do less than it could (nothing failed).
        errors: deletions that failed; what is left is retried next run.
    """

    dry_run: bool
    checked: int = 0
    expired: list[ExpiredMessage] = field(default_factory=list)
    planned: list[Deletion] = field(default_factory=list)
    deleted: list[Deletion] = field(default_factory=list)
    deferred: list[Deletion] = field(default_factory=list)
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
            "deferred": [d.to_json() for d in self.deferred],
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
        doc = parse_json_object(_read_journal(path), "gc journal", max_bytes=MAX_JOURNAL_BYTES)
        if doc.get("version") != JOURNAL_VERSION:
            raise ManifestError(f"not a version {JOURNAL_VERSION} gc journal")
        entries = doc.get("pending")
        if not isinstance(entries, list):
            raise ManifestError("gc journal has no pending list")
        return [Deletion.from_json(entry) for entry in entries]
    except FileNotFoundError:
        return []
    except (OSError, DockerCommsError) as exc:
        # Everything in it is found again by a fresh scan, except orphans of a
        # crashed run; dropping a damaged journal costs at most those.
        log.warning("ignoring unreadable gc journal %s: %s", path, exc)
        return []


def _read_journal(path: Path) -> bytes:
    """The journal's bytes: a regular file, size checked before reading, read bounded."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(file.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_JOURNAL_BYTES:
            raise LimitExceededError(f"not a regular file of at most {MAX_JOURNAL_BYTES} bytes")
        return file.read(MAX_JOURNAL_BYTES + 1)


def save_journal(path: Path | None, pending: list[Deletion]) -> None:
    """Write (or, when nothing is pending, remove) the journal atomically."""
    if path is None:
        return
    if not pending:
        path.unlink(missing_ok=True)
        return
    doc = {"version": JOURNAL_VERSION, "pending": [d.to_json() for d in pending]}
    write_atomic(path, json.dumps(doc, indent=1).encode() + b"\n")


# --- reading the repository --------------------------------------------------------------


@dataclass(frozen=True)
class _Manifest:
    """One manifest as read: its bytes, and their JSON when that is bounded JSON."""

    raw: bytes
    digest: str
    doc: dict[str, Any] | None


class _Repository:
    """Every manifest one run read, by digest, with every digest it names.

    Attributes:
        names: per manifest read, the digests it names (a superset, see (c)).
        complete: every manifest gc looked for could be read; else no blob is
            known to be unnamed.
    """

    def __init__(self, client: RegistryClient, report: GcReport) -> None:
        self.client = client
        self.report = report
        self.names: dict[str, frozenset[str]] = {}
        self.complete = True
        self._reads = 0

    def read(self, reference: str) -> _Manifest | None:
        """Fetch one manifest and remember what it names; None when it is gone or unreadable."""
        self._reads += 1
        if self._reads > MAX_MANIFEST_READS:
            self.incomplete(f"the scan needed more than {MAX_MANIFEST_READS} manifest reads")
            return None
        try:
            raw, digest = self.client.fetch_manifest(reference)
        except NotFoundError:
            return None  # deleted since it was listed
        except DockerCommsError as exc:
            self.incomplete(f"cannot read {shown(reference)} ({shown(exc.diagnostics(), 400)})")
            return None
        except Exception as exc:  # whatever one manifest does, the run goes on
            log.warning("gc: reading %s failed", shown(reference), exc_info=True)
            self.incomplete(f"cannot read {shown(reference)} ({type(exc).__name__})")
            return None
        try:
            doc: dict[str, Any] | None = parse_json_object(
                raw, "manifest", max_bytes=self.client.limits.max_manifest_bytes
            )
        except DockerCommsError as exc:
            log.info("gc: %s is not bounded JSON (%s); left alone", shown(reference), exc)
            doc = None
        self.names[digest] = _names_in(doc) if doc is not None else _hex_runs(raw)
        return _Manifest(raw, digest, doc)

    def incomplete(self, why: str) -> None:
        """Note that some manifest could not be read: no blob is deleted this run."""
        if not self.complete:
            log.info("gc: also %s", why)
            return
        log.warning("gc: %s; keeping every blob this run", why)
        self.report.warnings.append(f"{why}; keeping every blob this run")
        self.complete = False

    def live_names(self, doomed: set[str]) -> set[str]:
        """Every digest that a manifest read, and not deleted by this run, names."""
        live: set[str] = set()
        for digest, names in self.names.items():
            if digest not in doomed:
                live |= names
        return live


def _names_in(doc: dict[str, Any]) -> frozenset[str]:
    """Every digest string anywhere in a document (bounded depth, so an iterative walk)."""
    found: set[str] = set()
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str) and protocol.DIGEST_PATTERN.fullmatch(node):
            found.add(node)
    return frozenset(found)


def _hex_runs(raw: bytes) -> frozenset[str]:
    """What an unparsable manifest may name: every run of 64 hex digits in its bytes."""
    return frozenset("sha256:" + run.decode().lower() for run in _HEX_RUN.findall(raw))


def _index_entries(doc: dict[str, Any] | None) -> list[str]:
    """The manifest digests an index lists, read leniently (a bad entry is skipped)."""
    entries = doc.get("manifests") if doc is not None else None
    if not isinstance(entries, list):
        return []
    return [
        entry["digest"]
        for entry in entries
        if isinstance(entry, dict)
        and isinstance(entry.get("digest"), str)
        and protocol.DIGEST_PATTERN.fullmatch(entry["digest"])
    ]


@dataclass
class _Scan:
    """Step 2's result.

    Attributes:
        tags: every valid tag listed (and so read).
        candidates: messages that claim me and are expired, with their tags, by digest.
        referrers: digests of the ``bundle-`` and ``receipt-`` tags, by the
            ``hex12`` the tag carries (SPEC 5 step 4's last route).
    """

    tags: set[str] = field(default_factory=set)
    candidates: dict[str, tuple[manifests.Message, tuple[str, ...]]] = field(default_factory=dict)
    referrers: dict[str, list[str]] = field(default_factory=dict)


def _scan(repo: _Repository, me: str, now: datetime) -> _Scan:
    scan = _Scan(_valid_tags(repo.client.list_tags()))
    listed: list[str] = []
    for tag in sorted(scan.tags):
        manifest = repo.read(tag)
        if manifest is None:
            continue
        listed += _index_entries(manifest.doc)
        kind, _, rest = tag.partition("-")
        if kind in ("bundle", "receipt"):
            scan.referrers.setdefault(rest[:12], []).append(manifest.digest)
        if not tag.startswith("inbox-"):
            continue
        repo.report.checked += 1
        if manifest.digest in scan.candidates:
            known, seen = scan.candidates[manifest.digest]
            scan.candidates[manifest.digest] = (known, (*seen, tag))
        elif (message := _expired_claim(repo, manifest, tag, me, now)) is not None:
            scan.candidates[manifest.digest] = (message, (tag,))
    # Manifests only an index lists (an untagged receipt, say) can name blobs too.
    tried: set[str] = set()
    while listed:
        digest = listed.pop()
        if digest in tried or digest in repo.names:
            continue
        tried.add(digest)
        if (manifest := repo.read(digest)) is not None:
            listed += _index_entries(manifest.doc)
    return scan


def _valid_tags(tags: Iterable[str]) -> set[str]:
    """Tags a registry could serve; anything else (a hostile listing) names no manifest."""
    valid = set()
    for tag in tags:
        if protocol.TAG_PATTERN.fullmatch(tag):
            valid.add(tag)
        else:
            log.info("gc: ignoring the invalid tag %s in the listing", shown(tag))
    return valid


def _expired_claim(
    repo: _Repository, manifest: _Manifest, tag: str, me: str, now: datetime
) -> manifests.Message | None:
    """The message ``manifest`` is, when it claims ``me`` as sender and has expired."""
    if manifest.doc is None:
        return None  # not bounded JSON, logged by the read
    try:
        message = manifests.parse_message(
            manifest.raw, manifest.digest, tag=tag, limits=repo.client.limits
        )
    except DockerCommsError as exc:
        log.debug("gc: %s is not a valid message (%s); not ours to judge", tag, exc)
        return None
    except Exception:  # a hostile manifest; never a reason to stop
        log.warning("gc: %s is not a message gc can read; left alone", tag, exc_info=True)
        return None
    if message.sender != me:
        return None
    expires_at = _expiry(message)
    if expires_at is None:
        log.info("gc: %s claims me but its expiry is past any date; left alone", tag)
        return None
    return message if expires_at < now else None


def _expiry(message: manifests.Message) -> datetime | None:
    """When ``message`` expires; None when that is past any representable date."""
    try:
        return message.expires_at
    except (OverflowError, ValueError):
        return None


# --- attachments and proof ---------------------------------------------------------------


@dataclass(frozen=True)
class _Bundle:
    """A bundle manifest found for a subject, and the blob it claims holds the signature."""

    digest: str
    blob: manifests.Descriptor


@dataclass
class _Attachments:
    """What claims to be about one subject: the manifests gc deletes with it (d)."""

    bundles: list[_Bundle] = field(default_factory=list)
    receipts: list[manifests.Receipt] = field(default_factory=list)
    index: str | None = None


def _attachments(repo: _Repository, scan: _Scan, subject: str) -> _Attachments:
    """Bundles and receipts of ``subject`` by every discovery route (SPEC 5 step 4).

    Each candidate is fetched and must name ``subject`` as its subject: a tag
    prefix is only 48 bits of the digest, and an index entry is only a claim.
    """
    found = _Attachments()
    candidates: dict[str, None] = {}  # ordered, once each
    try:
        candidates |= {d.digest: None for d in repo.client.referrers(subject) or []}
    except Exception as exc:  # a hostile referrers answer: untagged referrers stay unknown
        repo.incomplete(f"cannot list the referrers of {subject[:19]} ({shown(exc)})")
    index_tag = protocol.referrers_fallback_tag(subject)
    if index_tag in scan.tags and (index := repo.read(index_tag)) is not None:
        found.index = index.digest
        candidates |= dict.fromkeys(_index_entries(index.doc))
    hex12 = subject.split(":", 1)[1][:12]
    candidates |= dict.fromkeys(scan.referrers.get(hex12, []))
    if len(candidates) > MAX_REFERRERS:
        repo.incomplete(f"{subject[:19]} has more than {MAX_REFERRERS} referrers")
    for digest in list(candidates)[:MAX_REFERRERS]:
        if (manifest := repo.read(digest)) is not None:
            _classify(manifest, subject, found)
    return found


def _classify(manifest: _Manifest, subject: str, found: _Attachments) -> None:
    doc = manifest.doc
    claimed = doc.get("subject") if doc is not None else None
    if doc is None or not isinstance(claimed, dict) or claimed.get("digest") != subject:
        return
    kind = doc.get("artifactType")
    try:
        if kind == protocol.BUNDLE_MEDIA_TYPE:
            layer, _ = manifests.bundle_layer(manifest.raw)
            found.bundles.append(_Bundle(manifest.digest, layer))
        elif kind == protocol.RECEIPT_ARTIFACT_TYPE:
            found.receipts.append(manifests.parse_receipt(manifest.raw, manifest.digest))
    except DockerCommsError as exc:
        log.debug("gc: referrer %s of %s left alone: %s", manifest.digest[:19], subject[:19], exc)
    except Exception:  # a hostile manifest; never a reason to stop
        log.warning("gc: referrer %s left alone", manifest.digest[:19], exc_info=True)


def _verified(
    client: RegistryClient,
    verifier: BundleVerifier,
    subject: str,
    bundles: list[_Bundle],
    signer: str,
) -> list[_Bundle]:
    """The bundles whose blob verifies as ``signer`` signing ``subject``."""
    limit = client.limits.max_bundle_bytes
    found: list[_Bundle] = []
    for bundle in bundles:
        if bundle.blob.size > limit:
            continue
        try:
            blob = client.fetch_small_blob(bundle.blob.digest, max_bytes=limit)
            name = verifier.verify(blob, subject).name
        except DockerCommsError as exc:
            log.info("gc: bundle %s of %s: %s", bundle.digest[:19], subject[:19], exc)
            continue
        except Exception:  # a hostile bundle; it verifies nothing
            log.warning("gc: bundle %s of %s", bundle.digest[:19], subject[:19], exc_info=True)
            continue
        if name == signer:
            found.append(bundle)
        else:
            log.info("gc: bundle %s of %s is signed as %r", bundle.digest[:19], subject[:19], name)
    return found


def _shown_name(message: manifests.Message, opening: Opening | None, client: RegistryClient) -> str:
    """The real name of my sealed ``message``, else the name its manifest carries.

    Called only once a signature proved the message mine: it is opened with my
    own age keys, for its name alone (it is expired, so never received).
    """
    if not message.encrypted or opening is None or A_SEALED not in message.annotations:
        return message.filename
    try:
        facts = open_annotation(
            message.annotations[A_SEALED],
            opening.identities(),
            total_bytes=message.total_bytes,
            chunk_count=message.chunk_count,
            limits=client.limits,
        )
    except DockerCommsError as exc:
        log.info("gc: %s keeps its neutral name: %s", message.digest[:19], exc)
        return message.filename
    return facts.filename


# --- one run ---------------------------------------------------------------------------


def collect_garbage(
    client: RegistryClient,
    verifier: BundleVerifier,
    me: str,
    *,
    now: datetime,
    dry_run: bool = False,
    journal: Path | None = None,
    opening: Opening | None = None,
) -> GcReport:
    """Delete ``me``'s messages that expired before ``now`` (see the module docstring).

    ``opening`` (my age identities) names my sealed messages in the report by
    their real file name; without it, or if it fails, they keep the neutral one.
    """
    report = GcReport(dry_run)
    # 1.
    leftover = load_journal(journal)
    if leftover:
        log.info("gc: %d deletions left by an earlier run", len(leftover))
    # 2.
    repo = _Repository(client, report)
    scan = _scan(repo, me, now)
    # 3. and 4.
    plan = list(leftover)
    for digest, (message, message_tags) in scan.candidates.items():
        attached = _attachments(repo, scan, digest)
        proof = _verified(client, verifier, digest, attached.bundles, me)
        if not proof:
            log.info("gc: %s claims to be mine but no bundle verifies as mine", message_tags[0])
            report.not_mine += message_tags
            continue
        report.expired.append(
            ExpiredMessage(
                digest,
                message.recipient,
                _shown_name(message, opening, client),
                message.created_at,
                message.expires_at,
                message_tags,
            )
        )
        plan += _plan_message(repo, verifier, scan, message, attached, proof)
    plan = _once_each(plan)
    manifests = [d for d in plan if d.kind != "blob"]
    doomed = {d.digest for d in manifests}
    # 5.
    blobs = _unnamed(repo, doomed, [d for d in plan if d.kind == "blob"])
    report.planned = manifests + blobs
    if dry_run or not (report.planned or report.deferred):
        if not dry_run and leftover:
            save_journal(journal, [])
        return report
    # 6.
    save_journal(journal, report.planned + report.deferred)
    # 7.
    if _delete_all(client, manifests, report, journal, rest=blobs + report.deferred):
        blobs = _second_look(repo, scan.tags, doomed, blobs)
        _delete_all(client, blobs, report, journal, rest=report.deferred)
    return report


def _plan_message(
    repo: _Repository,
    verifier: BundleVerifier,
    scan: _Scan,
    message: manifests.Message,
    attached: _Attachments,
    proof: list[_Bundle],
) -> list[Deletion]:
    """Steps 3 and 4 for one message proven mine: what to delete, in order."""
    subject = message.digest

    def deletion(kind: Kind, digest: str, note: str = "") -> Deletion:
        return Deletion(kind, digest, subject, note)

    plan = [deletion("message", subject, message.tag or message.filename)]
    blobs: list[Deletion] = []
    for receipt in attached.receipts:
        plan.append(deletion("receipt", receipt.digest, "receipt"))
        of_receipt = _attachments(repo, scan, receipt.digest)
        plan += [deletion("bundle", b.digest, "receipt bundle") for b in of_receipt.bundles]
        if of_receipt.index:
            index_tag = protocol.referrers_fallback_tag(receipt.digest)
            plan.append(deletion("index", of_receipt.index, index_tag))
        signed = _verified(
            repo.client, verifier, receipt.digest, of_receipt.bundles, receipt.sender
        )
        blobs += [deletion("blob", b.blob.digest, "receipt bundle blob") for b in signed]
    if attached.index:
        plan.append(deletion("index", attached.index, protocol.referrers_fallback_tag(subject)))
    plan += [deletion("bundle", b.digest, "bundle") for b in attached.bundles]
    blobs += [deletion("blob", b.blob.digest, "bundle blob") for b in proof]
    blobs += [deletion("blob", layer.digest, "chunk") for layer in message.chunks]
    return plan + blobs


def _unnamed(repo: _Repository, doomed: set[str], blobs: list[Deletion]) -> list[Deletion]:
    """Step 5: the blob deletions rule (c) allows; the rest are deferred or dropped."""
    if not repo.complete:
        repo.report.deferred += blobs
        return []
    live = repo.live_names(doomed)
    kept = [d for d in blobs if d.digest in live]
    repo.report.shared_blobs += len(kept)
    for deletion in kept:
        log.info("gc: keeping %s %s: a live manifest names it", deletion.note, deletion.digest[:19])
    return [d for d in blobs if d.digest not in live]


def _second_look(
    repo: _Repository, seen: set[str], doomed: set[str], blobs: list[Deletion]
) -> list[Deletion]:
    """Step 7, before the blobs: count manifests tagged since the scan as live too."""
    if not blobs:
        return blobs
    try:
        tags = _valid_tags(repo.client.list_tags())
    except DockerCommsError as exc:
        repo.incomplete(f"cannot list the tags again ({shown(exc.diagnostics(), 400)})")
    else:
        for tag in sorted(tags - seen):
            repo.read(tag)
    return _unnamed(repo, doomed, blobs)


def _once_each(deletions: list[Deletion]) -> list[Deletion]:
    """Drop repeats (the same chunk at two indexes; a journal entry found again)."""
    seen: set[str] = set()
    unique: list[Deletion] = []
    for deletion in deletions:
        if deletion.digest not in seen:
            seen.add(deletion.digest)
            unique.append(deletion)
    return unique


# --- deleting ----------------------------------------------------------------------------


def _delete_all(
    client: RegistryClient,
    plan: list[Deletion],
    report: GcReport,
    journal: Path | None,
    *,
    rest: list[Deletion],
) -> bool:
    """Delete in order; False when the run must stop (refused or failing).

    The journal keeps whatever is not done (``rest`` included), except after a
    refusal: a registry that does not allow deletion will not allow it next run
    either, and a fresh scan finds everything again once it does.
    """
    for position, deletion in enumerate(plan):
        try:
            refusal = _delete(client, deletion)
        except DockerCommsError as exc:
            detail = shown(exc.diagnostics(), 400)
            report.errors.append(f"deleting {deletion.kind} {deletion.digest}: {detail}")
            save_journal(journal, plan[position:] + rest)
            return False
        if refusal is not None:
            report.unsupported = refusal
            save_journal(journal, [])
            return False
        report.deleted.append(deletion)
        log.info("gc: deleted %s %s (%s)", deletion.kind, deletion.digest[:19], deletion.note)
    save_journal(journal, rest)
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
        stream=True,
        ok=(200, 202, 204, 404, 405),
        what=f"DELETE {deletion.kind} {deletion.digest[:19]}",
    )
    try:
        if response.status_code != 405:
            return None
        return f"HTTP 405 {_error_text(_head(response.iter_content(8192)))}".strip()
    finally:
        response.close()


def _head(pieces: Iterator[bytes]) -> bytes:
    """The first :data:`MAX_ERROR_BYTES` of a body (the rest is never read)."""
    kept = bytearray()
    for piece in pieces:
        kept += piece
        if len(kept) >= MAX_ERROR_BYTES:
            break
    return bytes(kept[:MAX_ERROR_BYTES])


def _error_text(body: bytes) -> str:
    """A registry's error body as one escaped line: its errors' codes and messages."""
    try:
        errors = parse_json_object(body, "error", max_bytes=MAX_ERROR_BYTES).get("errors")
    except DockerCommsError:
        errors = None
    if isinstance(errors, list) and errors:
        return "; ".join(
            f"{shown(e.get('code'))}: {shown(e.get('message'))}"
            for e in errors[:5]
            if isinstance(e, dict)
        )
    return shown(body.decode("utf-8", "replace").strip())


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
        return self.workspace.paths.gc_journal

    def run_once(self, *, dry_run: bool = False) -> GcReport:
        """Delete my expired messages (or, with ``dry_run``, say what would go)."""
        paths = self.workspace.paths
        paths.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            with (
                filelock.FileLock(paths.gc_lock, timeout=LOCK_SECONDS),
                self.workspace.client(self.options) as client,
            ):
                return collect_garbage(
                    client,
                    self.workspace.verifier(),
                    self.workspace.identity,
                    now=self.clock(),
                    dry_run=dry_run,
                    journal=self.journal_path,
                    opening=Opening(self.workspace.paths.age_identity_file),
                )
        except filelock.Timeout as exc:
            raise DockerCommsError(
                f"another gc run of {self.workspace.identity} has held {exc.lock_file} "
                f"for {LOCK_SECONDS:.0f}s"
            ) from exc
