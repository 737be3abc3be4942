"""Background evidence work (django-q2)."""

from evidence import anchors, exports, retention


def run_export(export_id: str) -> str | None:
    """Build a requested compliance export (queued by exports.request_export on commit)."""
    return exports.run_export(export_id)


def retention_run() -> int:
    """Apply the retention policy (daily schedule, migration evidence/0005); the number deleted."""
    return retention.run_retention("system").deleted_count


def sweep_exports() -> dict[str, int]:
    """Resume or fail exports whose builder died (every minute, migration evidence/0007)."""
    return exports.sweep_exports()


def anchor_history() -> int | None:
    """Sign the head of the history (hourly schedule, migrations history/0003 and evidence/0009);
    the anchored sequence."""
    row = anchors.anchor_history("system", only_if_changed=True)
    return row.related_id.int if row is not None else None
