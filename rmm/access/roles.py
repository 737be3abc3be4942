"""Roles, capabilities and the one site selector.

Roles are Django groups. What a caller may *do* comes from its roles; *where* it may do it
comes from grants on sites (django-guardian object permissions, or the model-wide
permission for an all-sites grant). Every queryset, view, export and websocket group
restricts by :func:`visible_sites`.
"""

from __future__ import annotations

from django.contrib.auth.models import Group
from django.db.models import QuerySet
from guardian.shortcuts import get_objects_for_user

from rmm.inventory.models import Site

ROLES = ("admin", "technician", "approver", "compliance", "psa", "edr", "scanner")
ALL = frozenset(ROLES)

CAPABILITIES: dict[str, frozenset[str]] = {
    "view": ALL,
    "manage_authority": frozenset({"admin", "psa"}),
    "author_scripts": frozenset({"admin", "technician"}),
    "approve": frozenset({"admin", "approver"}),
    "request_jobs": frozenset({"admin", "technician", "psa", "edr", "scanner"}),
    "view_evidence": ALL,
    # compliance exports and legal holds (docs/evidence.md); retention itself runs as the system
    "export_evidence": frozenset({"admin", "compliance"}),
    "manage_legal_holds": frozenset({"admin", "compliance"}),
    # anyone who may operate a site may stop it
    "manage_agents": frozenset({"admin"}),
    "manage_access": frozenset({"admin"}),
    # the patch catalog: advisories imported through the API (docs/patching.md)
    "import_advisories": frozenset({"admin", "scanner"}),
    # vulnerability findings: a scanner (or pen tester) reports them and verifies their fix
    "report_findings": frozenset({"admin", "scanner"}),
    # webhook subscriptions (docs/integrations.md), within the sites one may see
    "manage_integrations": frozenset({"admin"}),
    # an EDR's isolate or release of an endpoint's network (docs/integrations.md#edr-containment)
    "request_containment": frozenset({"admin", "edr"}),
    # a remote session on an asset (docs/sessions.md): a person at a terminal, never an integration
    "open_sessions": frozenset({"admin", "technician"}),
    "engage_kill_switch": frozenset({"admin", "technician", "approver", "psa", "edr", "scanner"}),
}
SITE_PERMISSION = "inventory.access_site"


def roles_of(user) -> frozenset[str]:
    if user is None or not user.is_authenticated:
        return frozenset()
    cached = getattr(user, "_rmm_roles", None)
    if cached is None:
        cached = frozenset(user.groups.values_list("name", flat=True)) & ALL
        user._rmm_roles = cached
    return cached


def can(user, capability: str) -> bool:
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    return bool(roles_of(user) & CAPABILITIES[capability])


def visible_sites(user) -> QuerySet[Site]:
    """The sites this caller may see and operate. Everything else is as if it did not exist."""
    if user is None or not user.is_authenticated or not user.is_active:
        return Site.objects.none()
    if user.is_superuser:
        return Site.objects.all()
    return get_objects_for_user(user, SITE_PERMISSION, klass=Site, accept_global_perms=True)


def sees_all_sites(user) -> bool:
    """Superusers and holders of the all-sites grant (the model-wide permission)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    return user.is_superuser or user.has_perm(SITE_PERMISSION)


def may_see_site(user, site_id) -> bool:
    return visible_sites(user).filter(pk=site_id).exists()


def ensure_role_groups() -> None:
    for name in ROLES:
        Group.objects.get_or_create(name=name)
