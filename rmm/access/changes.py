"""Changes to who may do what, however they are made, go to the execution history.

Roles (group membership), grants (the every-site permission and django-guardian's site object
permissions), permissions (a user's or a group's, ``scripting.approve_privileged`` among them),
the superuser, staff and active flags, and the task cluster's schedules can be changed outside our
services: in Django's user and group admin, django-q2's admin, or ``manage.py shell``. Django's
signals are the one place every such change passes, so these receivers append it to the history
(Law 5), named after the person whose request made it (:class:`ActorMiddleware`). Changes our own
services make are recorded by them (``user.role_granted``, ``access.site_granted``) and are not
recorded twice (:func:`recorded_by_service`).

Whatever changes a user's sites also tells that user's open consoles to re-read them
(``rmm.access`` on the user's Channels group): the websocket leaves a revoked site's group at once.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from contextvars import ContextVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save

from rmm.engine import events
from rmm.history import services as history

_request: ContextVar = ContextVar("rmm_change_request", default=None)
_by_service: ContextVar[bool] = ContextVar("rmm_change_by_service", default=False)

FLAGS = ("is_superuser", "is_staff", "is_active")
# django-q2 writes these itself every time a schedule runs; they are not changes by a person
SCHEDULE_BOOKKEEPING = ("next_run", "task")


@contextmanager
def recorded_by_service():
    """Inside, the calling service records the change itself (consoles are still told)."""
    token = _by_service.set(True)
    try:
        yield
    finally:
        _by_service.reset(token)


class ActorMiddleware:
    """Names the signed-in person of the request as the actor of any change made while serving it."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        token = _request.set(request)
        try:
            return self.get_response(request)
        finally:
            _request.reset(token)

    async def __acall__(self, request):
        token = _request.set(request)
        try:
            return await self.get_response(request)
        finally:
            _request.reset(token)


def _actor():
    request = _request.get()
    user = getattr(request, "user", None) if request is not None else None
    if user is not None and user.is_authenticated:
        return user
    if len(sys.argv) > 1 and sys.argv[0].endswith("manage.py"):
        return f"cli:{sys.argv[1]}"
    return "system"


def _record(action: str, subject=None, *, payload: dict, site_id=None) -> None:
    if not _by_service.get():
        history.append(_actor(), action, subject, site_id=site_id, payload=payload)


def _tell_consoles(user_ids) -> None:
    for user_id in set(user_ids):
        events.access_changed(user_id)


def _perm_names(pks) -> list[str]:
    from django.contrib.auth.models import Permission

    return sorted(
        f"{app}.{codename}"
        for app, codename in Permission.objects.filter(pk__in=pks).values_list("content_type__app_label", "codename")
    )


# --- roles and permissions (many-to-many) ---------------------------------------------------------


def _m2m(kind: str):
    """A receiver for User.groups, User.user_permissions or Group.permissions, from either side."""

    def receiver(sender, instance, action, reverse, model, pk_set, **kwargs):
        if action == "pre_clear":
            instance._rmm_cleared = set(_related(kind, instance, reverse).values_list("pk", flat=True))
            return
        if action not in ("post_add", "post_remove", "post_clear"):
            return
        pks = pk_set if action != "post_clear" else getattr(instance, "_rmm_cleared", set())
        if not pks:
            return
        verb = "added" if action == "post_add" else "removed"
        # (owner, the things added to or removed from it) pairs, whichever side was changed
        pairs = (
            [(instance, pks)] if not reverse else [(owner, {instance.pk}) for owner in model.objects.filter(pk__in=pks)]
        )
        for owner, things in pairs:
            if kind == "groups":
                names = sorted(Group.objects.filter(pk__in=things).values_list("name", flat=True))
                _record(f"user.groups_{verb}", owner, payload={"username": owner.get_username(), "groups": names})
                _tell_consoles([owner.pk])
            elif kind == "user_permissions":
                perms = _perm_names(things)
                _record(
                    f"user.permissions_{verb}", owner, payload={"username": owner.get_username(), "permissions": perms}
                )
                _tell_consoles([owner.pk])
            else:
                perms = _perm_names(things)
                _record(f"group.permissions_{verb}", owner, payload={"group": owner.name, "permissions": perms})
                _tell_consoles(owner.user_set.values_list("pk", flat=True))

    return receiver


def _related(kind: str, instance, reverse: bool):
    if kind == "groups":
        return instance.user_set.all() if reverse else instance.groups.all()
    if kind == "user_permissions":
        return instance.user_set.all() if reverse else instance.user_permissions.all()
    return instance.group_set.all() if reverse else instance.permissions.all()


# --- users and groups ----------------------------------------------------------------------------


def _user_before(sender, instance, raw=False, update_fields=None, **kwargs):
    if raw or (update_fields is not None and not set(update_fields) & set(FLAGS)):
        instance._rmm_flags = None
        return
    old = sender.objects.filter(pk=instance.pk).values(*FLAGS).first() if instance.pk else None
    instance._rmm_flags = old


def _user_after(sender, instance, created, raw=False, **kwargs):
    if raw or not hasattr(instance, "_rmm_flags"):
        return
    before = instance._rmm_flags
    del instance._rmm_flags
    after = {flag: getattr(instance, flag) for flag in FLAGS}
    if created:
        before = {"is_superuser": False, "is_staff": False, "is_active": True}
    if before is None or before == after:
        return
    changed = {flag: after[flag] for flag in FLAGS if before[flag] != after[flag]}
    _record(
        "user.flags_changed",
        instance,
        payload={"username": instance.get_username(), "created": created, "before": before, "after": after},
    )
    if "is_active" in changed or "is_superuser" in changed:
        _tell_consoles([instance.pk])


def _user_deleted(sender, instance, **kwargs):
    _record("user.deleted", instance, payload={"username": instance.get_username()})
    _tell_consoles([instance.pk])


def _group_before(sender, instance, raw=False, **kwargs):
    instance._rmm_name = sender.objects.filter(pk=instance.pk).values_list("name", flat=True).first()


def _group_after(sender, instance, created, raw=False, **kwargs):
    before = getattr(instance, "_rmm_name", None)
    if raw or (not created and before == instance.name):
        return
    _record("group.saved", instance, payload={"group": instance.name, "before": before, "created": created})
    if not created:
        _tell_consoles(instance.user_set.values_list("pk", flat=True))


def _group_deleted(sender, instance, **kwargs):
    _record("group.deleted", instance, payload={"group": instance.name})


# --- site grants (django-guardian object permissions) ------------------------------------------


def _object_permission(verb: str):
    def receiver(sender, instance, raw=False, **kwargs):
        if raw:
            return
        for_user = hasattr(instance, "user_id")
        model = get_user_model() if for_user else Group
        holder = model.objects.filter(pk=instance.user_id if for_user else instance.group_id).first()
        if holder is None:  # the user or group itself is being deleted: recorded as such
            return
        site_id = None
        if instance.content_type.model_class().__name__ == "Site":
            site_id = instance.object_pk
        _record(
            f"access.object_permission_{verb}",
            holder,
            site_id=site_id,
            payload={
                "user" if for_user else "group": str(holder),
                "permission": f"{instance.permission.content_type.app_label}.{instance.permission.codename}",
                "object": f"{instance.content_type.app_label}.{instance.content_type.model}:{instance.object_pk}",
            },
        )
        _tell_consoles([holder.pk] if for_user else holder.user_set.values_list("pk", flat=True))

    return receiver


# --- the task cluster's schedules ------------------------------------------------------------------


def _schedule_fields(schedule) -> dict:
    return {
        f.name: str(getattr(schedule, f.attname))
        for f in schedule._meta.fields
        if f.name not in SCHEDULE_BOOKKEEPING and f.name != "id"
    }


def _schedule_before(sender, instance, raw=False, **kwargs):
    old = sender.objects.filter(pk=instance.pk).first() if instance.pk else None
    instance._rmm_schedule = _schedule_fields(old) if old is not None else None


def _schedule_after(sender, instance, created, raw=False, **kwargs):
    if raw:
        return
    before, after = getattr(instance, "_rmm_schedule", None), _schedule_fields(instance)
    if before == after:
        return
    if before is not None and set(before) == set(after):
        changed = {k for k in after if before[k] != after[k]}
        old, new = int(before["repeats"]), int(after["repeats"])
        if changed == {"repeats"} and old > 0 and new == old - 1:
            return  # django-q2 counting down a schedule's runs
    _record("schedule.saved", instance, payload={"name": instance.name, "before": before, "after": after})


def _schedule_deleted(sender, instance, **kwargs):
    _record("schedule.deleted", instance, payload={"name": instance.name, "was": _schedule_fields(instance)})


def connect() -> None:
    """Called once, from HistoryConfig.ready()."""
    from django_q.models import Schedule
    from guardian.models import GroupObjectPermission, UserObjectPermission

    User = get_user_model()
    uid = "rmm.access.changes"
    m2m_changed.connect(_m2m("groups"), sender=User.groups.through, weak=False, dispatch_uid=f"{uid}.groups")
    m2m_changed.connect(
        _m2m("user_permissions"), sender=User.user_permissions.through, weak=False, dispatch_uid=f"{uid}.uperms"
    )
    m2m_changed.connect(
        _m2m("group_permissions"), sender=Group.permissions.through, weak=False, dispatch_uid=f"{uid}.gperms"
    )
    pre_save.connect(_user_before, sender=User, dispatch_uid=f"{uid}.user_pre")
    post_save.connect(_user_after, sender=User, dispatch_uid=f"{uid}.user_post")
    post_delete.connect(_user_deleted, sender=User, dispatch_uid=f"{uid}.user_del")
    pre_save.connect(_group_before, sender=Group, dispatch_uid=f"{uid}.group_pre")
    post_save.connect(_group_after, sender=Group, dispatch_uid=f"{uid}.group_post")
    post_delete.connect(_group_deleted, sender=Group, dispatch_uid=f"{uid}.group_del")
    for model in (UserObjectPermission, GroupObjectPermission):
        post_save.connect(
            _object_permission("added"), sender=model, weak=False, dispatch_uid=f"{uid}.{model.__name__}+"
        )
        post_delete.connect(
            _object_permission("removed"), sender=model, weak=False, dispatch_uid=f"{uid}.{model.__name__}-"
        )
    pre_save.connect(_schedule_before, sender=Schedule, dispatch_uid=f"{uid}.sched_pre")
    post_save.connect(_schedule_after, sender=Schedule, dispatch_uid=f"{uid}.sched_post")
    post_delete.connect(_schedule_deleted, sender=Schedule, dispatch_uid=f"{uid}.sched_del")
