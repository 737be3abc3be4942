"""Law 7, the console's pages: the dashboard, jobs, batches, kill switches, people, agent enrollment,
integrations (webhooks, SIEM destinations) and a person's own tokens, for every role, in-site and out-of-site (harness:
tests/support/authorization.py)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django_otp.plugins.otp_totp.models import TOTPDevice

from rmm.access.models import ApiToken
from rmm.engine.models import KillSwitch
from rmm.inventory.models import Asset, EnrollmentToken
from rmm.outbox.models import Delivery, Endpoint
from rmm.siem.models import Destination
from tests.support.authorization import (
    APPROVE,
    ENGAGE_KILL_SWITCH,
    EVERYONE,
    IN,
    MANAGE_ACCESS,
    MANAGE_AGENTS,
    MANAGE_INTEGRATIONS,
    Row,
    World,
    callers,
    check,
    ids,
    only,
    page,
)


def _console_token(w) -> bool:
    return ApiToken.objects.filter(name="console matrix").exists()


def _retired(w) -> bool:
    return Asset.objects.filter(pk=w.ids["asset"], retired_at__isnull=False).exists()


def _person_added(w) -> bool:
    return get_user_model().objects.filter(username="matrix-person").exists()


def _person(w):
    return get_user_model().objects.get(pk=w.ids["person"])


def _person_changed(w) -> bool:
    return _person(w).groups.filter(name="compliance").exists()


def _person_password(w) -> bool:
    return _person(w).check_password("a new long passphrase 9")


def _person_second_factor_reset(w) -> bool:
    return not TOTPDevice.objects.filter(user_id=w.ids["person"]).exists()


def _person_deactivated(w) -> bool:
    return not _person(w).is_active


def _enrollment_token(w) -> bool:
    return EnrollmentToken.objects.filter(max_uses=7).exists()


def _site_switch(w) -> bool:
    return KillSwitch.objects.filter(scope="site", site_id=w.ids["site"], released_at__isnull=True).exists()


def _switch_released(w) -> bool:
    return KillSwitch.objects.filter(pk=w.ids["switch"], released_at__isnull=False).exists()


def _webhook_made(w) -> bool:
    return Endpoint.objects.filter(name="matrix-hook").exists()


def _webhook_pinged(w) -> bool:
    return Delivery.objects.filter(endpoint_id=w.ids["webhook"]).count() > 1


def _webhook_rotated(w) -> bool:
    return Endpoint.objects.filter(pk=w.ids["webhook"]).exclude(previous_secret="").exists()


def _destination_made(w) -> bool:
    return Destination.objects.filter(name="matrix-siem").exists()


def _destination_paused(w) -> bool:
    return Destination.objects.filter(pk=w.ids["siem_destination"], enabled=False).exists()


def _destination_deleted(w) -> bool:
    return not Destination.objects.filter(pk=w.ids["siem_destination"]).exists()


WEBHOOK = "/console/webhooks/{webhook}/"
DESTINATION = "/console/siem/{siem_destination}/"
INTEGRATORS_IN = callers(MANAGE_INTEGRATIONS, "in")

ROWS = [
    # --- console
    page("GET", "/", 302),
    page("GET", "/console/", 200, shows=(("job_failed", IN),), label="dashboard"),
    page("GET", "/console/jobs/", 200, shows=(("job_done", IN),)),
    page("GET", "/console/jobs/script/{job_done}/", 200, 404, hidden=("job_done",)),
    page("GET", "/console/batches/{batch}/", 200, 404, hidden=("batch",)),
    page("GET", "/console/assets/", 200, shows=(("asset", IN),)),
    page("GET", "/console/assets/{asset}/", 200, 404, hidden=("asset",)),
    # The asset picker: the caller's own assets, whatever is searched or named as the one chosen.
    page("GET", "/console/assets/pick/", 200, shows=(("asset", IN),)),
    page("GET", "/console/assets/pick/?asset={asset}", 200, shows=(("asset", IN),), label="chosen"),
    page("GET", "/console/assets/?retired=yes", 200, shows=(("asset", frozenset()),), label="retired"),
    # Retiring: the confirmation for anyone of the site (it says who may), the retirement for admins
    page("GET", "/console/assets/{asset}/retire/", 200, 404, hidden=("asset",)),
    page(
        "POST",
        "/console/assets/{asset}/retire/",
        only(MANAGE_AGENTS, 302, 403),
        404,
        body={"reason": "sold", "confirm": "on"},
        hidden=("asset",),
        effect=(_retired, callers(MANAGE_AGENTS, "in")),
    ),
    # The first run's pages: people (admins add them in their own sites) and agent enrollment
    page("GET", "/console/people/", only(MANAGE_ACCESS, 200, 403)),
    page(
        "POST",
        "/console/people/",
        only(MANAGE_ACCESS, 302, 403),
        only(MANAGE_ACCESS, 400, 403),
        body={
            "username": "matrix-person",
            "password": "a long enough passphrase 7",
            "role": "technician",
            "site": "alpha",
        },
        effect=(_person_added, callers(MANAGE_ACCESS, "in")),
    ),
    # A person's page (an approver of alpha): every admin sees it; only an admin of the person's
    # sites changes them (one of beta is refused, recorded).
    page("GET", "/console/people/{person}/", only(MANAGE_ACCESS, 200, 403)),
    page(
        "POST",
        "/console/people/{person}/access/",
        only(MANAGE_ACCESS, 302, 403),
        403,
        body={"roles": ["approver", "compliance"]},
        effect=(_person_changed, callers(MANAGE_ACCESS, "in")),
    ),
    page(
        "POST",
        "/console/people/{person}/password/",
        only(MANAGE_ACCESS, 302, 403),
        403,
        body={"password": "a new long passphrase 9"},
        effect=(_person_password, callers(MANAGE_ACCESS, "in")),
    ),
    page(
        "POST",
        "/console/people/{person}/second-factor/",
        only(MANAGE_ACCESS, 302, 403),
        403,
        body={},
        effect=(_person_second_factor_reset, callers(MANAGE_ACCESS, "in")),
    ),
    page("GET", "/console/people/{person}/deactivate/", only(MANAGE_ACCESS, 200, 403)),
    page(
        "POST",
        "/console/people/{person}/deactivate/",
        only(MANAGE_ACCESS, 302, 403),
        403,
        body={"reason": "console matrix", "confirm": "on"},
        effect=(_person_deactivated, callers(MANAGE_ACCESS, "in")),
    ),
    page("POST", "/console/people/{person}/reactivate/", only(MANAGE_ACCESS, 409, 403), 403, body={}),
    page("GET", "/console/agents/enroll/", only(MANAGE_AGENTS, 200, 403)),
    page(
        "POST",
        "/console/agents/enroll/",
        only(MANAGE_AGENTS, 200, 403),
        only(MANAGE_AGENTS, 400, 403),
        body={"site": "alpha", "uses": 7},
        effect=(_enrollment_token, callers(MANAGE_AGENTS, "in")),
    ),
    page("GET", "/console/jobs/script/{job_done}/fragment/", 200, 404, hidden=("job_done",)),
    page("GET", "/console/jobs/patch/{job_done}/", 404, label="unknown kind"),
    page("GET", "/console/kill-switches/", 200, shows=(("switch", IN),)),
    page(
        "POST",
        "/console/kill-switches/",
        only(ENGAGE_KILL_SWITCH, 302, 403),
        only(ENGAGE_KILL_SWITCH, 400, 403),
        body={"scope": "site", "site": "alpha", "reason": "console matrix", "confirm": "yes"},
        effect=(_site_switch, callers(ENGAGE_KILL_SWITCH, "in")),
    ),
    page(
        "POST",
        "/console/kill-switches/",
        only(ENGAGE_KILL_SWITCH, 200, 403),
        only(ENGAGE_KILL_SWITCH, 400, 403),
        body={"scope": "site", "site": "alpha", "reason": "console matrix"},
        label="unconfirmed",
        effect=(_site_switch, frozenset()),
    ),
    page("GET", "/console/kill-switches/banner/", 200, shows=(("switch", IN),)),
    page(
        "POST",
        "/console/kill-switches/{switch}/release/",
        302,
        404,
        body={"reason": "clear"},
        hidden=("switch",),
        effect=(_switch_released, callers(APPROVE, "in")),
    ),
    page("GET", "/console/kill-switches/{switch}/release/", 405, label="GET"),
    # Integrations: admins, within the webhook's (and destination's) sites; the world's webhook hears alpha
    page("GET", "/console/webhooks/", only(MANAGE_INTEGRATIONS, 200, 403), shows=(("webhook", INTEGRATORS_IN),)),
    page(
        "POST",
        "/console/webhooks/",
        only(MANAGE_INTEGRATIONS, 200, 403),
        only(MANAGE_INTEGRATIONS, 400, 403),
        body={
            "url": "http://127.0.0.1:9/matrix-new",
            "event_types": ["job.finished"],
            "sites": ["alpha"],
            "name": "matrix-hook",
        },
        effect=(_webhook_made, INTEGRATORS_IN),
    ),  # fmt: skip
    page("GET", WEBHOOK, only(MANAGE_INTEGRATIONS, 200, 403), only(MANAGE_INTEGRATIONS, 404, 403), hidden=("webhook",)),
    page(
        "POST",
        WEBHOOK + "ping/",
        only(MANAGE_INTEGRATIONS, 302, 403),
        only(MANAGE_INTEGRATIONS, 404, 403),
        body={},
        hidden=("webhook",),
        effect=(_webhook_pinged, INTEGRATORS_IN),
    ),
    page(
        "POST",
        WEBHOOK + "rotate-secret/",
        only(MANAGE_INTEGRATIONS, 200, 403),
        only(MANAGE_INTEGRATIONS, 404, 403),
        body={"overlap_hours": "1"},
        hidden=("webhook",),
        effect=(_webhook_rotated, INTEGRATORS_IN),
    ),
    # the world's one delivery is still pending: a replay is a conflict
    page(
        "POST",
        "/console/webhook-deliveries/{webhook_delivery}/replay/",
        only(MANAGE_INTEGRATIONS, 409, 403),
        only(MANAGE_INTEGRATIONS, 404, 403),
        body={},
        hidden=("webhook_delivery",),
    ),
    page("GET", "/console/siem/", only(MANAGE_INTEGRATIONS, 200, 403), shows=(("siem_destination", INTEGRATORS_IN),)),
    page(
        "POST",
        "/console/siem/",
        only(MANAGE_INTEGRATIONS, 302, 403),
        only(MANAGE_INTEGRATIONS, 400, 403),
        body={"kind": "syslog", "address": "127.0.0.1:9", "format": "json", "sites": ["alpha"], "name": "matrix-siem"},
        effect=(_destination_made, INTEGRATORS_IN),
    ),
    page(
        "POST",
        DESTINATION + "pause/",
        only(MANAGE_INTEGRATIONS, 302, 403),
        only(MANAGE_INTEGRATIONS, 404, 403),
        body={},
        hidden=("siem_destination",),
        effect=(_destination_paused, INTEGRATORS_IN),
    ),
    # the world's destination is enabled: resuming it is a conflict
    page(
        "POST",
        DESTINATION + "resume/",
        only(MANAGE_INTEGRATIONS, 409, 403),
        only(MANAGE_INTEGRATIONS, 404, 403),
        body={},
        hidden=("siem_destination",),
    ),
    page(
        "GET",
        DESTINATION + "delete/",
        only(MANAGE_INTEGRATIONS, 200, 403),
        only(MANAGE_INTEGRATIONS, 404, 403),
        hidden=("siem_destination",),
    ),
    page(
        "POST",
        DESTINATION + "delete/",
        only(MANAGE_INTEGRATIONS, 302, 403),
        only(MANAGE_INTEGRATIONS, 404, 403),
        body={"confirm": "on"},
        hidden=("siem_destination",),
        effect=(_destination_deleted, INTEGRATORS_IN),
    ),
    # A person's own tokens: anyone signed in (admins and approvers past their second factor)
    page("GET", "/console/tokens/", 200, shows=(("token_other", frozenset()),)),
    page("POST", "/console/tokens/", 200, body={"name": "console matrix"}, effect=(_console_token, EVERYONE)),
    page("POST", "/console/tokens/{token_other}/revoke/", 404),
    page("GET", "/console/tokens/{token_other}/revoke/", 405, label="GET"),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_matrix(row: Row, matrix: World):
    check(row, matrix)
