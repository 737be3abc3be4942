"""Scheduled patching work (django-q2)."""

from patching import jobs, schedules


def release_patch_job(request_id: str) -> int:
    """An approved patch job's time has come: its jobs are released (patching.jobs.release_due)."""
    return jobs.release_due(request_id)


def dispatch_scan_schedules() -> int:
    """Every minute: each active scan schedule scans the assets whose moment has come, or stops
    when its authority ended (patching.schedules)."""
    return schedules.dispatch_all()
