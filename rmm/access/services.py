"""API tokens, roles and site grants: who may call, and where (issue 13 part 8: access control is
an app of its own, not part of the PSA's authority)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from guardian.models import UserObjectPermission
from guardian.shortcuts import assign_perm, get_users_with_perms, remove_perm

from rmm.access import changes as access_changes
from rmm.access import roles as access
from rmm.access.models import ApiToken
from rmm.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from rmm.history import services as history
from rmm.inventory.models import Site

LAST_USED_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often per token


class TokenRefused(Exception):
    """A bearer token that is not (or no longer) valid; the message says why (the 401's detail)."""


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_privileged(user) -> bool:
    """Whether ``user`` holds approve or admin power: its tokens need the server or a second factor."""
    return access.can(user, "approve") or access.can(user, "manage_access")


def _expiry(privileged: bool, hours: float | None, now):
    """Privileged tokens always expire (RMM_PRIVILEGED_TOKEN_HOURS unless ``hours`` says otherwise);
    others after RMM_TOKEN_HOURS, or never when that is 0."""
    if hours is None:
        hours = settings.RMM_PRIVILEGED_TOKEN_HOURS if privileged else settings.RMM_TOKEN_HOURS
    if not hours or hours <= 0:
        if privileged:
            raise InvalidInput("An approver or admin token must expire.", field="hours")
        return None
    return now + timedelta(hours=hours)


def _create_token(user, name: str, actor, *, hours: float | None) -> tuple[str, ApiToken]:
    # Read afresh: a role added since ``user`` was loaded must count (roles are cached per object).
    privileged = is_privileged(get_user_model()._default_manager.get(pk=user.pk))
    now = timezone.now()
    expires_at = _expiry(privileged, hours, now)
    prefix = secrets.token_hex(6)
    token = f"rmm_{prefix}_{secrets.token_urlsafe(32)}"
    with transaction.atomic():
        row = ApiToken.objects.create(
            user=user,
            name=name,
            prefix=prefix,
            token_hash=_hash(token),
            expires_at=expires_at,
            privileged=privileged,
            issued_by=history.actor_of(actor),
        )
        history.append(
            actor,
            "api_token.issued",
            row,
            payload={
                "user": user.get_username(),
                "name": name,
                "prefix": prefix,
                "privileged": privileged,
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
        )
    return token, row


def issue_token(user, name: str = "", actor=None, *, hours: float | None = None) -> str:
    """Create a token for ``user`` on the server itself (``rmm_token``) and return it; only its hash
    is kept. The server's operator may issue any user's token, approvers' and admins' included."""
    return _create_token(user, name, actor, hours=hours)[0]


def issue_own_token(user, *, name: str = "", second_factor: bool) -> tuple[str, ApiToken]:
    """A person's own token, from a console session. One that could approve or administer is issued
    only when the session passed its second factor (``second_factor``): a token must not be a way
    around it. Its lifetime is the configured one."""
    if not user.is_authenticated or not user.is_active:
        raise Forbidden("Sign in first.")
    if is_privileged(user) and not second_factor:
        history.record_refusal(user, "api_token.issue", reason="approver or admin token without a second factor")
        raise Forbidden("An approver or admin token is issued only after a second factor: sign in with a code.")
    if len(name) > 200:
        raise InvalidInput("At most 200 characters.", field="name")
    return _create_token(user, name, user, hours=None)


def visible_tokens(user):
    """The tokens ``user`` may see and revoke: its own; every token for a superuser or an admin
    granted every site (``manage_access`` there)."""
    rows = ApiToken.objects.select_related("user").order_by("-created_at")
    if user is None or not user.is_authenticated or not user.is_active:
        return rows.none()
    if access.can(user, "manage_access") and access.sees_all_sites(user):
        return rows
    return rows.filter(user=user)


def revoke_token(user, token_id, reason: str = "") -> ApiToken:
    """Revoke a token at once (its next call answers 401). Only its owner, or an admin over every
    site, may; anyone else is told it does not exist (recorded)."""
    row = ApiToken.objects.select_related("user").filter(pk=token_id).first()
    if row is None or not visible_tokens(user).filter(pk=row.pk).exists():
        if row is not None:
            history.record_refusal(user, "api_token.revoke", row, reason="not the caller's token")
        raise NotFound("Not found.")
    return _revoke(row, user, reason)


def revoke_token_on_server(token_id, *, reason: str = "", actor: str = "cli") -> ApiToken:
    """The server's operator revokes any token (``rmm_tokens revoke``)."""
    row = ApiToken.objects.select_related("user").filter(pk=token_id).first()
    if row is None:
        raise NotFound("No such token.")
    return _revoke(row, actor, reason)


def _revoke(row: ApiToken, actor, reason: str) -> ApiToken:
    """One conditional update: a token revoked already answers 409, and two revocations at once
    cannot both succeed."""
    with transaction.atomic():
        done = ApiToken.objects.filter(pk=row.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now(), revoked_by=history.actor_of(actor)
        )
        if not done:
            raise Conflict("This token is revoked already.")
        history.append(
            actor,
            "api_token.revoked",
            row,
            payload={"user": row.user.get_username(), "prefix": row.prefix, "reason": reason},
        )
    row.refresh_from_db()
    return row


def authenticate_token(token: str) -> tuple:
    """``rmm_<prefix>_<secret>`` → (its user, the token row), or TokenRefused saying why.

    One query, plus at most one write a minute per token for ``last_used_at`` (never for agents:
    they do not use bearer tokens).
    """
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "rmm":
        raise TokenRefused("Not an RMM API token.")
    row = ApiToken.objects.select_related("user").filter(prefix=parts[1]).first()
    if row is None or not hmac.compare_digest(row.token_hash, _hash(token)):
        raise TokenRefused("Unknown token.")
    now = timezone.now()
    if row.revoked_at is not None:
        raise TokenRefused(f"This token was revoked at {row.revoked_at.isoformat()}.")
    if row.expires_at is not None and row.expires_at <= now:
        raise TokenRefused(f"This token expired at {row.expires_at.isoformat()}.")
    if not row.user.is_active:
        raise TokenRefused("This token's user is deactivated.")
    if not row.privileged and is_privileged(row.user):
        raise TokenRefused(
            "This token was issued before its user could approve or administer; "
            "such a user needs a token issued on the server or after a second factor."
        )
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_EVERY:
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
        row.last_used_at = now
    row.user.api_token = row  # decisions through this request name the token (history.actor_of)
    return row.user, row


def ensure_user_with_role(username: str, role: str, actor=None):
    """Create the user if needed and put it in ``role`` (a group)."""
    if role not in access.ROLES:
        raise InvalidInput(f"Unknown role; choose one of {', '.join(access.ROLES)}.", field="role")
    User = get_user_model()
    with transaction.atomic(), access_changes.recorded_by_service():
        access.ensure_role_groups()
        user, created = User.objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()
        # Approvers and admins work in the Django admin approval queue.
        if role in {"admin", "approver"} and not user.is_staff:
            user.is_staff = True
        user.save()
        user.groups.add(Group.objects.get(name=role))
        history.append(actor, "user.role_granted", user, payload={"username": username, "role": role})
    return user


def create_person(actor, *, username: str, password: str, role: str, site: Site | None):
    """A new person who signs in to the console with ``password``, in ``role``, granted ``site``
    (None: every site). Made by an admin in the browser (the People page), so that a first run
    needs no ``rmm_token`` or ``changepassword``; an approver or admin still sets up a second
    factor at its first sign-in. The admin may grant only a site it sees itself, and every site
    only when it sees every site (refusals recorded)."""
    if not access.can(actor, "manage_access"):
        history.record_refusal(actor, "user.create", reason="role may not manage people")
        raise Forbidden("Only an admin may add people.")
    if site is None and not access.sees_all_sites(actor):
        history.record_refusal(actor, "user.create", reason="every site granted by an admin of some sites")
        raise Forbidden("Only an admin of every site may grant every site.", field="site")
    if site is not None and not access.may_see_site(actor, site.pk):
        history.record_refusal(actor, "user.create", reason="site not visible to the admin", site_id=site.pk)
        raise InvalidInput("Choose one of your sites.", field="site")
    username = (username or "").strip()
    User = get_user_model()
    try:
        User(username=username).clean_fields(exclude=["password"])
    except ValidationError as exc:
        raise InvalidInput(
            " ".join(exc.message_dict.get("username", ["Not a valid username."])), field="username"
        ) from None
    if User.objects.filter(username__iexact=username).exists():
        raise Conflict(f"Someone is already called {username}.", field="username")
    try:
        validate_password(password, User(username=username))
    except ValidationError as exc:
        raise InvalidInput(" ".join(exc.messages), field="password") from None
    with transaction.atomic():
        user = ensure_user_with_role(username, role, actor)
        user.set_password(password)
        user.save(update_fields=["password"])
        grant_site(user, site, actor)
    return user


def people():
    """Every person, with their roles and the names of the sites they are granted one by one
    (``site_names``; ``every_site`` for the every-site grant): three queries, for the People page."""
    User = get_user_model()
    users = list(User.objects.order_by("username").prefetch_related("groups", "user_permissions"))
    perm = _site_permission()
    names = dict(Site.objects.values_list("pk", "name"))
    granted: dict[int, list[str]] = {}
    for user_id, object_pk in UserObjectPermission.objects.filter(permission=perm).values_list("user_id", "object_pk"):
        granted.setdefault(user_id, []).append(names.get(_site_pk(object_pk), object_pk))
    for user in users:
        user.role_names = sorted(g.name for g in user.groups.all() if g.name in access.ALL)
        user.every_site = user.is_superuser or perm in user.user_permissions.all()
        user.site_names = sorted(granted.get(user.pk, []))
    return users


def grants_of(person) -> tuple[bool, set]:
    """(whether ``person`` holds the every-site grant, the pks of the sites granted one by one),
    read from the grants themselves: a deactivated person's too (``visible_sites`` sees none)."""
    perm = _site_permission()
    every = person.is_superuser or person.user_permissions.filter(pk=perm.pk).exists()
    pks = UserObjectPermission.objects.filter(user=person, permission=perm).values_list("object_pk", flat=True)
    return every, {_site_pk(pk) for pk in pks}


def why_not_manage(actor, person) -> str:
    """Why ``actor`` may not change ``person`` (empty if it may). An admin of some sites changes only
    people whose every grant is one of its own sites: it cannot lock out, widen or take over anyone
    who works beyond them. Only a superuser changes a superuser."""
    if not access.can(actor, "manage_access"):
        return "Only an admin may manage people."
    if person.is_superuser and not actor.is_superuser:
        return f"{person.get_username()} is a superuser: only a superuser may change them."
    if access.sees_all_sites(actor):
        return ""
    every, pks = grants_of(person)
    if every or pks - set(access.visible_sites(actor).values_list("pk", flat=True)):
        return f"{person.get_username()} holds sites you do not: only an admin of all their sites may change them."
    return ""


def require_manage(actor, person, action: str) -> None:
    """Forbidden, recorded as ``refused.<action>``, unless ``actor`` may change ``person``."""
    reason = why_not_manage(actor, person)
    if reason:
        history.record_refusal(actor, action, person, reason=reason, payload={"username": person.get_username()})
        raise Forbidden(reason)


def _refuse(actor, action: str, person, error: Exception, reason: str) -> history.Refused:
    """A refusal of ``person``'s change, to raise inside the transaction that checked it."""
    return history.Refused(error, actor, action, person, reason=reason, payload={"username": person.get_username()})


def _require_an_admin_left(actor, person, action: str) -> None:
    """Inside the change's transaction: refuse when ``person`` is the last active admin (role admin,
    or superuser). The admin group's row is locked first, so two admins taking each other's role or
    account at once are checked one after the other and cannot both succeed."""
    Group.objects.select_for_update().filter(name="admin").first()
    admins = get_user_model().objects.filter(is_active=True).filter(Q(is_superuser=True) | Q(groups__name="admin"))
    if not admins.exclude(pk=person.pk).exists():
        raise _refuse(
            actor,
            action,
            person,
            Conflict(f"{person.get_username()} is the last active admin: make someone else an admin first."),
            "the last active admin",
        )


def change_access(actor, person, *, roles: set[str], every_site: bool, sites: set[Site]) -> list[str]:
    """Give ``person`` exactly these roles and sites (``every_site``: the every-site grant) and return
    what changed, in words. Each role and grant added or taken is recorded (``user.role_granted``,
    ``user.role_revoked``, ``access.site_granted``, ``access.site_revoked``) and the person's open
    consoles are told (rmm/access/changes.py). The admin grants only its own sites, every site only
    when it sees every site; nobody takes the admin role from the last active admin."""
    require_manage(actor, person, "user.change_access")
    unknown = sorted(set(roles) - access.ALL)
    if unknown:
        raise InvalidInput(f"Unknown role {unknown[0]}; choose among {', '.join(access.ROLES)}.", field="roles")
    every_before, pks_before = grants_of(person)
    if every_site and not every_before and not access.sees_all_sites(actor):
        history.record_refusal(
            actor, "user.change_access", person, reason="every site granted by an admin of some sites"
        )
        raise Forbidden("Only an admin of every site may grant every site.", field="sites")
    mine = set(access.visible_sites(actor).values_list("pk", flat=True))
    foreign = sorted(site.name for site in sites if site.pk not in mine)
    if foreign:
        history.record_refusal(actor, "user.change_access", person, reason="site not visible to the admin")
        raise InvalidInput(f"Choose among your sites ({foreign[0]} is not one).", field="sites")
    roles_before = set(person.groups.filter(name__in=access.ALL).values_list("name", flat=True))
    added, removed = sorted(set(roles) - roles_before), sorted(roles_before - set(roles))
    wanted = {site.pk: site for site in sites}
    changes: list[str] = []
    with history.refusals_recorded(), transaction.atomic(), access_changes.recorded_by_service():
        if "admin" in removed and person.is_active:
            _require_an_admin_left(actor, person, "user.change_access")
        access.ensure_role_groups()
        for role in added:
            person.groups.add(Group.objects.get(name=role))
            history.append(actor, "user.role_granted", person, payload={"username": person.username, "role": role})
            changes.append(f"role {role} given")
        for role in removed:
            person.groups.remove(Group.objects.get(name=role))
            history.append(actor, "user.role_revoked", person, payload={"username": person.username, "role": role})
            changes.append(f"role {role} taken")
        if {"admin", "approver"} & set(added) and not person.is_staff:
            person.is_staff = True  # approvers and admins work in the Django admin's approval queue
            person.save(update_fields=["is_staff"])
        if every_site != every_before and not person.is_superuser:
            _change_site(person, None, actor, grant=every_site)
            changes.append("every site " + ("granted" if every_site else "taken"))
        for site in Site.objects.filter(pk__in=pks_before - set(wanted)).order_by("name"):
            revoke_site(person, site, actor)
            changes.append(f"site {site.name} taken")
        for pk in sorted(set(wanted) - pks_before, key=lambda pk: wanted[pk].name):
            grant_site(person, wanted[pk], actor)
            changes.append(f"site {wanted[pk].name} granted")
    return changes


def set_password(actor, person, password: str) -> None:
    """An admin gives ``person`` a new password (one they lost, or one they must stop using). It is
    checked by the configured validators; every session signed in with the old one ends (Django
    checks a session against the password). Recorded as ``user.password_set``, never the password."""
    require_manage(actor, person, "user.set_password")
    try:
        validate_password(password, person)
    except ValidationError as exc:
        raise InvalidInput(" ".join(exc.messages), field="password") from None
    with transaction.atomic():
        person.set_password(password)
        person.save(update_fields=["password"])
        history.append(actor, "user.password_set", person, payload={"username": person.get_username()})


def deactivate_person(actor, person, reason: str) -> int:
    """``person`` can no longer sign in, their sessions end (Django refuses an inactive user's
    session), their open consoles are closed, and their live API tokens are revoked (so a later
    reactivation does not bring them back); returns how many. Their history, jobs and approvals
    stay. Refused, and recorded: oneself, one deactivated already, the last active admin."""
    require_manage(actor, person, "user.deactivate")
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("Say why: it is kept in the person's history.", field="reason")
    if person.pk == actor.pk:
        history.record_refusal(actor, "user.deactivate", person, reason="own account")
        raise Conflict("You cannot deactivate yourself: ask another admin.")
    with history.refusals_recorded(), transaction.atomic(), access_changes.recorded_by_service():
        if access.can(person, "manage_access"):
            _require_an_admin_left(actor, person, "user.deactivate")  # locks the admins first
        if not get_user_model().objects.select_for_update().get(pk=person.pk).is_active:
            raise _refuse(actor, "user.deactivate", person, Conflict("Deactivated already."), "deactivated already")
        person.is_active = False
        person.save(update_fields=["is_active"])  # changes.py tells the person's consoles: they close
        now, by = timezone.now(), history.actor_of(actor)
        tokens = list(ApiToken.objects.filter(user=person, revoked_at__isnull=True))
        ApiToken.objects.filter(pk__in=[t.pk for t in tokens]).update(revoked_at=now, revoked_by=by)
        for token in tokens:
            history.append(
                actor,
                "api_token.revoked",
                token,
                payload={"user": person.get_username(), "prefix": token.prefix, "reason": "person deactivated"},
            )
        history.append(
            actor,
            "user.deactivated",
            person,
            payload={"username": person.get_username(), "reason": reason, "tokens_revoked": len(tokens)},
        )
    return len(tokens)


def reactivate_person(actor, person) -> None:
    """``person`` may sign in again with their password (and second factor); tokens revoked when
    they were deactivated stay revoked. Recorded as ``user.reactivated``."""
    require_manage(actor, person, "user.reactivate")
    with history.refusals_recorded(), transaction.atomic(), access_changes.recorded_by_service():
        locked = get_user_model().objects.select_for_update().get(pk=person.pk)
        if locked.is_active:
            raise _refuse(actor, "user.reactivate", person, Conflict("Active already."), "active already")
        person.is_active = True
        person.save(update_fields=["is_active"])
        history.append(actor, "user.reactivated", person, payload={"username": person.get_username()})


def _site_pk(object_pk: str):
    return Site._meta.pk.to_python(object_pk)


def _site_permission() -> Permission:
    return Permission.objects.get(codename="access_site", content_type__app_label="inventory")


def grant_site(user, site: Site | None, actor=None) -> None:
    """Grant ``user`` one site (guardian object permission) or, with None, every site."""
    _change_site(user, site, actor, grant=True)


def revoke_site(user, site: Site | None, actor=None) -> None:
    """Take back one site's grant (or, with None, the every-site grant)."""
    _change_site(user, site, actor, grant=False)


def _change_site(user, site: Site | None, actor, *, grant: bool) -> None:
    with transaction.atomic(), access_changes.recorded_by_service():
        if site is None:
            perms = user.user_permissions
            (perms.add if grant else perms.remove)(_site_permission())
        else:
            (assign_perm if grant else remove_perm)(access.SITE_PERMISSION, user, site)
        history.append(
            actor,
            "access.site_granted" if grant else "access.site_revoked",
            user,
            site_id=site.pk if site else None,
            payload={"username": user.get_username(), "site": site.name if site else "*"},
        )


def site_grantees(site: Site):
    """Users granted this site, one by one (every-site holders are listed apart)."""
    return get_users_with_perms(site, only_with_perms_in=["access_site"], with_group_users=True)
