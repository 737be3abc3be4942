"""Scheduled patching work (django-q2)."""

from patching import jobs


def release_patch_job(request_id: str) -> int:
    """An approved patch job's time has come: its jobs are released (patching.jobs.release_due)."""
    return jobs.release_due(request_id)
