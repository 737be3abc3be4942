"""Compliance exports: requested by compliance staff, built in the task cluster
(:mod:`evidence.bundle_builder`), watched by the sweep, and downloaded rechecked against their
hash."""

from __future__ import annotations

import hashlib
import logging
import uuid
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from evidence import services, types
from evidence.bundle_builder import Builder, export_event
from evidence.models import EvidenceExport, ExportStatus
from rmm.access import roles as access
from rmm.authority.models import PsaCase
from rmm.core.errors import Conflict, Forbidden, InvalidInput
from rmm.core.on_commit import enqueue_on_commit
from rmm.engine import events
from rmm.history import services as history
from rmm.inventory.models import Asset

logger = logging.getLogger(__name__)

ACTIVE = {ExportStatus.QUEUED, ExportStatus.RUNNING}

# --- requesting -------------------------------------------------------------------------------


def _parse_time(value, field: str) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, str):
        parsed = parse_datetime(value)
        if parsed is None and parse_date(value) is not None:
            parsed = datetime.combine(parse_date(value), datetime.min.time())
        if parsed is None:
            raise InvalidInput("Give a date or a date and time (ISO 8601).", field=field)
        value = parsed
    if timezone.is_naive(value):
        value = timezone.make_aware(value, UTC)
    return value


def _resolve_assets(user, refs, site) -> list[str]:
    """Assets by id or hostname, within the caller's sites (and the chosen site)."""
    scope = Asset.objects.filter(site__in=access.visible_sites(user))
    if site is not None:
        scope = scope.filter(site=site)
    ids = set()
    for ref in refs:
        ref = str(ref).strip()
        if not ref:
            continue
        try:
            match = list(scope.filter(pk=uuid.UUID(ref)).values_list("pk", flat=True))
        except ValueError:
            match = list(scope.filter(hostname=ref).values_list("pk", flat=True))
        if not match:
            raise InvalidInput(f"No asset {ref!r} that you may use.", field="assets")
        ids.update(str(pk) for pk in match)
    return sorted(ids)


def request_export(
    user,
    *,
    site: str | None = None,
    assets=None,
    psa_case=None,
    evidence_types=None,
    since=None,
    until=None,
) -> EvidenceExport:
    """Check and record the request; the bundle is built in the background after commit."""
    services._require(user, "export_evidence", "evidence_export.request")
    filters: dict = {}
    chosen_site = None
    if site:
        chosen_site = services.resolve_site(user, site)
        filters["site"] = {"id": str(chosen_site.pk), "name": chosen_site.name}
    if assets:
        filters["assets"] = _resolve_assets(user, assets, chosen_site)
    if psa_case:
        try:
            case = PsaCase.objects.filter(pk=uuid.UUID(str(psa_case)), site__in=access.visible_sites(user)).first()
        except ValueError:
            case = None
        if case is None:
            raise InvalidInput("No such PSA case.", field="psa_case")
        filters["psa_case"] = str(case.pk)
    if evidence_types:
        unknown = sorted(set(evidence_types) - set(types.exportable()))
        if types.HISTORY_ANCHOR in unknown:
            raise InvalidInput("History anchors come with every bundle; they are not items.", field="evidence_types")
        if unknown:
            raise InvalidInput(f"Unknown evidence types: {', '.join(unknown)}.", field="evidence_types")
        filters["evidence_types"] = sorted(set(evidence_types))
    since, until = _parse_time(since, "since"), _parse_time(until, "until")
    if since and until and since >= until:
        raise InvalidInput("Must be after the start date (since).", field="until")
    if since:
        filters["since"] = since.isoformat()
    if until:
        filters["until"] = until.isoformat()
    with transaction.atomic():
        export = EvidenceExport.objects.create(requested_by=user, filters=filters)
        history.append(
            user,
            "evidence_export.requested",
            export,
            site_id=chosen_site.pk if chosen_site else None,
            payload={"filters": filters},
        )
        enqueue_on_commit("evidence.tasks.run_export", str(export.pk))
        events.publish_user(user.pk, export_event(export))
    return export


def visible_exports(user) -> QuerySet[EvidenceExport]:
    """An export is its requester's (its sites were the requester's); superusers see all."""
    if user is None or not user.is_authenticated:
        return EvidenceExport.objects.none()
    qs = EvidenceExport.objects.select_related("requested_by")
    return qs if user.is_superuser else qs.filter(requested_by=user)


def run_export(export_id: str) -> str | None:
    """The background task: take the export (once), build it, record how it ended.

    Each build is one attempt; only the build that holds the current attempt records the end,
    so a build the sweep gave up on (:func:`sweep_exports`) and queued again ends nothing."""
    now = timezone.now()
    won = EvidenceExport.objects.filter(pk=export_id, status=ExportStatus.QUEUED).update(
        status=ExportStatus.RUNNING, started_at=now, heartbeat_at=now, progress=0, attempts=F("attempts") + 1
    )
    if not won:
        return None  # another worker has it, or it has ended
    export = EvidenceExport.objects.select_related("requested_by").get(pk=export_id)
    events.publish_user(export.requested_by_id, export_event(export))
    mine = EvidenceExport.objects.filter(pk=export.pk, status=ExportStatus.RUNNING, attempts=export.attempts)
    try:
        result = Builder(export).build()
    except Exception as exc:  # noqa: BLE001 - any failure ends the export, loudly and recorded
        logger.exception("evidence export %s failed", export_id)
        error = str(getattr(exc, "detail", exc))[:2000] or exc.__class__.__name__
        with transaction.atomic():
            if not mine.update(status=ExportStatus.FAILED, error=error, finished_at=timezone.now()):
                return _taken_over(export)
            history.append("system", "evidence_export.failed", export, payload={"error": error})
        export.refresh_from_db()
        events.publish_user(export.requested_by_id, export_event(export))
        return ExportStatus.FAILED
    with transaction.atomic():
        if not mine.update(
            status=ExportStatus.DONE,
            progress=100,
            item_count=result["items"],
            file_name=result["file_name"],
            file_hash=result["sha256"],
            file_size=result["size"],
            anchor_sequence=result["anchor_sequence"],
            site_ids=result["site_ids"],
            error=result["warning"],
            finished_at=timezone.now(),
        ):
            return _taken_over(export, result["file_name"])
        history.append(
            "system",
            "evidence_export.finished",
            export,
            payload={
                "bundle_sha256": result["sha256"],
                "items": result["items"],
                "anchor_sequence": result["anchor_sequence"],
                "file": result["file_name"],
                "size": result["size"],
            },
        )
        export.refresh_from_db()
        events.publish_user(export.requested_by_id, export_event(export))
    return ExportStatus.DONE


def _taken_over(export: EvidenceExport, file_name: str = "") -> None:
    """This build outlived the sweep's patience: the export was queued again (or failed) meanwhile."""
    logger.warning(
        "evidence export %s: build %d ended after the sweep gave up on it; its outcome is not recorded%s",
        export.pk,
        export.attempts,
        f" (its bundle {file_name} stays unreferenced)" if file_name else "",
    )


def sweep_exports(now: datetime | None = None) -> dict[str, int]:
    """Exports nobody is building any more (every minute, in the task cluster).

    A running export silent for ``RMM_EXPORT_STALE_SECONDS`` lost its builder (the cluster died
    mid-build, or the build ran past the task timeout): it is queued again, or failed with the
    reason once ``RMM_EXPORT_MAX_ATTEMPTS`` builds have started. A queued export that silent lost
    its task (the broker was down when it was queued): its task is sent again. Each export is
    handled alone; one that fails is logged and the rest go on.
    """
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.RMM_EXPORT_STALE_SECONDS)
    silent = Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True, requested_at__lt=stale)
    counts = {"resumed": 0, "failed": 0, "requeued": 0, "alive": 0}
    for export in EvidenceExport.objects.filter(silent, status__in=ACTIVE).order_by("requested_at")[:100]:
        try:
            counts[_sweep_one(export, now, silent)] += 1
        except Exception:
            logger.exception("evidence export %s: the sweep could not resume it", export.pk)
    return counts


def _sweep_one(export: EvidenceExport, now: datetime, silent: Q) -> str:
    """Re-send, resume or fail one silent export, by a conditional update (a builder that shows
    life meanwhile keeps it); which it was, or "alive"."""
    if export.status == ExportStatus.QUEUED:
        with transaction.atomic():
            if not EvidenceExport.objects.filter(silent, pk=export.pk, status=ExportStatus.QUEUED).update(
                heartbeat_at=now
            ):
                return "alive"
            enqueue_on_commit("evidence.tasks.run_export", str(export.pk))
        logger.warning("evidence export %s: queued but never taken; its task is sent again", export.pk)
        return "requeued"
    since = (export.heartbeat_at or export.requested_at).isoformat()
    running = EvidenceExport.objects.filter(silent, pk=export.pk, status=ExportStatus.RUNNING, attempts=export.attempts)
    with transaction.atomic():
        if export.attempts >= settings.RMM_EXPORT_MAX_ATTEMPTS:
            outcome, error = (
                "failed",
                f"Its build stopped without finishing {export.attempts} times (no progress since {since}): "
                "the task cluster died, or the build ran past the task timeout. Request it again.",
            )
            if not running.update(status=ExportStatus.FAILED, error=error, finished_at=now):
                return "alive"
            history.append("system", "evidence_export.failed", export, payload={"error": error})
        else:
            outcome = "resumed"
            if not running.update(status=ExportStatus.QUEUED, heartbeat_at=now, progress=0):
                return "alive"
            history.append(
                "system",
                "evidence_export.resumed",
                export,
                payload={"attempt": export.attempts, "reason": f"its build stopped (no progress since {since})"},
            )
            enqueue_on_commit("evidence.tasks.run_export", str(export.pk))
        export.refresh_from_db()
        events.publish_user(export.requested_by_id, export_event(export))
    logger.warning(
        "evidence export %s: build %d stopped (no progress since %s): %s", export.pk, export.attempts, since, outcome
    )
    return outcome


# --- downloading ------------------------------------------------------------------------------


def open_bundle(user, export: EvidenceExport):
    """The finished bundle, rechecked against the hash recorded when it was made. The caller must
    still hold the export role and every site it covers: a grant taken back since is honoured."""
    services._require(user, "export_evidence", "evidence_export.download", export)
    if export.status != ExportStatus.DONE:
        raise Conflict(f"This export is {export.status}, not done.")
    visible = {str(pk) for pk in access.visible_sites(user).values_list("pk", flat=True)}
    if not set(export.site_ids) <= visible:
        history.record_refusal(user, "evidence_export.download", export, reason="covers sites the caller may not see")
        raise Forbidden("This export covers sites you may no longer see.")
    sha = hashlib.sha256()
    try:
        with default_storage.open(export.file_name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                sha.update(chunk)
    except (FileNotFoundError, OSError):
        raise Conflict("The bundle is missing from the store.") from None
    if sha.hexdigest() != export.file_hash:
        history.record_refusal(user, "evidence_export.download", export, reason="bundle does not match its hash")
        raise Conflict("The stored bundle does not match the hash recorded when it was made.")
    history.append(user, "evidence_export.downloaded", export, payload={"bundle_sha256": export.file_hash})
    return default_storage.open(export.file_name, "rb")
