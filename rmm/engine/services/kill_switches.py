"""The kill switch wins (Law 6): checked at job creation, approval, lease and every heartbeat."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from rmm.access import roles as access
from rmm.core.errors import Conflict, Forbidden, InvalidInput
from rmm.engine import events
from rmm.engine.models import Instruction, KillSwitch, KillSwitchScope
from rmm.history import services as history
from rmm.inventory.models import Asset
from rmm.outbox import services as outbox

log = logging.getLogger(__name__)

SCOPES = {choice.value for choice in KillSwitchScope}


def active_for(site_id, asset_id) -> KillSwitch | None:
    """The engaged switch covering this asset, if any (one query)."""
    return (
        KillSwitch.objects.filter(released_at__isnull=True)
        .filter(
            Q(scope=KillSwitchScope.GLOBAL)
            | Q(scope=KillSwitchScope.SITE, site_id=site_id)
            | Q(scope=KillSwitchScope.ASSET, asset_id=asset_id)
        )
        .order_by("engaged_at")
        .first()
    )


def active_for_any(site_id, asset_ids) -> KillSwitch | None:
    """The engaged switch covering any of these assets of one site, if any (one query)."""
    asset_ids = set(asset_ids)
    for switch in (
        KillSwitch.objects.filter(released_at__isnull=True)
        .filter(Q(scope=KillSwitchScope.GLOBAL) | Q(site_id=site_id))
        .select_related("site", "asset")
        .order_by("engaged_at")
    ):
        if switch.scope != KillSwitchScope.ASSET or switch.asset_id in asset_ids:
            return switch
    return None


def engaged_visible_to(user):
    """Engaged switches the user should be warned about: global ones and those of its sites."""
    sites = access.visible_sites(user)
    return (
        KillSwitch.objects.filter(released_at__isnull=True)
        .filter(Q(scope=KillSwitchScope.GLOBAL) | Q(site__in=sites))
        .select_related("site", "asset", "engaged_by")
    )


def visible_to(user):
    """Every switch, engaged or released, the user may see (global ones and those of its sites),
    newest first: the kill switch page's history."""
    sites = access.visible_sites(user)
    return (
        KillSwitch.objects.filter(Q(scope=KillSwitchScope.GLOBAL) | Q(site__in=sites))
        .select_related("site", "asset", "engaged_by", "released_by")
        .order_by("-engaged_at")
    )


def refuse_if_engaged(asset: Asset, actor, action: str, subject=None, *, under_lock: bool = False) -> None:
    """Refuse new work on an asset under an engaged switch, and record the refusal. ``under_lock``:
    called inside the transaction that queues the work, after :func:`history.lock`; the refusal is
    then raised as :class:`history.Refused`, recorded once that transaction has rolled back."""
    switch = active_for(asset.site_id, asset.pk)
    if switch is not None:
        refused = history.Refused(
            Forbidden(f"A kill switch is engaged on {switch.target_label}: {switch.reason}"),
            actor,
            action,
            subject,
            reason=f"kill switch engaged on {switch.target_label}",
            site_id=asset.site_id,
            payload={"kill_switch": str(switch.pk), "asset": str(asset.pk)},
        )
        if under_lock:
            raise refused
        history.record_refusal(refused.actor, action, subject, **refused.refusal)
        raise refused.error


def _in_scope(switch: KillSwitch):
    return in_scope(switch, Instruction.objects.all())


def in_scope(switch: KillSwitch, queryset: QuerySet) -> QuerySet:
    """The rows of ``queryset`` (a model with ``site`` and ``asset``) in the switch's scope."""
    if switch.scope == KillSwitchScope.SITE:
        return queryset.filter(site_id=switch.site_id)
    if switch.scope == KillSwitchScope.ASSET:
        return queryset.filter(asset_id=switch.asset_id)
    return queryset


# Work that acts on endpoints outside one instruction (a batch's later rings, a live remote session)
# registers here, in its AppConfig.ready: each hook, called with (switch, actor) once the switch is
# engaged, stops its work in the switch's scope.
_HOOKS: list[Callable[[KillSwitch, Any], Any]] = []


def register_hook(stop: Callable[[KillSwitch, Any], Any]) -> None:
    if stop not in _HOOKS:
        _HOOKS.append(stop)


def engage(user, *, scope: str, target: str | None, reason: str) -> KillSwitch:
    """Anyone who may operate a site may stop it; global needs access to every site."""
    if not access.can(user, "engage_kill_switch"):
        history.record_refusal(user, "kill_switch.engage", reason="role may not engage a kill switch")
        raise Forbidden("Your role may not engage a kill switch.")
    if scope not in SCOPES:
        raise InvalidInput(f"Must be one of: {', '.join(sorted(SCOPES))}.", field="scope")
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("Say why the kill switch is engaged.", field="reason")
    sites = access.visible_sites(user)
    site = asset = None
    if scope == KillSwitchScope.GLOBAL:
        if target:
            raise InvalidInput("A global kill switch has no target.", field="target")
        if not access.sees_all_sites(user):
            history.record_refusal(user, "kill_switch.engage", reason="global scope needs access to every site")
            raise Forbidden("A global kill switch needs access to every site.")
    elif scope == KillSwitchScope.SITE:
        site = sites.filter(name=target or "").first()
        if site is None:
            raise InvalidInput("No site of that name that you may operate.", field="target")
    else:
        asset = Asset.objects.filter(pk=_uuid(target), site__in=sites).select_related("site").first()
        if asset is None:
            raise InvalidInput("No asset with that id that you may operate.", field="target")
        site = asset.site
    with transaction.atomic():
        switch = KillSwitch.objects.create(scope=scope, site=site, asset=asset, reason=reason, engaged_by=user)
        history.append(
            user,
            "kill_switch.engaged",
            switch,
            site_id=site.pk if site else None,
            payload={"scope": scope, "target": switch.target_label, "reason": reason},
        )
        outbox.emit("kill_switch.engaged", switch, site_id=switch.site_id, data=switch_event(switch))
        _announce(switch)
    aborted = abort_in_scope(switch, user)
    history.append(
        user,
        "kill_switch.queued_aborted",
        switch,
        site_id=site.pk if site else None,
        payload={"aborted_instructions": aborted},
    )
    for stop in _HOOKS:  # batches (none releases more rings), live sessions, …
        _run_hook(stop, switch, user)
    return switch


def _run_hook(stop: Callable[[KillSwitch, Any], Any], switch: KillSwitch, user) -> None:
    """The switch is engaged whatever a hook does: one that fails is recorded, loudly, and the
    others still run."""
    name = f"{stop.__module__}.{stop.__qualname__}"
    try:
        with transaction.atomic():
            stop(switch, user)
    except Exception as exc:  # noqa: BLE001 - any failure of one app's hook must not spare the others
        log.exception("kill switch hook %s failed", name)
        history.append(
            "system",
            "kill_switch.hook_failed",
            switch,
            site_id=switch.site_id,
            payload={"hook": name, "error": f"{type(exc).__name__}: {exc}"[:500]},
        )


def abort_in_scope(switch: KillSwitch, actor) -> int:
    """Queued work in scope never starts; running work is killed at its agent's next heartbeat."""
    from rmm.engine.services import stopping

    return stopping.stop_instructions(
        _in_scope(switch), actor, f"kill switch engaged on {switch.target_label}: {switch.reason}"
    )


def release(user, switch: KillSwitch, reason: str) -> KillSwitch:
    """Releasing needs an approver and a reason; of two releases at once, one wins."""
    if not access.can(user, "approve"):
        history.record_refusal(user, "kill_switch.release", switch, reason="releasing needs the approver role")
        raise Forbidden("Releasing a kill switch needs the approver role.")
    covers_all = switch.scope == KillSwitchScope.GLOBAL
    if (covers_all and not access.sees_all_sites(user)) or (
        not covers_all and not access.may_see_site(user, switch.site_id)
    ):
        history.record_refusal(
            user,
            "kill_switch.release",
            switch,
            reason="the switch covers sites the caller may not operate",
            site_id=switch.site_id,
        )
        raise Forbidden("Releasing this kill switch needs access to every site it covers.")
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("Say why the kill switch may be released.", field="reason")
    with transaction.atomic():
        won = KillSwitch.objects.filter(pk=switch.pk, released_at__isnull=True).update(
            released_at=timezone.now(), released_by=user, release_reason=reason
        )
        if not won:
            raise Conflict("This kill switch is already released.")
        switch.refresh_from_db()
        history.append(
            user,
            "kill_switch.released",
            switch,
            site_id=switch.site_id,
            payload={"target": switch.target_label, "reason": reason},
        )
        outbox.emit("kill_switch.released", switch, site_id=switch.site_id, data=switch_event(switch))
        _announce(switch)
    return switch


def switch_event(switch: KillSwitch) -> dict:
    """What the outbox tells about a switch (``kill_switch.engaged`` / ``.released``)."""
    return {
        "id": str(switch.pk),
        "scope": switch.scope,
        "target": switch.target_label,
        "site": str(switch.site_id) if switch.site_id else None,
        "asset": str(switch.asset_id) if switch.asset_id else None,
        "reason": switch.reason,
        "engaged_by": switch.engaged_by.get_username(),
        "engaged_at": switch.engaged_at,
        "released": not switch.engaged,
        "released_by": switch.released_by.get_username() if switch.released_by_id else None,
        "release_reason": switch.release_reason or None,
    }


def _announce(switch: KillSwitch) -> None:
    event = {
        "type": "kill_switch",
        "id": str(switch.pk),
        "engaged": switch.engaged,
        "target": switch.target_label,
        "reason": switch.reason,
    }
    if switch.site_id:
        events.publish(switch.site_id, event)
    else:
        events.publish_all(event)


def _uuid(value):
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError):
        return None
