"""Session policies as four-eyes approved versions (docs/sessions.md, Policy): an admin proposes the
next version of a site's policy through the API, it rules nothing until an approver who is not its
author approves it, and the site's approved version with the highest number rules its sessions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from rmm.history import services as history
from rmm.history.models import HistoryEvent
from sessions import policies, services
from sessions.models import RemoteSession, SessionPolicy
from tests.helpers import approved_authority
from tests.sessions.helpers import open_, set_policy

POLICIES = "/api/v1/session-policies/"


def propose(world, who="admin", **body):
    return world[who].post(POLICIES, {"site": "alpha", **body}, format="json")


def refusals(action: str) -> list[str]:
    return [e.payload["reason"] for e in HistoryEvent.objects.filter(action=f"refused.{action}").order_by("sequence")]


def test_a_proposed_version_rules_nothing_until_another_person_approves_it(world):
    r = propose(world, allowed=False)
    assert r.status_code == 201, r.content
    pending = r.json()
    assert pending["approval_status"] == "pending" and pending["version"] == 1 and not pending["in_force"]
    assert pending["allowed"] is False and pending["author"] == "admin" and pending["site"] == "alpha"
    assert open_(world).status_code == 201  # pending: the defaults still rule

    r = world["approver"].post(f"{POLICIES}{pending['id']}/approve/")
    assert r.status_code == 200, r.content
    assert r.json()["approval_status"] == "approved" and r.json()["in_force"] and r.json()["decided_by"] == "approver"
    r = open_(world)
    assert r.status_code == 403 and "allows no remote sessions" in r.json()["detail"]
    actions = HistoryEvent.objects.filter(subject_id=pending["id"]).values_list("action", flat=True)
    assert list(actions.order_by("sequence")) == ["session_policy.proposed", "session_policy.approved"]
    assert world["approver"].post(f"{POLICIES}{pending['id']}/approve/").status_code == 409


def test_rules_not_given_keep_their_value_in_the_policy_in_force(world):
    set_policy(world, approval_required=True, max_duration_seconds=600, idle_timeout_seconds=300)
    r = propose(world, idle_timeout_seconds=60)
    assert r.status_code == 201, r.content
    body = r.json()
    assert (body["version"], body["approval_required"], body["max_duration_seconds"]) == (2, True, 600)
    assert body["idle_timeout_seconds"] == 60 and body["allowed"] is True


def test_its_author_may_not_decide_it_and_the_refusal_is_recorded(world):
    pending = propose(world, approval_required=True).json()
    for decision, body in (("approve", None), ("reject", {"reason": "mine"})):
        r = world["admin"].post(f"{POLICIES}{pending['id']}/{decision}/", body, format="json")
        assert r.status_code == 403
    assert refusals("session_policy.approve") == ["self-approval"]
    assert refusals("session_policy.reject") == ["self-approval"]
    refused = HistoryEvent.objects.filter(action="refused.session_policy.approve").get()
    assert str(refused.site_id) == str(world["site"].pk)
    assert SessionPolicy.objects.get(pk=pending["id"]).approval_status == "pending"


def test_a_rejected_version_needs_a_reason_and_rules_nothing(world):
    pending = propose(world, allowed=False).json()
    url = f"{POLICIES}{pending['id']}/reject/"
    r = world["approver"].post(url, {}, format="json")
    assert r.status_code == 400 and "reason" in r.json()
    r = world["approver"].post(url, {"reason": "not during the migration"}, format="json")
    assert r.status_code == 200
    body = r.json()
    assert body["approval_status"] == "rejected" and body["decision_reason"] == "not during the migration"
    assert not body["in_force"]
    assert open_(world).status_code == 201
    assert HistoryEvent.objects.filter(action="session_policy.rejected", subject_id=pending["id"]).exists()


def test_the_highest_approved_version_rules_and_a_newer_pending_one_does_not(world):
    set_policy(world, allowed=False)
    newer = propose(world, allowed=True).json()
    assert open_(world).status_code == 403
    listed = world["tech"].get(f"{POLICIES}?site=alpha").json()["results"]
    assert [(p["version"], p["approval_status"], p["in_force"]) for p in listed] == [
        (2, "pending", False),
        (1, "approved", True),
    ]
    assert [p["id"] for p in world["tech"].get(f"{POLICIES}?approval_status=pending").json()["results"]] == [
        newer["id"]
    ]


def test_the_sweep_reads_the_approved_version_in_its_one_query(world, caller, other_site, django_assert_num_queries):
    """A site with an approved version and a newer pending one, a site with the defaults: one
    query, and the pending version's shorter limit ends nothing."""
    set_policy(world, max_duration_seconds=3600, idle_timeout_seconds=600)
    services.propose_policy(world["admin"].user, site="alpha", max_duration_seconds=1, idle_timeout_seconds=1)
    ids = [open_(world).json()["id"] for _ in range(2)]
    other_task = approved_authority(other_site, world["psa"].user)
    ids.append(open_(world, asset=str(world["elsewhere"]), psa_task_id=str(other_task.pk), who="admin").json()["id"])
    started = timezone.now() - timedelta(seconds=900)
    RemoteSession.objects.filter(pk__in=ids).update(started_at=started, last_activity_at=timezone.now())
    with django_assert_num_queries(1):
        assert services.end_overdue() == 0
    RemoteSession.objects.filter(pk__in=ids).update(started_at=started - timedelta(hours=4))
    assert services.end_overdue() == 3  # alpha's approved hour and beta's default four hours are over
    assert set(RemoteSession.objects.values_list("end_reason", flat=True)) == {"max_duration"}


def test_other_sites_policies_are_not_found(world, caller, other_site):
    pending = propose(world, allowed=False).json()
    outsider = caller("outsider", "admin", sites=[other_site])
    assert outsider.get(POLICIES).json()["results"] == []
    assert outsider.get(f"{POLICIES}{pending['id']}/").status_code == 404
    assert outsider.post(f"{POLICIES}{pending['id']}/approve/").status_code == 404
    r = outsider.post(POLICIES, {"site": "alpha", "allowed": True}, format="json")
    assert r.status_code == 404 and "site" in r.json()
    assert refusals("session_policy.propose") == ["no such site in the caller's sites"]
    assert SessionPolicy.objects.get(pk=pending["id"]).approval_status == "pending"
    assert SessionPolicy.objects.count() == 1


def test_only_an_admin_proposes_and_only_an_approver_decides(world):
    r = propose(world, who="tech", allowed=True)
    assert r.status_code == 403
    assert refusals("session_policy.propose") == ["role may not manage access"]
    pending = propose(world, allowed=False).json()
    assert world["tech"].post(f"{POLICIES}{pending['id']}/approve/").status_code == 403
    assert refusals("session_policy.approve") == ["role may not approve"]
    assert world["tech"].get(f"{POLICIES}{pending['id']}/").status_code == 200
    assert SessionPolicy.objects.get().approval_status == "pending"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_duration_seconds": 0}, "max_duration_seconds"),
        ({"max_duration_seconds": 86401}, "max_duration_seconds"),
        ({"max_duration_seconds": "long"}, "max_duration_seconds"),
        ({"idle_timeout_seconds": -5}, "idle_timeout_seconds"),
        ({"max_duration_seconds": 600, "idle_timeout_seconds": 601}, "idle_timeout_seconds"),
        ({"idle_timeout_seconds": 14401}, "idle_timeout_seconds"),  # longer than the default maximum
        ({"allowed": "perhaps"}, "allowed"),
        ({"site": ""}, "site"),
    ],
)
def test_bad_input_names_the_field_and_changes_nothing(world, body, field):
    r = propose(world, **body)
    assert r.status_code == 400, r.content
    assert field in r.json(), r.json()
    assert not SessionPolicy.objects.exists()
    assert not HistoryEvent.objects.filter(action="session_policy.proposed").exists()


@pytest.mark.django_db(transaction=True)
def test_a_sites_policy_from_before_versioning_is_kept_as_its_approved_version(caller, site, flushable_append_only):
    """The upgrade loosens nothing: the one mutable row a site had becomes its version 1, approved,
    authored by whoever last set it (the history names them)."""
    admin = caller("root", "admin")
    before, after = ("remote_sessions", "0004_provider_fields"), ("remote_sessions", "0005_versioned_policies")
    executor = MigrationExecutor(connection)
    executor.migrate([before])
    old = executor.loader.project_state(before).apps.get_model("remote_sessions", "SessionPolicy")
    old.objects.create(site_id=site.pk, allowed=False, max_duration_seconds=600, idle_timeout_seconds=60)
    history.append(admin.user, "remote_session.policy", site_id=site.pk, payload={"allowed": False})
    executor = MigrationExecutor(connection)
    executor.migrate([after])
    kept = SessionPolicy.objects.get(site=site)
    assert (kept.version, kept.approval_status, kept.author, kept.allowed) == (1, "approved", admin.user, False)
    assert (kept.max_duration_seconds, kept.idle_timeout_seconds, kept.approval_required) == (600, 60, False)
    assert policies.policy_for(site) == kept
