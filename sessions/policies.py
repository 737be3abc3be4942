"""Per-site session policy: whether sessions are allowed, whether each needs an approver, how
long one may last and stay idle. A site without its own row has the model's defaults."""

from __future__ import annotations

from sessions.models import SessionPolicy


def policy_for(site) -> SessionPolicy:
    """The site's policy, or an unsaved one with the defaults."""
    return SessionPolicy.objects.filter(site=site).first() or SessionPolicy(site=site)


def loaded_policy(site) -> SessionPolicy:
    """The policy of a site fetched with ``select_related("session_policy")`` (no query), or the
    defaults."""
    try:
        return site.session_policy
    except SessionPolicy.DoesNotExist:
        return SessionPolicy(site=site)
