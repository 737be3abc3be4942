"""Retention: evidence older than its type's policy leaves the store, but only through a recorded
run, and never while a legal hold covers its site or PSA case.

Each deletion first writes a tombstone (the database refuses to delete an evidence row without
one) and a history event carrying the item's hash, so the history still proves that the item
existed and what its content hashed to. History anchors are never deleted: they are the proof.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from evidence import services, types
from evidence.models import EvidenceDisposal, LegalHold, RetentionRun, RmmEvidence
from rmm.history import services as history

BATCH = 500


def policy() -> dict[str, int]:
    """Days to keep each evidence type (RMM_EVIDENCE_RETENTION_DAYS); a type not named is kept forever."""
    configured = dict(getattr(settings, "RMM_EVIDENCE_RETENTION_DAYS", {}) or {})
    for evidence_type, days in configured.items():
        if not types.is_registered(evidence_type):
            raise ImproperlyConfigured(f"RMM_EVIDENCE_RETENTION_DAYS: unknown evidence type {evidence_type!r}")
        if evidence_type == types.HISTORY_ANCHOR:
            raise ImproperlyConfigured("RMM_EVIDENCE_RETENTION_DAYS: history anchors are kept forever")
        if not isinstance(days, int) or days < 1:
            raise ImproperlyConfigured(f"RMM_EVIDENCE_RETENTION_DAYS: {evidence_type} needs a whole number of days")
    return configured


def _held() -> Q:
    """Evidence that an active legal hold covers (read inside each batch's transaction)."""
    holds = LegalHold.objects.filter(released_at__isnull=True)
    sites = list(holds.filter(site__isnull=False).values_list("site_id", flat=True))
    cases = list(holds.filter(psa_case__isnull=False).values_list("psa_case_id", flat=True))
    return Q(site_id__in=sites) | Q(psa_case_id__in=cases)


def _dispose(run: RetentionRun, actor: str, evidence_type: str, cutoff) -> list[RmmEvidence]:
    """One batch: tombstones, history events with the hashes, then the rows, in one transaction."""
    with transaction.atomic():
        rows = list(
            RmmEvidence.objects.filter(evidence_type=evidence_type, captured_at__lt=cutoff)
            .exclude(_held())
            .order_by("captured_at", "id")[:BATCH]
        )
        if not rows:
            return []
        now = timezone.now()
        EvidenceDisposal.objects.bulk_create(
            [
                EvidenceDisposal(
                    evidence_id=row.pk,
                    evidence_type=row.evidence_type,
                    hash=row.hash,
                    storage_uri=row.storage_uri,
                    related_entity=row.related_entity,
                    related_id=row.related_id,
                    asset_id=row.asset_id,
                    site_id=row.site_id,
                    psa_case_id=row.psa_case_id,
                    captured_at=row.captured_at,
                    recorded_sequence=row.history_sequence,
                    retention_run=run,
                    disposed_at=now,
                )
                for row in rows
            ]
        )
        history.append_many(
            history.Event(
                actor,
                "evidence.disposed",
                "evidence.rmmevidence",
                str(row.pk),
                row.site_id,
                {
                    "evidence_type": row.evidence_type,
                    "hash": row.hash,
                    "related": f"{row.related_entity}:{row.related_id}",
                    "captured_at": row.captured_at.isoformat(),
                    "recorded_sequence": row.history_sequence,
                    "retention_run": str(run.pk),
                },
            )
            for row in rows
        )
        RmmEvidence.objects.filter(pk__in=[row.pk for row in rows]).delete()
    return rows


def run_retention(actor="system", *, now=None) -> RetentionRun:
    """Apply the policy once. Blobs go after their records are gone, unless another record shares them."""
    rules = policy()
    now = now or timezone.now()
    actor = history.actor_of(actor)
    with transaction.atomic():
        run = RetentionRun.objects.create(actor=actor, policy=rules)
        history.append(actor, "retention.started", run, payload={"policy": rules})
    deleted: dict[str, int] = {}
    held = 0
    for evidence_type, days in sorted(rules.items()):
        cutoff = now - timedelta(days=days)
        held += RmmEvidence.objects.filter(evidence_type=evidence_type, captured_at__lt=cutoff).filter(_held()).count()
        while rows := _dispose(run, actor, evidence_type, cutoff):
            deleted[evidence_type] = deleted.get(evidence_type, 0) + len(rows)
            for row in rows:
                if not RmmEvidence.objects.filter(hash=row.hash).exists():
                    default_storage.delete(services.storage_name(row))
    total = sum(deleted.values())
    with transaction.atomic():
        RetentionRun.objects.filter(pk=run.pk).update(finished_at=timezone.now(), deleted_count=total, held_count=held)
        history.append(actor, "retention.finished", run, payload={"deleted": deleted, "held": held})
    run.refresh_from_db()
    return run
