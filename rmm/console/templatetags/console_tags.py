"""Template components of the console, for every app's pages."""

from __future__ import annotations

from django import template

from rmm.access import roles as access
from rmm.engine import states

register = template.Library()

STATES = ("succeeded", "failed", "aborted", "running", "pending")
WIDTH = 1000  # the bar's SVG units: segment widths are attributes, not inline styles (the CSP)


@register.inclusion_tag("console/progress.html")
def batch_progress(counts: dict[str, int], label: str = "Progress") -> dict:
    """A bar with one segment per state (the counts of :func:`rmm.engine.services.batches.totals`
    or one ring of ``batches.progress``), and the counts in words beside it."""
    total = sum(counts.get(state, 0) for state in STATES)
    segments, x = [], 0
    for state in STATES:
        n = counts.get(state, 0)
        width = round(WIDTH * n / total) if total else 0
        width = min(width, WIDTH - x)
        if n:
            segments.append({"state": state, "x": x, "width": width})
        x += width
    done = total - counts.get("pending", 0) - counts.get("running", 0)
    return {
        "label": label,
        "segments": segments,
        "counts": [(state, counts.get(state, 0)) for state in ("pending", "running", "succeeded", "failed", "aborted")],
        "total": total,
        "done": done,
        "width": WIDTH,
    }


@register.filter
def status_word(status: str) -> str:
    """A job's status as every page, the API and the evidence reports say it."""
    return states.status_word(status)


@register.filter
def may(user, capability: str) -> bool:
    """Whether ``user`` holds ``capability`` (rmm/access/roles.py): what the navigation offers."""
    return access.can(user, capability)
