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
