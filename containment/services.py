"""EDR containment requests (docs/integrations.md#edr-containment): the only place that creates
containment jobs and records what an endpoint's state read says. The engine applies every law to the job it
creates (authority, sites, kill switch, approval, history); this adds containment's own rules:
the ``request_containment`` capability, an asset outside the caller's sites is not found, a
second isolate is the first one, and there is nothing to release before an isolation."""

from __future__ import annotations

import ipaddress
import socket
import uuid

from django.conf import settings
from django.utils import timezone

from containment.models import ContainmentAction, ContainmentJob, ContainmentState
from rmm.access import roles as access
from rmm.core.errors import Conflict, InvalidInput, NotFound
from rmm.engine import services as engine
from rmm.engine.states import ACTIVE, JobStatus
from rmm.history import services as history
from rmm.inventory.models import Asset
from rmm.outbox import services as outbox

CHANGED = "containment.changed"  # the outbox event of a state read that changed the asset's containment
ACTION = "containment_job.create"
MAX_REASON = 2000


def request(user, *, asset_id, action: str, reason: str, psa_task_id) -> tuple[ContainmentJob, bool]:
    """Isolate or release one asset on a PSA task's authority: the job, and whether it is new.

    An isolate of an asset that is contained, or being contained, answers with that job (no
    second rule set); so does a release of one being released. A release of an asset that is
    neither contained nor being contained is a conflict (409)."""
    engine.require_role(user, "request_containment", ACTION)
    if action not in ContainmentAction.values:
        raise InvalidInput(f"Must be one of: {', '.join(ContainmentAction.values)}.", field="action")
    reason = (reason or "").strip()
    if not reason or len(reason) > MAX_REASON or "\x00" in reason:
        raise InvalidInput(f"Say why, in at most {MAX_REASON} characters.", field="reason")
    asset = _asset(user, asset_id)
    jobs = ContainmentJob.objects.filter(asset=asset).select_related("psa_task")
    active = {job.action: job for job in jobs.filter(status__in=ACTIVE).order_by("created_at")}
    if action == ContainmentAction.ISOLATE:
        if ContainmentAction.ISOLATE in active:
            return active[ContainmentAction.ISOLATE], False
        if asset.containment == ContainmentState.CONTAINED and ContainmentAction.RELEASE not in active:
            last = jobs.filter(action=ContainmentAction.ISOLATE, status=JobStatus.SUCCEEDED).first()
            if last is not None:
                return last, False
    else:
        if ContainmentAction.RELEASE in active:
            return active[ContainmentAction.RELEASE], False
        if asset.containment != ContainmentState.CONTAINED and ContainmentAction.ISOLATE not in active:
            _refuse(user, asset, Conflict(f"The asset is not contained ({asset.containment}): nothing to release."))
    endpoints, dns = server_endpoints(user, asset)
    job = engine.create_job(
        user,
        "containment",
        asset_id=asset.pk,
        psa_task_id=psa_task_id,
        action=action,
        reason=reason,
        server_endpoints=endpoints,
        dns=dns,
    )
    return job, True


def _asset(user, asset_id) -> Asset:
    """The asset, of a site the caller may see; any other is not found (404, recorded)."""
    try:
        pk = uuid.UUID(str(asset_id))
    except ValueError:
        raise InvalidInput("Must be an asset's id.", field="asset") from None
    asset = Asset.objects.filter(pk=pk, site__in=access.visible_sites(user)).first()
    if asset is None:
        history.record_refusal(user, ACTION, reason="no such asset in the caller's sites", payload={"asset": str(pk)})
        raise NotFound("No such asset.", field="asset")
    return asset


def _refuse(user, asset: Asset, error: Exception) -> None:
    history.record_refusal(
        user, ACTION, asset, reason=error.detail.rstrip("."), site_id=asset.site_id, payload={"asset": str(asset.pk)}
    )
    raise error


def server_endpoints(user, asset: Asset) -> tuple[list[list], bool]:
    """``RMM_CONTAINMENT_SERVER`` (``host:port`` entries, comma-separated: how agents reach this
    server) resolved now, so that the endpoint needs no DNS to reach them, and whether DNS must
    stay open all the same (an entry is a name, which the agent resolves on every connection)."""
    found, dns = [], False
    for entry in settings.RMM_CONTAINMENT_SERVER:
        host, _, port = entry.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            _refuse(user, asset, Conflict(f"RMM_CONTAINMENT_SERVER entry {entry!r} is not host:port."))
        try:
            ipaddress.ip_address(host)
        except ValueError:
            dns = True
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except OSError as exc:
            _refuse(user, asset, Conflict(f"The server's address {host} does not resolve: {exc}."))
        for info in infos:
            address = info[4][0].split("%")[0]
            if [address, int(port)] not in found:
                found.append([address, int(port)])
    if not found:
        _refuse(
            user,
            asset,
            Conflict("This server does not know the address its agents reach it at (RMM_CONTAINMENT_SERVER)."),
        )
    return found, dns


def record_state(job: ContainmentJob, inst, result: dict) -> dict | None:
    """The agent's state read (the job's last step): the asset's ``containment`` as it reported it,
    in the history, as ``{"state": …, "was": …}``. Actual state, written from the agent's report
    only (Law 2). None for the change step, and for a read that says nothing usable."""
    document = result.get("structured") if inst.step == 1 else None
    if not isinstance(document, dict) or not isinstance(document.get("contained"), bool):
        return None
    state = ContainmentState.CONTAINED if document["contained"] else ContainmentState.RELEASED
    asset = job.asset
    before = Asset.objects.filter(pk=asset.pk).values_list("containment", flat=True).first()
    if not document["contained"] and before == ContainmentState.NONE:
        state = ContainmentState.NONE  # never contained: nothing was released
    Asset.objects.filter(pk=asset.pk).update(containment=state)
    asset.containment = state
    history.append(
        f"agent:{inst.agent_id}",
        "containment.state",
        asset,
        site_id=job.site_id,
        payload={
            "job": str(job.pk),
            "action": job.action,
            "state": state,
            "was": before,
            "table_present": document.get("table_present"),
        },
    )
    return {"state": state, "was": before}


def state_recorded(job: ContainmentJob, read: dict, record) -> None:
    """Once the read's evidence exists: the outbox tells the PSA and every subscriber, when the
    asset's containment changed (a read that finds what was already recorded tells nobody)."""
    if read["state"] != read["was"]:
        outbox.emit(CHANGED, job, site_id=job.site_id, data=changed_event(job, read["state"], record.pk))


def changed_event(job: ContainmentJob, state: str, evidence_id) -> dict:
    """``containment.changed``'s data (docs/integrations.md)."""
    return {
        "asset": str(job.asset_id),
        "hostname": job.asset.hostname,
        "site": job.site.name,
        "containment": state,
        "action": job.action,
        "reason": job.reason,
        "job": str(job.pk),
        "psa_task_id": str(job.psa_task_id),
        "psa_case_id": str(job.psa_task.case_id),
        "requested_by": job.requested_by.get_username(),
        "evidence_id": str(evidence_id),
        "observed_at": timezone.now(),
    }


def asset_panel(asset: Asset, user) -> dict:
    """The console asset page's panel: the state in its word and the newest requests (one query)."""
    jobs = list(ContainmentJob.objects.filter(asset=asset).select_related("requested_by").order_by("-created_at")[:5])
    return {"state": asset.containment, "jobs": jobs}
