"""Approved artefacts, generic: a second, test-only kind (tests/support/artefact_kind.py) goes
through the one approval service (author never approves, privileged tier, expiry, one decision of
two at once) and shows up in the one admin approval queue beside script versions."""

import threading
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.core.files.storage import default_storage
from django.db import connection
from django.test import Client
from django.utils import timezone

from rmm.access import services as access_services
from rmm.artefacts import services as artefacts
from rmm.core import blobs
from rmm.core.errors import Conflict, Forbidden, InvalidInput
from rmm.history.models import HistoryEvent
from scripting import services as scripting
from tests.helpers import otp_login
from tests.support.artefact_kind import (  # noqa: F401 - fixtures
    FOLDER,
    PolicyVersion,
    policy_kind,
    policy_table,
    write_policy,
)


@pytest.fixture
def people(caller, policy_kind):  # noqa: F811 - the kind registered for the test
    tech, boss, boss2 = caller("tech", "technician"), caller("boss", "approver"), caller("boss2", "approver")
    both = access_services.ensure_user_with_role("both", "technician")
    access_services.ensure_user_with_role("both", "approver")
    access_services.grant_site(both, None)
    return {"tech": tech.user, "boss": boss.user, "boss2": boss2.user, "both": both}


def refused(action, actor):
    return HistoryEvent.objects.filter(action=f"refused.{action}", actor=f"user:{actor}")


def status_of(policy) -> str:
    return PolicyVersion.objects.values_list("approval_status", flat=True).get(pk=policy.pk)


def test_a_second_kind_is_listed_with_content_and_diff_and_decided_in_the_one_queue(people):
    v1 = write_policy(people["tech"], "usb", "deny usb storage\n")
    artefacts.decide(v1, people["boss"], approve=True)
    v2 = write_policy(people["tech"], "usb", "deny usb storage\nallow usb keyboards\n")
    draft = scripting.create_script(people["tech"], name="draft", language="sh", content="true\n")
    client = otp_login(Client(), people["boss2"])

    body = client.get("/admin/approvals/").content.decode()
    assert f'data-kind="test_policy" data-id="{v2.pk}"' in body
    assert f'data-kind="script_version" data-id="{draft.pk}"' in body  # one queue for every kind
    assert "Test policy usb v2" in body and v2.content_sha256 in body
    assert "allow usb keyboards" in body  # the content, read from the blob store
    assert "+allow usb keyboards" in body and "--- usb v1" in body  # the diff from the approved v1
    assert 'data-kind="script_version"' not in client.get("/admin/approvals/?kind=test_policy").content.decode()

    client.post("/admin/approvals/", {"kind": "test_policy", "id": str(v2.pk), "decision": "approve"})
    assert status_of(v2) == "approved"
    event = HistoryEvent.objects.get(action="test_policy.approved", subject_id=str(v2.pk))
    assert event.actor == "user:boss2" and event.payload == {"name": "usb", "version": 2, "reason": ""}
    assert f'data-id="{v2.pk}"' not in client.get("/admin/approvals/").content.decode()


def test_the_diff_is_from_the_previous_approved_version_not_a_rejected_one(people):
    v1 = write_policy(people["tech"], "usb", "one\n")
    artefacts.decide(v1, people["boss"], approve=True)
    v2 = write_policy(people["tech"], "usb", "two\n")
    artefacts.decide(v2, people["boss"], approve=False, reason="no")
    write_policy(people["tech"], "usb", "three\n")
    [item] = artefacts.pending("test_policy")
    assert "-one\n" in item["diff"] and "+three\n" in item["diff"] and "two" not in item["diff"]


def test_the_author_never_decides_and_the_refusal_is_recorded(people):
    mine = write_policy(people["both"], "usb", "deny\n")
    with pytest.raises(Forbidden):
        artefacts.decide(mine, people["both"], approve=True)
    with pytest.raises(Forbidden):
        artefacts.decide(mine, people["both"], approve=False, reason="changed my mind")
    client = otp_login(Client(), people["both"])
    response = client.post("/admin/approvals/", {"kind": "test_policy", "id": str(mine.pk), "decision": "approve"})
    assert response.status_code == 403
    assert status_of(mine) == "pending"
    assert refused("test_policy.approve", "both").count() == 2
    assert refused("test_policy.reject", "both").get().payload["reason"] == "self-approval"


def test_a_role_that_may_not_approve_is_refused_and_recorded(people):
    policy = write_policy(people["boss"], "usb", "deny\n")
    with pytest.raises(Forbidden, match="role may not approve"):
        artefacts.decide(policy, people["tech"], approve=True)
    assert refused("test_policy.approve", "tech").get().payload["reason"] == "role may not approve"
    assert status_of(policy) == "pending"


def test_a_privileged_version_needs_the_kinds_permission(people):
    risky = write_policy(people["tech"], "usb", "allow all usb\n", high_risk=True)
    with pytest.raises(Forbidden, match="privileged test policy"):
        artefacts.decide(risky, people["boss"], approve=True)
    assert "privileged" in refused("test_policy.approve", "boss").get().payload["reason"]
    assert status_of(risky) == "pending"
    artefacts.decide(risky, people["boss"], approve=False, reason="too broad")  # rejecting needs no permission
    again = write_policy(people["tech"], "usb", "allow usb keyboards\n", high_risk=True)
    Permission.objects.create(
        codename="approve_high_risk_policy",
        name="May approve high-risk policies",
        content_type=ContentType.objects.get_for_model(PolicyVersion),
    )
    people["boss"].user_permissions.add(Permission.objects.get(codename="approve_high_risk_policy"))
    boss = get_user_model().objects.get(pk=people["boss"].pk)  # without the permission cache
    assert artefacts.decide(again, boss, approve=True).approval_status == "approved"


def test_a_rejection_needs_a_reason(people):
    policy = write_policy(people["tech"], "usb", "deny\n")
    with pytest.raises(InvalidInput):
        artefacts.decide(policy, people["boss"], approve=False, reason="  ")
    assert status_of(policy) == "pending"


def test_pending_versions_of_every_kind_expire_into_rejected(people, settings):
    policy = write_policy(people["tech"], "usb", "deny\n")
    script = scripting.create_script(people["tech"], name="later", language="sh", content="true\n")
    fresh_later = timezone.now() + timedelta(hours=settings.RMM_APPROVAL_TTL_HOURS - 1)
    assert artefacts.expire_pending(now=fresh_later) == 0
    later = timezone.now() + timedelta(hours=settings.RMM_APPROVAL_TTL_HOURS, minutes=1)
    assert artefacts.expire_pending(now=later) == 2
    assert status_of(policy) == "rejected" and script.__class__.objects.get(pk=script.pk).approval_status == "rejected"
    event = HistoryEvent.objects.get(action="test_policy.rejected", subject_id=str(policy.pk))
    assert event.actor == "system" and "expired" in event.payload["reason"]
    with pytest.raises(Conflict, match="This test policy is already rejected."):
        artefacts.decide(policy, people["boss"], approve=True)


def test_two_approvers_with_stale_views_cannot_both_decide(people):
    policy = write_policy(people["tech"], "usb", "deny\n")
    first, second = PolicyVersion.objects.get(pk=policy.pk), PolicyVersion.objects.get(pk=policy.pk)
    artefacts.decide(first, people["boss"], approve=True)
    with pytest.raises(Conflict):
        artefacts.decide(second, people["boss2"], approve=False, reason="unsafe")
    assert status_of(policy) == "approved"
    assert HistoryEvent.objects.filter(action__startswith="test_policy.", subject_id=str(policy.pk)).count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="two transactions at once: SQLite's in-memory test database refuses a second writer instead of "
    "waiting; the stale-view test above covers SQLite",
)
def test_two_approvers_at_once_make_exactly_one_decision(people, flushable_append_only):
    """Real threads on their own connections, released together at the conditional update."""
    policy = write_policy(people["tech"], "usb", "deny\n")
    start, outcomes = threading.Barrier(2), []

    def decide(user, approve):
        try:
            version = PolicyVersion.objects.get(pk=policy.pk)
            start.wait(timeout=10)
            artefacts.decide(version, user, approve=approve, reason="" if approve else "unsafe")
            outcomes.append("decided")
        except Conflict:
            outcomes.append("conflict")
        finally:
            connection.close()

    threads = [
        threading.Thread(target=decide, args=(people["boss"], True)),
        threading.Thread(target=decide, args=(people["boss2"], False)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["conflict", "decided"]
    assert status_of(policy) in ("approved", "rejected")
    decisions = HistoryEvent.objects.filter(action__in=["test_policy.approved", "test_policy.rejected"])
    assert decisions.count() == 1


def test_artefact_content_is_read_back_from_the_blob_store_and_rechecked(people):
    policy = write_policy(people["tech"], "usb", "deny usb storage\n")
    name = blobs.content_name(FOLDER, policy.content_sha256, "txt")
    assert default_storage.exists(name) and artefacts.pending("test_policy")[0]["content"] == "deny usb storage\n"
    with default_storage.open(name, "wb") as fh:
        fh.write(b"allow everything\n")
    [item] = artefacts.pending("test_policy")
    assert "does not match" in item["problem"] and item["content"] == ""
    assert HistoryEvent.objects.filter(action="refused.test_policy.read").exists()
    body = otp_login(Client(), people["boss"]).get("/admin/approvals/").content.decode()  # shown, not a 500
    assert "Its content cannot be shown" in body and "allow everything" not in body
