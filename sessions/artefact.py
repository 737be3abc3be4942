"""Session policies as an artefact kind: each version of a site's policy is four-eyes approved
through :mod:`rmm.artefacts` before it rules the site's sessions. Registered by the app's
AppConfig.ready."""

from __future__ import annotations

from rmm.artefacts.registry import ArtefactKind
from sessions.models import SessionPolicy
from sessions.policies import RULES


def policy_content(policy: SessionPolicy) -> str:
    """The rules, one per line: what an approver reads, and what the diff from the policy in force shows."""
    return "".join(f"{rule}: {str(getattr(policy, rule)).lower()}\n" for rule in RULES)


SESSION_POLICY = ArtefactKind(
    name="session_policy",
    model=SessionPolicy,
    label="session policy",
    action_prefix="session_policy",
    content=policy_content,
    describe=str,  # "alpha v2"
    lineage="site",
    site="site",
    details=lambda policy: f"Site {policy.site.name}: its new remote sessions, and the limits of live ones.",
)
