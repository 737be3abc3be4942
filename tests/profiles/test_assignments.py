"""Profile assignments through the API: a profile on an asset or a site under a PSA task (Law 1),
four eyes on enforcement (Law 8: never the requester, never the revision's author), a new revision
or a change returning it to awaiting approval, stopping, per-site 404s, and every refusal recorded
with nothing changed."""

import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from profiles import assignments
from profiles import services as profiles
from profiles.models import AssetConfigurationProfile
from rmm.authority import services as authority
from rmm.core.errors import Conflict
from rmm.history.models import HistoryEvent
from rmm.inventory import services as inventory
from tests.helpers import approved_authority, make_agent, otp_login
from tests.support.profiles import approved_key

URL = "/api/v1/profile-assignments/"
AUDIT = {"config_key": "test.line", "parameters": {"path": "/etc/x", "key": "K"}, "comparison": "equals"}
ENFORCE = {**AUDIT, "desired_value": "no", "enforcement_mode": "enforce"}


@pytest.fixture
def w(caller, site, other_site):
    """Two sites; technicians and approvers of each (and of both); an asset in each; an approved
    task of each site; an audit-only and an enforcing profile written by ``author``."""
    people = {
        "tech": caller("tech", "technician", [site]),
        "author": caller("author", "technician"),
        "boss": caller("boss", "approver", [site]),
        "boss_b": caller("boss_b", "approver", [other_site]),
        "tech_b": caller("tech_b", "technician", [other_site]),
        "root": caller("root", "admin"),
        "psa": caller("psa", "psa"),
    }
    approved_key(people["author"].user, people["boss"].user)
    agent, _ = make_agent(site, "alpha-1")
    other, _ = make_agent(other_site, "beta-1")
    return {
        **people,
        "site": site,
        "other_site": other_site,
        "asset": agent.asset,
        "other_asset": other.asset,
        "task": approved_authority(site, people["psa"].user),
        "other_task": approved_authority(other_site, people["psa"].user),
        "audit": profiles.create_profile(people["author"].user, name="audit", profile_type="t", items=[AUDIT]),
        "enforce": profiles.create_profile(people["author"].user, name="enforce", profile_type="t", items=[ENFORCE]),
    }


def assign(w, who="tech", profile="audit", target="asset", **extra):
    field = "asset" if target.endswith("asset") else "site"
    body = {"profile": str(w[profile].pk), field: str(w[target].pk), "psa_task_id": str(w["task"].pk), **extra}
    return w[who].post(URL, body, format="json")


def made(w, **kw) -> dict:
    r = assign(w, **kw)
    assert r.status_code == 201, r.content
    return r.json()


def snapshot():
    """Every assignment's state and every non-refusal assignment event: what a refusal must not change."""
    rows = list(AssetConfigurationProfile.objects.order_by("pk").values())
    events = list(
        HistoryEvent.objects.filter(action__startswith="profile_assignment.").values_list("sequence", flat=True)
    )
    return rows, events


def refusals(action: str):
    return list(HistoryEvent.objects.filter(action=f"refused.{action}").values_list("payload", flat=True))


# --- creating -----------------------------------------------------------------------------------


def test_an_audit_only_profile_is_active_at_once_and_recorded(w):
    answer = made(w)
    assert answer["status"] == "active" and answer["asset"] == str(w["asset"].pk) and answer["site"] is None
    assert answer["psa_task_id"] == str(w["task"].pk) and answer["audit_interval_seconds"] == 86400
    assert answer["approved_revision"] is None and answer["enforcement_approved"] is False
    event = HistoryEvent.objects.get(action="profile_assignment.created")
    assert event.subject_id == answer["id"] and event.actor == "user:tech" and event.site_id == w["site"].pk
    assert event.payload["psa_task_id"] == str(w["task"].pk) and event.payload["status"] == "active"
    assert w["boss"].get(f"{URL}{answer['id']}/").json() == answer


def test_an_enforcing_profile_on_a_whole_site_awaits_approval(w):
    answer = made(w, profile="enforce", target="site", audit_interval_seconds=3600)
    assert answer["status"] == "awaiting_approval" and answer["site"] == str(w["site"].pk)
    assert answer["audit_interval_seconds"] == 3600 and answer["current_revision"] == 1


@pytest.mark.parametrize(
    ("who", "code"), [("boss", 403), ("psa", 403)], ids=["approver may not assign", "psa may not assign"]
)
def test_a_role_that_may_not_author_is_refused_and_recorded(w, who, code):
    before = snapshot()
    r = assign(w, who=who)
    assert r.status_code == code, r.content
    assert snapshot() == before and not AssetConfigurationProfile.objects.exists()
    assert [p["reason"] for p in refusals("profile_assignment.create")] == ["role may not author scripts"]


def _closed(w):
    return authority.upsert_task(
        w["psa"].user, uuid.uuid4(), case_id=w["task"].case_id, title="closed", status="closed"
    )


def _expired(w):
    return authority.upsert_task(
        w["psa"].user,
        uuid.uuid4(),
        case_id=w["task"].case_id,
        title="old",
        status="approved",
        expires_at=timezone.now() - timedelta(minutes=1),
    )


NO_AUTHORITY = [
    (_closed, "PSA task is closed, not approved"),
    (_expired, "PSA task authority expired"),
    (lambda w: w["other_task"], "the asset is outside the PSA case's site"),
    (lambda w: type("T", (), {"pk": uuid.uuid4()})(), "no such PSA task"),
]


@pytest.mark.parametrize(("task", "why"), NO_AUTHORITY, ids=["closed", "expired", "other site", "unknown"])
def test_without_authority_it_is_400_on_psa_task_id_recorded_and_nothing_written(w, task, why):
    bad = task(w)
    before = snapshot()
    r = assign(w, who="author", psa_task_id=str(bad.pk))  # the author sees every site
    assert r.status_code == 400, r.content
    assert list(r.json()) == ["psa_task_id"] and why in r.json()["psa_task_id"][0]
    assert snapshot() == before and not AssetConfigurationProfile.objects.exists()
    (payload,) = refusals("profile_assignment.create")
    assert why in payload["reason"] and payload["psa_task_id"] == str(bad.pk)


def test_a_site_assignment_needs_a_task_of_that_site(w):
    r = assign(w, who="author", profile="enforce", target="site", psa_task_id=str(w["other_task"].pk))
    assert r.status_code == 400 and "the site is not the PSA case's site" in r.json()["psa_task_id"][0]
    # to a caller of one site, another site's task is as if it did not exist; the history says which
    r = assign(w, profile="enforce", target="site", psa_task_id=str(w["other_task"].pk))
    assert r.status_code == 400 and r.json()["psa_task_id"] == ["No authority: no such PSA task."]
    assert not AssetConfigurationProfile.objects.exists()
    assert [p["reason"] for p in refusals("profile_assignment.create")] == [
        "no authority: the site is not the PSA case's site",
        "no authority: the PSA task is of another site",
    ]


@pytest.mark.parametrize("target", ["other_asset", "other_site"])
def test_an_asset_or_site_outside_the_callers_sites_is_404_like_a_missing_one(w, target):
    field = "asset" if target == "other_asset" else "site"
    body = {"profile": str(w["audit"].pk), field: str(w[target].pk), "psa_task_id": str(w["other_task"].pk)}
    r = w["tech"].post(URL, body, format="json")
    missing = w["tech"].post(URL, {**body, field: str(uuid.uuid4())}, format="json")
    assert r.status_code == missing.status_code == 404
    assert r.json() == missing.json()
    assert not AssetConfigurationProfile.objects.exists()
    assert [p["reason"] for p in refusals("profile_assignment.create")] == [f"{field} outside the caller's sites"]


def test_a_retired_asset_is_refused_and_recorded(w):
    inventory.retire_asset(w["root"].user, w["asset"], "decommissioned")
    r = assign(w)
    assert r.status_code == 409 and list(r.json()) == ["asset"], r.content
    assert not AssetConfigurationProfile.objects.exists()
    assert [p["reason"] for p in refusals("profile_assignment.create")] == ["asset retired"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"site": "SITE"}, "asset"),  # both an asset and a site
        ({"asset": None}, "asset"),  # neither
        ({"profile_id": str(uuid.uuid4())}, "profile"),
        ({"psa_task_id": "not-a-uuid"}, "psa_task_id"),
        ({"audit_interval_seconds": 10}, "audit_interval_seconds"),
        ({"audit_interval_seconds": 10**9}, "audit_interval_seconds"),
    ],
    ids=["asset and site", "neither", "unknown profile", "malformed task", "interval too short", "too long"],
)
def test_bad_input_is_400_naming_the_field_and_writes_nothing(w, body, field):
    body = {("profile" if k == "profile_id" else k): str(w["site"].pk) if v == "SITE" else v for k, v in body.items()}
    before = snapshot()
    r = w["tech"].post(
        URL,
        {"profile": str(w["audit"].pk), "asset": str(w["asset"].pk), "psa_task_id": str(w["task"].pk), **body},
        format="json",
    )
    assert r.status_code == 400 and list(r.json()) == [field], r.content
    assert snapshot() == before


def test_the_same_profile_twice_on_one_target_is_409(w):
    made(w)
    r = assign(w)
    assert r.status_code == 409 and list(r.json()) == ["profile"]
    assert AssetConfigurationProfile.objects.count() == 1


# --- four eyes ----------------------------------------------------------------------------------


def test_a_second_person_approves_the_current_revision(w):
    assignment = made(w, profile="enforce")
    r = w["boss"].post(f"{URL}{assignment['id']}/approve/")
    assert r.status_code == 200, r.content
    answer = r.json()
    assert answer["status"] == "active" and answer["approved_revision"] == 1 and answer["decided_by"] == "boss"
    assert answer["enforcement_approved"] is True
    row = AssetConfigurationProfile.objects.get(pk=assignment["id"])
    assert row.approved_revision_id == w["enforce"].current_revision_id and assignments.enforcement_approved(row)
    event = HistoryEvent.objects.get(action="profile_assignment.approved")
    assert event.actor == "user:boss" and event.payload["revision"] == 1
    again = w["boss"].post(f"{URL}{assignment['id']}/approve/")
    assert again.status_code == 409


def test_the_requester_never_decides_it(w):
    assignment = made(w, who="root", profile="enforce")  # an admin may both assign and approve
    before = snapshot()
    for verb, body in (("approve", None), ("reject", {"reason": "mine"})):
        r = w["root"].post(f"{URL}{assignment['id']}/{verb}/", body, format="json")
        assert r.status_code == 403, r.content
    assert snapshot() == before
    assert [p["reason"] for p in refusals("profile_assignment.approve")] == ["self-approval: requested the assignment"]
    assert [p["reason"] for p in refusals("profile_assignment.reject")] == ["self-approval: requested the assignment"]


def test_the_author_of_the_profiles_current_revision_never_approves_it(w):
    profiles.revise_profile(w["root"].user, w["enforce"], items=[ENFORCE, AUDIT])
    assignment = made(w, profile="enforce")
    before = snapshot()
    r = w["root"].post(f"{URL}{assignment['id']}/approve/")
    assert r.status_code == 403, r.content
    assert snapshot() == before
    (payload,) = refusals("profile_assignment.approve")
    assert payload["reason"] == "self-approval: wrote the profile's current revision" and payload["revision"] == 2


def test_a_role_that_may_not_approve_is_refused_and_an_approver_of_another_site_gets_404(w):
    assignment = made(w, profile="enforce")
    before = snapshot()
    r = w["author"].post(f"{URL}{assignment['id']}/approve/")
    assert r.status_code == 403
    assert [p["reason"] for p in refusals("profile_assignment.approve")] == ["role may not approve"]
    outside = w["boss_b"].post(f"{URL}{assignment['id']}/approve/")
    missing = w["boss_b"].post(f"{URL}{uuid.uuid4()}/approve/")
    assert outside.status_code == missing.status_code == 404 and outside.json() == missing.json()
    assert snapshot() == before


def test_approval_rechecks_authority(w):
    assignment = made(w, profile="enforce")
    task = w["task"]
    authority.upsert_task(w["psa"].user, task.pk, case_id=task.case_id, title="done", status="closed")
    before = snapshot()
    r = w["boss"].post(f"{URL}{assignment['id']}/approve/")
    assert r.status_code == 409 and "PSA task is closed" in r.json()["psa_task_id"][0]
    assert snapshot() == before
    assert "no authority" in refusals("profile_assignment.approve")[0]["reason"]


def test_a_rejection_needs_a_reason_and_an_audit_only_assignment_has_nothing_to_decide(w):
    assignment = made(w, profile="enforce")
    r = w["boss"].post(f"{URL}{assignment['id']}/reject/", {}, format="json")
    assert r.status_code == 400 and list(r.json()) == ["reason"]
    r = w["boss"].post(f"{URL}{assignment['id']}/reject/", {"reason": "not now"}, format="json")
    assert r.status_code == 200 and r.json()["status"] == "rejected" and r.json()["status_reason"] == "not now"
    assert HistoryEvent.objects.filter(action="profile_assignment.rejected").count() == 1
    active = made(w)
    assert w["boss"].post(f"{URL}{active['id']}/approve/").status_code == 409


def test_of_two_approvers_who_saw_it_waiting_one_decision_stands(w):
    assignment = made(w, profile="enforce")
    boss2 = w["root"].user
    first, second = (AssetConfigurationProfile.objects.get(pk=assignment["id"]) for _ in range(2))
    assignments.approve_assignment(first, w["boss"].user)
    with pytest.raises(Conflict):
        assignments.reject_assignment(second, boss2, "unsafe")
    assert AssetConfigurationProfile.objects.get(pk=assignment["id"]).status == "active"
    decisions = ("profile_assignment.approved", "profile_assignment.rejected")
    assert HistoryEvent.objects.filter(action__in=decisions).count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="two transactions at once: SQLite's in-memory test database refuses a second writer instead of "
    "waiting; the stale-view test above covers SQLite",
)
def test_two_approvers_at_once_make_exactly_one_decision(w, flushable_append_only):
    """Real threads on their own connections, released together at the decision."""
    assignment = made(w, profile="enforce")
    start, outcomes = threading.Barrier(2), []

    def decide(user, approve):
        try:
            row = AssetConfigurationProfile.objects.select_related("asset").get(pk=assignment["id"])
            start.wait(timeout=10)
            if approve:
                assignments.approve_assignment(row, user)
            else:
                assignments.reject_assignment(row, user, "unsafe")
            outcomes.append("decided")
        except Conflict:
            outcomes.append("conflict")
        finally:
            connection.close()

    threads = [
        threading.Thread(target=decide, args=(w["boss"].user, True)),
        threading.Thread(target=decide, args=(w["root"].user, False)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["conflict", "decided"]
    decisions = ("profile_assignment.approved", "profile_assignment.rejected")
    assert HistoryEvent.objects.filter(action__in=decisions).count() == 1


# --- a revision, a change -----------------------------------------------------------------------


def test_a_revision_with_enforce_items_returns_its_assignments_to_awaiting_approval(w):
    first = made(w, profile="enforce")
    second = made(w, profile="enforce", target="site")
    for assignment in (first, second):
        assert w["boss"].post(f"{URL}{assignment['id']}/approve/").status_code == 200
    r1 = w["enforce"].current_revision
    r = w["author"].post(f"/api/v1/profiles/{w['enforce'].pk}/revisions/", {"items": [ENFORCE]}, format="json")
    assert r.status_code == 201
    for assignment in (first, second):
        answer = w["boss"].get(f"{URL}{assignment['id']}/").json()
        assert answer["status"] == "awaiting_approval" and answer["enforcement_approved"] is False
        assert answer["approved_revision"] == 1 and answer["current_revision"] == 2
        row = AssetConfigurationProfile.objects.select_related("profile").get(pk=assignment["id"])
        assert row.approved_revision_id == r1.pk and not assignments.enforcement_approved(row)
    events = HistoryEvent.objects.filter(action="profile_assignment.awaiting_approval")
    assert sorted(events.values_list("subject_id", flat=True)) == sorted([first["id"], second["id"]])
    assert {e.payload["revision"] for e in events} == {2} and {e.actor for e in events} == {"user:author"}
    # approved again, for the new revision
    r = w["boss"].post(f"{URL}{first['id']}/approve/")
    assert r.status_code == 200 and r.json()["approved_revision"] == 2 and r.json()["enforcement_approved"]


def test_a_revision_without_enforce_items_leaves_nothing_to_approve(w):
    waiting = made(w, profile="enforce")
    profiles.revise_profile(w["author"].user, w["enforce"], items=[AUDIT])
    answer = w["boss"].get(f"{URL}{waiting['id']}/").json()
    assert answer["status"] == "active" and answer["enforcement_approved"] is False
    assert HistoryEvent.objects.filter(action="profile_assignment.activated", subject_id=waiting["id"]).exists()


def test_a_change_returns_it_to_awaiting_approval_and_its_changer_may_not_approve(w):
    assignment = made(w, profile="enforce")
    assert w["boss"].post(f"{URL}{assignment['id']}/approve/").status_code == 200
    task2 = approved_authority(w["site"], w["psa"].user)
    r = w["root"].patch(f"{URL}{assignment['id']}/", {"psa_task_id": str(task2.pk)}, format="json")
    assert r.status_code == 200, r.content
    assert r.json()["status"] == "awaiting_approval" and r.json()["psa_task_id"] == str(task2.pk)
    assert r.json()["requested_by"] == "root"
    event = HistoryEvent.objects.get(action="profile_assignment.changed")
    assert event.payload["before"]["psa_task_id"] == str(w["task"].pk) and event.payload["after"]["status"] == (
        "awaiting_approval"
    )
    assert w["root"].post(f"{URL}{assignment['id']}/approve/").status_code == 403
    assert w["boss"].post(f"{URL}{assignment['id']}/approve/").status_code == 200
    r = w["tech"].patch(f"{URL}{assignment['id']}/", {"audit_interval_seconds": 600}, format="json")
    assert r.status_code == 200 and r.json()["status"] == "awaiting_approval"
    assert r.json()["audit_interval_seconds"] == 600


def test_a_refused_change_changes_nothing(w):
    assignment = made(w, profile="enforce")
    before = snapshot()
    r = w["author"].patch(f"{URL}{assignment['id']}/", {"psa_task_id": str(w["other_task"].pk)}, format="json")
    assert r.status_code == 400 and list(r.json()) == ["psa_task_id"]
    r = w["boss"].patch(f"{URL}{assignment['id']}/", {"audit_interval_seconds": 600}, format="json")
    assert r.status_code == 403
    r = w["tech_b"].patch(f"{URL}{assignment['id']}/", {"audit_interval_seconds": 600}, format="json")
    assert r.status_code == 404
    assert snapshot() == before
    assert [p["reason"] for p in refusals("profile_assignment.change")] == [
        "no authority: the asset is outside the PSA case's site",
        "role may not author scripts",
    ]


# --- stopping -----------------------------------------------------------------------------------


def test_withdrawn_or_expired_authority_stops_its_assignments_with_the_reason(w):
    kept = made(w)
    stopped = made(w, profile="enforce", target="site")
    other_task = approved_authority(w["site"], w["psa"].user)
    expiring = made(w, profile="enforce", psa_task_id=str(other_task.pk))
    task = w["task"]
    authority.upsert_task(w["psa"].user, task.pk, case_id=task.case_id, title="done", status="closed")
    later = timezone.now() + timedelta(hours=1)
    authority.upsert_task(
        w["psa"].user, other_task.pk, case_id=other_task.case_id, title="t", status="approved", expires_at=later
    )
    assert assignments.stop_unauthorised_assignments() == 2  # the closed task's two
    assert assignments.stop_unauthorised_assignments(later + timedelta(seconds=1)) == 1
    assert assignments.stop_unauthorised_assignments(later + timedelta(seconds=1)) == 0
    rows = {str(a.pk): a for a in AssetConfigurationProfile.objects.all()}
    assert rows[kept["id"]].status_reason == "authority withdrawn: PSA task is closed, not approved"
    assert rows[stopped["id"]].status == rows[kept["id"]].status == rows[expiring["id"]].status == "stopped"
    assert "PSA task authority expired" in rows[expiring["id"]].status_reason
    events = HistoryEvent.objects.filter(action="profile_assignment.stopped")
    assert events.count() == 3 and {e.actor for e in events} == {"system"}


def test_a_technician_of_the_site_withdraws_one(w):
    first, second = made(w), made(w, profile="enforce")
    before = snapshot()
    assert w["boss"].delete(f"{URL}{first['id']}/").status_code == 403
    assert w["tech_b"].delete(f"{URL}{first['id']}/").status_code == 404
    assert snapshot() == before
    assert [p["reason"] for p in refusals("profile_assignment.withdraw")] == ["role may not author scripts"]
    assert w["tech"].delete(f"{URL}{first['id']}/").status_code == 204
    r = w["tech"].post(f"{URL}{second['id']}/withdraw/", {"reason": "moved to another baseline"}, format="json")
    assert r.status_code == 200 and r.json()["status"] == "stopped"
    assert r.json()["status_reason"] == "withdrawn by tech: moved to another baseline"
    assert w["tech"].get(f"{URL}{first['id']}/").json()["status_reason"] == "withdrawn by tech"
    assert w["tech"].post(f"{URL}{first['id']}/withdraw/", {}, format="json").status_code == 409
    assert w["tech"].patch(f"{URL}{first['id']}/", {"audit_interval_seconds": 600}, format="json").status_code == 409
    assert HistoryEvent.objects.filter(action="profile_assignment.stopped").count() == 2
    # stopped: the profile may be assigned there again
    assert assign(w).status_code == 201


# --- reading ------------------------------------------------------------------------------------


def test_the_list_is_per_site_filterable_and_paginated(w):
    on_asset = made(w)
    on_site = made(w, profile="enforce", target="site")
    on_other = made(w, who="author", target="other_asset", psa_task_id=str(w["other_task"].pk))

    def ids(caller, **query):
        return {row["id"] for row in w[caller].get(URL, query).json()["results"]}

    assert ids("tech") == {on_asset["id"], on_site["id"]}
    assert ids("tech_b") == {on_other["id"]}
    assert ids("root") == {on_asset["id"], on_site["id"], on_other["id"]}
    assert ids("root", site=str(w["site"].pk)) == {on_asset["id"], on_site["id"]}
    assert ids("root", asset=str(w["other_asset"].pk)) == {on_other["id"]}
    assert ids("root", profile=str(w["enforce"].pk)) == {on_site["id"]}
    assert ids("root", status="awaiting_approval") == {on_site["id"]}
    assert ids("tech_b", site=str(w["site"].pk)) == set()
    page = w["root"].get(URL, {"limit": 2}).json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    assert w["tech_b"].get(f"{URL}{on_asset['id']}/").status_code == 404


# --- the admin ----------------------------------------------------------------------------------


def test_the_admin_lists_awaiting_assignments_first_and_decides_them_with_the_same_laws(w, client):
    active = made(w)
    waiting = made(w, who="root", profile="enforce", target="site")
    page = "/admin/profiles/assetconfigurationprofile/"
    otp_login(client, w["root"].user)
    listing = client.get(page).content.decode()
    assert listing.index(waiting["id"]) < listing.index(active["id"])
    client.post(page, {"action": "approve", "_selected_action": [waiting["id"]]})
    assert AssetConfigurationProfile.objects.get(pk=waiting["id"]).status == "awaiting_approval"
    assert refusals("profile_assignment.approve")[0]["reason"] == "self-approval: requested the assignment"
    otp_login(client, w["boss"].user)
    client.post(page, {"action": "approve", "_selected_action": [waiting["id"]]})
    row = AssetConfigurationProfile.objects.get(pk=waiting["id"])
    assert row.status == "active" and row.decided_by == w["boss"].user
