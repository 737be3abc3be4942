"""Execution throttling: ceilings on running instructions per site and in all, and waves."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection

from rmm.engine.models import Instruction
from rmm.engine.states import JobStatus

UNLIMITED = 10**9
_PG_LOCK_KEY = 0x524D4D54  # "RMMT": ceilings are counted and taken under one lock


def room_under_ceilings(site_id) -> tuple[int, str]:
    """How many more instructions may start in this site now, and why none when zero.

    Call inside the lease transaction: on PostgreSQL an advisory lock makes count-then-lease
    atomic across workers (SQLite's IMMEDIATE transactions already are).
    """
    site_max, total_max = settings.RMM_MAX_RUNNING_PER_SITE, settings.RMM_MAX_RUNNING_TOTAL
    if not site_max and not total_max:
        return UNLIMITED, ""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_PG_LOCK_KEY])
    room = UNLIMITED
    running = Instruction.objects.filter(status=JobStatus.RUNNING)
    if total_max:
        room = min(room, total_max - running.count())
        if room <= 0:
            return 0, f"ceiling of {total_max} running instructions in all reached"
    if site_max:
        room = min(room, site_max - running.filter(site_id=site_id).count())
        if room <= 0:
            return 0, f"ceiling of {site_max} running instructions in this site reached"
    return room, ""


def release_time(position: int, now: datetime) -> datetime:
    """Waves: the n-th instruction of a large job is released after n // wave size intervals."""
    size = max(1, settings.RMM_WAVE_SIZE)
    return now + timedelta(seconds=(position // size) * settings.RMM_WAVE_INTERVAL_SECONDS)
