"""Maintenance windows: when a site's patch jobs may start. A patch job approved and due outside
its site's windows is held, and released when the next one opens (patching.jobs). The times are
the site's wall clock in its time zone, so a window at 22:00 stays at 22:00 across daylight saving."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.db import transaction

from patching.models import MaintenanceWindow
from rmm.access import roles as access
from rmm.core.errors import InvalidInput
from rmm.engine import registry
from rmm.engine.services import deciding
from rmm.history import services as history

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MIN_MINUTES, MAX_MINUTES = 15, 24 * 60
# Who sets a site's windows: whoever may request its jobs (they decide when work may run, not what).
CAPABILITY = "request_jobs"


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput("Not an IANA time zone (e.g. Europe/Berlin).", field="timezone") from None


def _days(days) -> list[int]:
    if not isinstance(days, list) or not days or any(day not in DAYS for day in days):
        raise InvalidInput(f"A list of weekdays, each one of: {', '.join(DAYS)}.", field="days")
    return sorted({DAYS.index(day) for day in days})


def create_window(
    user, *, site_name: str, days, start: time, duration_minutes: int, timezone_name: str
) -> MaintenanceWindow:
    """A maintenance window of a site the caller may see."""
    deciding.require_role(user, CAPABILITY, "maintenance_window.create")
    site = access.visible_sites(user).filter(name=site_name or "").first()
    if site is None:
        raise InvalidInput("No site of that name that you may see.", field="site")
    weekdays = _days(days)
    if not isinstance(duration_minutes, int) or not MIN_MINUTES <= duration_minutes <= MAX_MINUTES:
        raise InvalidInput(f"Whole minutes from {MIN_MINUTES} to {MAX_MINUTES}.", field="duration_minutes")
    _zone(timezone_name)
    with transaction.atomic():  # the row and its history together, or neither
        window = MaintenanceWindow.objects.create(
            site=site,
            days=weekdays,
            start=start,
            duration_minutes=duration_minutes,
            timezone=timezone_name,
            created_by=user,
        )
        history.append(user, "maintenance_window.created", window, site_id=site.pk, payload=describe(window))
    return window


def delete_window(user, window: MaintenanceWindow) -> None:
    """A window removed: a patch job held for it is released when it would have opened (or when the site's
    next window opens)."""
    deciding.require_role(user, CAPABILITY, "maintenance_window.delete", window, site_id=window.site_id)
    with transaction.atomic():  # "deleted" is in the history only if the row is gone
        history.append(user, "maintenance_window.deleted", window, site_id=window.site_id, payload=describe(window))
        window.delete()


def describe(window: MaintenanceWindow) -> dict:
    return {
        "days": [DAYS[day] for day in window.days],
        "start": window.start.strftime("%H:%M"),
        "duration_minutes": window.duration_minutes,
        "timezone": window.timezone,
    }


def _openings(window: MaintenanceWindow, around: datetime):
    """The window's (opens, closes) in UTC from the day before ``around`` to a week after it."""
    zone = ZoneInfo(window.timezone)
    local: date = around.astimezone(zone).date()
    for offset in range(-1, 8):
        day = local + timedelta(days=offset)
        if day.weekday() in window.days:
            opens = datetime.combine(day, window.start, tzinfo=zone).astimezone(UTC)
            yield opens, opens + timedelta(minutes=window.duration_minutes)


def window_at(site_id, moment: datetime) -> registry.Window | None:
    """The site's window open at ``moment`` (windows that overlap or touch are one), else its next
    one; None when the site has no windows (patch jobs start at any time). The patch kind's
    window: the engine releases a patch job's rings only inside it."""
    spans = sorted(
        span for window in MaintenanceWindow.objects.filter(site_id=site_id) for span in _openings(window, moment)
    )
    merged: list[list[datetime]] = []
    for opens, closes in spans:
        if merged and opens <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], closes)
        else:
            merged.append([opens, closes])
    for opens, closes in merged:
        if moment < closes:
            return registry.Window(opens=opens, closes=closes)
    return None


def next_release(site_id, not_before: datetime) -> datetime:
    """The earliest moment from ``not_before`` when the site's windows let a patch job start:
    ``not_before`` itself when one is open then, or when the site has none."""
    window = window_at(site_id, not_before)
    return not_before if window is None else max(window.opens, not_before)
