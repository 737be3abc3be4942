"""Scheduled history work (django-q2)."""

from rmm.history import anchors


def anchor_history() -> int | None:
    """Sign the head of the history (hourly schedule, migration history/0003); the anchored sequence."""
    row = anchors.anchor_history("system", only_if_changed=True)
    return row.related_id.int if row is not None else None
