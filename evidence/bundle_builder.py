"""Building one compliance bundle (one ZIP that an auditor verifies offline with the verify.py
inside it), for :func:`evidence.exports.run_export`.

A bundle holds the chosen evidence items (their blobs and a signed manifest), the history
segment that records them, the signed anchors that end each window of that segment, readable
reports, and verify.py. It is built item by item: rows come from the database in chunks, each
blob goes straight into the ZIP, and the per-item lines of the manifest, index and reports go to
spool files on disk, so memory does not grow with the number of items (apart from the ZIP's own
directory, a small record per file).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

from django.core.files import File
from django.core.files.storage import default_storage
from django.db.models import Min, QuerySet
from django.utils import timezone

from evidence import anchors as history_anchors
from evidence import report, services, types
from evidence.models import EvidenceDisposal, EvidenceExport, ExportStatus, RmmEvidence
from evidence.pdf import StreamingPdf
from rmm.access import roles as access
from rmm.core.errors import Conflict
from rmm.engine import events
from rmm.history import services as history
from rmm.history.models import HistoryEvent
from rmm.keys import keyset
from rmm_agent.protocol import canonical_json

logger = logging.getLogger("evidence.exports")  # one logger for exports, as operators filter it (docs/operations.md)

FORMAT = "rmm-evidence-export/1"
PURPOSE = "rmm.evidence_export"
VERIFY_PY = Path(__file__).resolve().parent / "bundle" / "verify.py"
README_TXT = VERIFY_PY.with_name("README.txt")  # what the auditor reads first, beside verify.py
SMALL_BLOB = 8 * 1024 * 1024  # read whole (and summarised); larger blobs are streamed
ROWS_CHUNK = 2000
EVENTS_CHUNK = 5000
PROGRESS_SECONDS = 1.0
HEARTBEAT_SECONDS = 10.0  # a build writes a sign of life at least this often (RMM_EXPORT_STALE_SECONDS is far longer)
ALWAYS_FULL_ACTIONS = {history_anchors.ANCHORED}  # site-less events every bundle may show


def server_key_document(keys: keyset.KeySet, signer: keyset.Key, anchors: dict) -> dict:
    """server_key.json: the key that signs the manifest and, when the bundle's anchors were
    signed by keys it succeeded, those keys and the rotation statements that link them (each
    signed by the key before and the key after), so verify.py can follow the chain offline."""
    used = {signer.key_id} | {anchor.key_id for anchor, _blob in anchors.values()}
    rotations = keys.chain(keyset.EVIDENCE, used)
    listed = [k for k in keys.keys(keyset.EVIDENCE) if k.key_id in used or k.rotation in rotations]
    return {
        "algorithm": "Ed25519",
        "key_id": signer.key_id,
        "public_key": signer.public_key_b64,
        "fingerprint": signer.fingerprint,
        "keys": [{"key_id": k.key_id, "public_key": k.public_key_b64, "fingerprint": k.fingerprint} for k in listed],
        "rotations": rotations,
    }


def export_event(export: EvidenceExport) -> dict:
    """The live event its requester sees as an export moves (console and API)."""
    return {
        "type": "evidence_export",
        "id": str(export.pk),
        "status": export.status,
        "progress": export.progress,
        "item_count": export.item_count,
        "error": export.error,
        "download": f"/api/v1/evidence/exports/{export.pk}/download/" if export.status == ExportStatus.DONE else None,
    }


# --- building ---------------------------------------------------------------------------------


def _chunked(qs: QuerySet, key: str):
    """Rows in order of a unique ``key``, a chunk at a time, each chunk read whole.

    Not ``iterator()``: on SQLite an open read statement keeps this process's writes (progress,
    refusals) uncommitted, holding the write lock for the whole export.
    """
    last = None
    while True:
        page = qs.order_by(key)
        if last is not None:
            page = page.filter(**{f"{key}__gt": last})
        chunk = list(page[:ROWS_CHUNK])
        if not chunk:
            return
        yield from chunk
        last = getattr(chunk[-1], key)


@dataclass
class Window:
    start: int
    anchor: history_anchors.Anchor
    anchor_blob: bytes


class _Hashing:
    """A write-through wrapper that hashes what passes."""

    def __init__(self, raw):
        self.raw, self.sha, self.size = raw, hashlib.sha256(), 0

    def write(self, data: bytes) -> None:
        self.raw.write(data)
        self.sha.update(data)
        self.size += len(data)


class Builder:
    def __init__(self, export: EvidenceExport):
        self.export = export
        self.user = export.requested_by
        self.prefix = f"rmm-evidence-{export.pk}/"
        self.files: dict[str, str] = {}
        self.last_progress = (0.0, -1)

    # selection

    def sites(self):
        """The requester's sites now (grants may have shrunk since the request), within the filter."""
        sites = access.visible_sites(self.user)
        chosen = self.export.filters.get("site")
        if chosen:
            sites = sites.filter(pk=chosen["id"])
        return list(sites.order_by("name"))

    def items(self, site_ids, head: int) -> QuerySet[RmmEvidence]:
        qs = RmmEvidence.objects.filter(
            site_id__in=site_ids, history_sequence__isnull=False, history_sequence__lte=head
        ).exclude(evidence_type=types.HISTORY_ANCHOR)
        return self.filtered(qs)

    def disposals(self, site_ids) -> QuerySet[EvidenceDisposal]:
        return self.filtered(EvidenceDisposal.objects.filter(site_id__in=site_ids))

    def filtered(self, qs: QuerySet) -> QuerySet:
        """The export's filters, applied alike to the items and to the records of disposed ones
        (both carry the asset, case, type and capture time), so a bundle never lists a disposal
        outside its own selection."""
        f = self.export.filters
        if f.get("assets"):
            qs = qs.filter(asset_id__in=f["assets"])
        if f.get("psa_case"):
            qs = qs.filter(psa_case_id=f["psa_case"])
        if f.get("evidence_types"):
            qs = qs.filter(evidence_type__in=f["evidence_types"])
        if f.get("since"):
            qs = qs.filter(captured_at__gte=f["since"])
        if f.get("until"):
            qs = qs.filter(captured_at__lt=f["until"])
        return qs

    def usable_anchors(self, lowest: int, head: int) -> list[tuple[history_anchors.Anchor, bytes]]:
        """Anchors from ``lowest`` up to the export's own, each rechecked (hash and signature)."""
        trusted = history_anchors.trusted_keys()
        rows = RmmEvidence.objects.filter(
            evidence_type=types.HISTORY_ANCHOR,
            related_id__gte=uuid.UUID(int=lowest),
            related_id__lte=uuid.UUID(int=head),
        )
        usable = []
        for row in _chunked(rows, "history_sequence"):
            try:
                data = services.read_blob(row)
                usable.append((history_anchors.parse_anchor(services.storage_name(row), data, trusted), data))
            except (Conflict, history_anchors.AnchorProblem) as exc:
                logger.warning("export %s skips anchor %s: %s", self.export.pk, row.pk, exc)
        return sorted(usable, key=lambda pair: pair[0].sequence)

    # progress

    def progress(self, percent: int, items: int | None = None) -> None:
        """Write the progress (at most every PROGRESS_SECONDS), which is also the build's sign of
        life: unchanged, it is written again every HEARTBEAT_SECONDS (:func:`sweep_exports`)."""
        now = time.monotonic()
        last_time, last_percent = self.last_progress
        if now - last_time < PROGRESS_SECONDS and percent < 100:
            return
        if percent == last_percent and now - last_time < HEARTBEAT_SECONDS:
            return
        self.last_progress = (now, percent)
        update = {"progress": percent, "heartbeat_at": timezone.now()}
        if items is not None:
            update["item_count"] = items
        EvidenceExport.objects.filter(pk=self.export.pk).update(**update)
        if percent == last_percent:
            return
        self.export.progress = percent
        if items is not None:
            self.export.item_count = items
        events.publish_user(self.export.requested_by_id, export_event(self.export))

    # zip helpers

    def add_file(self, zf: zipfile.ZipFile, relative: str, path: Path) -> None:
        sha = hashlib.sha256()
        with open(path, "rb") as src, zf.open(self.prefix + relative, "w", force_zip64=True) as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                sha.update(chunk)
                dst.write(chunk)
        self.files[relative] = sha.hexdigest()

    def add_bytes(self, zf: zipfile.ZipFile, relative: str, data: bytes, listed: bool = True) -> None:
        zf.writestr(self.prefix + relative, data)
        if listed:
            self.files[relative] = hashlib.sha256(data).hexdigest()

    def copy_blob(self, zf: zipfile.ZipFile, row: RmmEvidence, relative: str) -> tuple[str | None, object]:
        """Copy one blob into the bundle; (problem, parsed document or None)."""
        try:
            fh = services.open_blob(row)
        except Conflict as exc:
            return exc.detail, None
        name = self.prefix + relative
        already = name in zf.NameToInfo  # the same content recorded twice is stored once
        with fh:
            first = fh.read(SMALL_BLOB + 1)
            sha = hashlib.sha256(first)
            if len(first) <= SMALL_BLOB:
                if not already:
                    zf.writestr(name, first)
            elif already:
                for chunk in iter(lambda: fh.read(services.CHUNK), b""):
                    sha.update(chunk)
            else:
                with zf.open(name, "w", force_zip64=True) as out:
                    out.write(first)
                    for chunk in iter(lambda: fh.read(services.CHUNK), b""):
                        sha.update(chunk)
                        out.write(chunk)
        if sha.hexdigest() != row.hash:
            history.record_refusal(
                "system", "evidence.read", row, reason="blob does not match its hash", site_id=row.site_id
            )
            return "the stored blob does not match its recorded hash", None
        document = None
        if len(first) <= SMALL_BLOB and relative.endswith(".json"):
            try:
                document = json.loads(first)
            except ValueError:
                document = None
        return None, document

    # the bundle

    def build(self) -> dict:
        sites = self.sites()
        site_ids = [s.pk for s in sites]
        own_anchor = history_anchors.anchor_history(actor="system")
        head = own_anchor.related_id.int
        items = self.items(site_ids, head)
        total = items.count()
        lowest = items.aggregate(low=Min("history_sequence"))["low"] or head
        anchors = self.usable_anchors(lowest, head)
        if not anchors or anchors[-1][0].sequence != head:
            raise Conflict("The export's own history anchor could not be read back.")
        full_siteless = access.sees_all_sites(self.user) and not self.export.filters.get("site")
        keys = keyset.current()
        signer = keys.signer(keyset.EVIDENCE)
        started = timezone.now()
        facts = [
            ("Export", str(self.export.pk)),
            ("Requested by", self.user.get_username()),
            ("Requested at", self.export.requested_at.isoformat()),
            ("Generated at", started.isoformat()),
            ("Sites", ", ".join(s.name for s in sites) or "(none)"),
            ("Filters", json.dumps(self.export.filters, sort_keys=True)),
            ("History covered up to event", str(head)),
            ("Server key fingerprint", signer.fingerprint),
        ]
        with tempfile.TemporaryDirectory(prefix="rmm-export-") as tmpdir:
            tmp = Path(tmpdir)
            zip_path = tmp / "bundle.zip"
            with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
                windows, counts, problems = self.write_items(zf, tmp, items, total, anchors, facts)
                self.progress(85)
                # The anchors that end the windows, and the export's own (which covers the whole selection).
                included = {w.anchor.name: (w.anchor, w.anchor_blob) for w in windows}
                included.setdefault(anchors[-1][0].name, anchors[-1])
                anchor_entries = []
                for anchor, blob in included.values():
                    relative = f"history/anchors/{anchor.name.rsplit('/', 1)[-1]}"
                    self.add_bytes(zf, relative, blob)
                    anchor_entries.append(
                        {"file": relative, "sequence": anchor.sequence, "hash": anchor.hash, "time": anchor.time}
                    )
                segment = self.write_segment(zf, tmp, windows, {str(pk) for pk in site_ids}, full_siteless)
                self.progress(95)
                disposed = self.write_disposals(tmp, site_ids)
                self.finish_reports(zf, tmp, facts, counts, problems, anchor_entries, segment, disposed)
                self.add_file(zf, "README.txt", README_TXT)
                self.add_bytes(zf, "server_key.json", canonical_json(server_key_document(keys, signer, included)))
                self.add_bytes(zf, "verify.py", VERIFY_PY.read_bytes())
                header = {
                    "format": FORMAT,
                    "export": {
                        "id": str(self.export.pk),
                        "requested_by": self.user.get_username(),
                        "requested_at": self.export.requested_at.isoformat(),
                        "generated_at": started.isoformat(),
                        "filters": self.export.filters,
                        "sites": [s.name for s in sites],
                    },
                    "server_key": {"algorithm": "Ed25519", "fingerprint": signer.fingerprint, "key_id": signer.key_id},
                    "history": segment,
                    "anchors": anchor_entries,
                    "counts": {"items": total, "by_type": counts, "problems": len(problems), "disposed": disposed[1]},
                    "files": self.files,
                }
                manifest_sha = self.write_manifest(zf, tmp, header, disposed[0])
                signed = {
                    "purpose": PURPOSE,
                    "export_id": str(self.export.pk),
                    "manifest_sha256": manifest_sha,
                    "signed_at": timezone.now().isoformat(),
                }
                self.add_bytes(
                    zf,
                    "signature.json",
                    canonical_json(
                        {
                            **signed,
                            "key_id": signer.key_id,
                            "signature": keys.sign_with(signer, canonical_json(signed)),
                            "public_key": signer.public_key_b64,
                        }
                    ),
                    listed=False,
                )
            sha = hashlib.sha256()
            with open(zip_path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    sha.update(chunk)
            size = zip_path.stat().st_size
            with open(zip_path, "rb") as fh:
                name = default_storage.save(f"exports/{self.export.pk}.zip", File(fh))
        warning = f"{len(problems)} item(s) have a damaged or missing blob: see the bundle." if problems else ""
        return {
            "items": total,
            "sha256": sha.hexdigest(),
            "size": size,
            "file_name": name,
            "anchor_sequence": head,
            "warning": warning,
            "site_ids": sorted(str(pk) for pk in site_ids),
        }

    def write_items(self, zf, tmp: Path, items, total: int, anchors, facts):
        """The one pass over the items: blobs into the ZIP, everything else into spool files."""
        windows: list[Window] = []
        counts: dict[str, int] = {}
        problems: list[str] = []
        anchor_index = 0
        # The PDF stays open until finish_reports() adds the closing sections.
        self.pdf_file = open(tmp / "report.pdf", "wb")  # noqa: SIM115
        with (
            open(tmp / "items.jsonl", "w", encoding="utf-8") as items_out,
            open(tmp / "index.csv", "w", encoding="utf-8", newline="") as csv_out,
            open(tmp / "rows.html", "w", encoding="utf-8") as html_out,
        ):
            index = csv.writer(csv_out)
            index.writerow(report.CSV_COLUMNS)
            pdf = StreamingPdf(self.pdf_file, f"RMM evidence export {self.export.pk}")
            pdf.heading(f"RMM evidence export {self.export.pk}")
            for key, value in facts:
                pdf.line(f"{key}: {value}", font="F1", size=9)
            pdf.heading("Evidence (what ran where, on whose authority, approved by whom, with what result)")
            self.pdf = pdf
            for done, row in enumerate(_chunked(items.select_related("asset", "site"), "history_sequence"), 1):
                seq = row.history_sequence
                while anchors[anchor_index][0].sequence < seq:
                    anchor_index += 1
                anchor, blob = anchors[anchor_index]
                if not windows or windows[-1].anchor.name != anchor.name:
                    windows.append(Window(seq, anchor, blob))
                relative = f"blobs/{row.hash}.{services.blob_extension(row)}"
                problem, document = self.copy_blob(zf, row, relative)
                item = {
                    "id": str(row.pk),
                    "evidence_type": row.evidence_type,
                    "hash": row.hash,
                    "blob": relative,
                    "related_entity": row.related_entity,
                    "related_id": str(row.related_id),
                    "asset": {"id": str(row.asset_id), "hostname": row.asset.hostname} if row.asset_id else None,
                    "site": row.site.name if row.site_id else None,
                    "authority": {
                        "psa_case_id": str(row.psa_case_id) if row.psa_case_id else None,
                        "psa_task_id": str(row.psa_task_id) if row.psa_task_id else None,
                    },
                    "captured_at": row.captured_at.isoformat(),
                    "history_sequence": seq,
                    "storage_uri": row.storage_uri,
                    "summary": report.summarize(row.evidence_type, document),
                }
                if problem:
                    item["problem"] = problem
                    problems.append(f"{row.pk}: {problem}")
                items_out.write(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n")
                index.writerow(report.csv_row(item))
                html_out.write(report.html_row(item))
                for text in report.pdf_lines(item):
                    pdf.line(text)
                counts[row.evidence_type] = counts.get(row.evidence_type, 0) + 1
                self.progress(int(85 * done / total) if total else 85, items=done)
        return windows, counts, problems

    def write_segment(self, zf, tmp: Path, windows: list[Window], site_ids: set[str], full_siteless: bool) -> dict:
        """The history events of each window, in full where the export may show them."""
        relative = "history/segment.jsonl"
        shown = withheld = 0
        out_path = tmp / "segment.jsonl"
        with open(out_path, "w", encoding="utf-8") as out:
            for window in windows:
                last, end = window.start - 1, window.anchor.sequence
                while last < end:
                    chunk = list(
                        HistoryEvent.objects.filter(sequence__gt=last, sequence__lte=end).order_by("sequence")[
                            :EVENTS_CHUNK
                        ]
                    )
                    if not chunk:
                        break
                    self.progress(self.export.progress)  # alive
                    for ev in chunk:
                        if ev.sequence != last + 1:
                            raise Conflict(f"History event {last + 1} is missing: the history has been altered.")
                        site = str(ev.site_id) if ev.site_id else None
                        full = (site in site_ids) if site else (full_siteless or ev.action in ALWAYS_FULL_ACTIONS)
                        if full:
                            line = {
                                "sequence": ev.sequence,
                                "created_at": ev.created_at.isoformat(),
                                "actor": ev.actor,
                                "action": ev.action,
                                "subject_type": ev.subject_type,
                                "subject_id": ev.subject_id,
                                "site_id": site,
                                "payload": ev.payload,
                                "prev_hash": ev.prev_hash,
                                "hash": ev.hash,
                            }
                            shown += 1
                        else:
                            line = {
                                "sequence": ev.sequence,
                                "prev_hash": ev.prev_hash,
                                "hash": ev.hash,
                                "withheld": True,
                            }
                            body_sha256 = hashlib.sha256(
                                history.event_body(
                                    ev.sequence,
                                    ev.created_at,
                                    ev.actor,
                                    ev.action,
                                    ev.subject_type,
                                    ev.subject_id,
                                    ev.site_id,
                                    ev.payload,
                                )
                            ).hexdigest()
                            if history.link_hash(ev.prev_hash, body_sha256) == ev.hash:
                                line["body_sha256"] = body_sha256  # a version-2 link: provable without the body
                            withheld += 1
                        out.write(json.dumps(line, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n")
                        last = ev.sequence
                        if ev.sequence == end and ev.hash != window.anchor.hash:
                            raise Conflict(
                                f"History event {end} does not match {window.anchor.label}: "
                                "the history has been altered."
                            )
                if last != end:
                    raise Conflict(f"History event {last + 1} is missing: the history has been altered.")
        self.add_file(zf, relative, out_path)
        return {
            "file": relative,
            "events": shown + withheld,
            "withheld": withheld,
            "windows": [
                {
                    "from": w.start,
                    "to": w.anchor.sequence,
                    "anchor": f"history/anchors/{w.anchor.name.rsplit('/', 1)[-1]}",
                }
                for w in windows
            ],
        }

    def write_disposals(self, tmp: Path, site_ids) -> tuple[Path, int]:
        """Items of the same selection that a retention run removed: their hashes stay on record."""
        path, count = tmp / "disposed.jsonl", 0
        with open(path, "w", encoding="utf-8") as out:
            for d in _chunked(self.disposals(site_ids), "evidence_id"):
                out.write(
                    json.dumps(
                        {
                            "id": str(d.evidence_id),
                            "evidence_type": d.evidence_type,
                            "hash": d.hash,
                            "captured_at": d.captured_at.isoformat(),
                            "recorded_sequence": d.recorded_sequence,
                            "disposed_at": d.disposed_at.isoformat(),
                            "retention_run": str(d.retention_run_id),
                        },
                        sort_keys=True,
                    )
                    + "\n"
                )
                count += 1
        return path, count

    def finish_reports(self, zf, tmp: Path, facts, counts, problems, anchor_entries, segment, disposed) -> None:
        total = sum(counts.values())
        summary = [f"{total} items"] + [f"{n} {t}" for t, n in sorted(counts.items())]
        if problems:
            summary.append(f"{len(problems)} items whose blob is damaged or missing (marked in the list)")
        anchor_lines = [f"event {a['sequence']}: {a['hash']} signed {a['time']} ({a['file']})" for a in anchor_entries]
        history_lines = [
            f"{segment['events']} events in {len(segment['windows'])} windows, {segment['withheld']} of other sites "
            "withheld (hash and link only)"
        ]
        disposed_lines = [f"{disposed[1]} items of this selection were removed by retention; see manifest.json"]
        verify_lines = [
            "Unpack the bundle and run `python3 verify.py` in its folder; it needs only Python 3.",
            "Compare the server key fingerprint above with one obtained from the operator by another route.",
        ]
        sections = [
            ("Summary", summary),
            ("History segment", history_lines),
            ("Signed history anchors", anchor_lines),
            ("Removed by retention", disposed_lines),
            ("How to verify", verify_lines),
        ]
        self.add_file(zf, "index.csv", tmp / "index.csv")
        html_path = tmp / "report.html"
        with open(html_path, "w", encoding="utf-8") as out, open(tmp / "rows.html", encoding="utf-8") as rows:
            out.write(report.html_head(f"RMM evidence export {self.export.pk}", facts))
            shutil.copyfileobj(rows, out)
            out.write(report.html_tail(sections))
        self.add_file(zf, "report.html", html_path)
        with self.pdf_file:
            for heading, lines in sections:
                self.pdf.heading(heading)
                for line in lines:
                    self.pdf.line(line, font="F1", size=8)
            self.pdf.close()
        self.add_file(zf, "report.pdf", tmp / "report.pdf")

    def write_manifest(self, zf, tmp: Path, header: dict, disposed_path: Path) -> str:
        """manifest.json, streamed: the header, then the items and disposals from their spools."""
        with zf.open(self.prefix + "manifest.json", "w", force_zip64=True) as raw:
            out = _Hashing(raw)
            head = json.dumps(header, ensure_ascii=False, sort_keys=True, indent=1)
            out.write(head[:-2].encode() + b',\n "items": [\n')
            self._copy_lines(tmp / "items.jsonl", out)
            out.write(b'],\n "disposed": [\n')
            self._copy_lines(disposed_path, out)
            out.write(b"]\n}\n")
        return out.sha.hexdigest()

    @staticmethod
    def _copy_lines(path: Path, out: _Hashing) -> None:
        first = True
        with open(path, "rb") as src:
            for line in src:
                out.write((b"" if first else b",\n") + line.rstrip(b"\n"))
                first = False
        if not first:
            out.write(b"\n")
