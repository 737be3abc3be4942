"""An export whose builder died (the task cluster was killed mid-build) does not stay running
forever: the sweep queues it again, or fails it with the reason after RMM_EXPORT_MAX_ATTEMPTS
builds; an export whose task was lost is sent again. The real kill is in tests/faults/."""

from datetime import timedelta

from django.utils import timezone

from evidence import exports
from evidence.models import EvidenceExport
from rmm.history.models import HistoryEvent
from tests.evidence import test_evidence_export
from tests.helpers import post_json

world = test_evidence_export.world  # two sites with evidence
compliance = test_evidence_export.compliance  # compliance staff of the first


def request_export(compliance, capture) -> str:
    """POST an export whose task never runs (the broker lost it, or the cluster died first)."""
    with capture(execute=False):
        response = post_json(compliance.client, "/api/v1/evidence/exports/", {})
    assert response.status_code == 202, response.content
    return response.json()["id"]


def left_running(export_id: str, attempts: int, silent_for: timedelta) -> None:
    """What a builder killed mid-build leaves: running, its last sign of life ``silent_for`` ago."""
    then = timezone.now() - silent_for
    EvidenceExport.objects.filter(pk=export_id).update(
        status="running", attempts=attempts, started_at=then, heartbeat_at=then
    )


def test_a_running_export_whose_builder_died_is_built_again(
    world, compliance, django_capture_on_commit_callbacks, settings
):
    settings.RMM_TASKS_SYNC = True
    export_id = request_export(compliance, django_capture_on_commit_callbacks)
    left_running(export_id, attempts=1, silent_for=timedelta(seconds=settings.RMM_EXPORT_STALE_SECONDS + 1))
    with django_capture_on_commit_callbacks(execute=True):
        assert exports.sweep_exports()["resumed"] == 1
    done = compliance.get(f"/api/v1/evidence/exports/{export_id}/").json()
    assert (done["status"], done["attempts"], done["item_count"], done["error"]) == ("done", 2, 3, "")
    resumed = HistoryEvent.objects.get(action="evidence_export.resumed", subject_id=export_id)
    assert resumed.payload["attempt"] == 1
    assert resumed.payload["reason"].startswith("its build stopped (no progress since ")
    assert HistoryEvent.objects.filter(action="evidence_export.finished", subject_id=export_id).count() == 1


def test_after_the_last_attempt_it_fails_with_the_reason(
    world, compliance, django_capture_on_commit_callbacks, settings
):
    settings.RMM_EXPORT_MAX_ATTEMPTS = 2
    export_id = request_export(compliance, django_capture_on_commit_callbacks)
    left_running(export_id, attempts=2, silent_for=timedelta(seconds=settings.RMM_EXPORT_STALE_SECONDS + 1))
    with django_capture_on_commit_callbacks(execute=True):
        assert exports.sweep_exports()["failed"] == 1
    failed = compliance.get(f"/api/v1/evidence/exports/{export_id}/").json()
    assert failed["status"] == "failed" and failed["finished_at"]
    assert failed["error"].startswith("Its build stopped without finishing 2 times (no progress since ")
    assert failed["error"].endswith("the task cluster died, or the build ran past the task timeout. Request it again.")
    event = HistoryEvent.objects.get(action="evidence_export.failed", subject_id=export_id)
    assert event.payload["error"] == failed["error"]


def test_a_build_that_shows_life_is_left_alone(world, compliance, django_capture_on_commit_callbacks, settings):
    export_id = request_export(compliance, django_capture_on_commit_callbacks)
    left_running(export_id, attempts=1, silent_for=timedelta(seconds=settings.RMM_EXPORT_STALE_SECONDS - 5))
    assert exports.sweep_exports() == {"resumed": 0, "failed": 0, "requeued": 0, "alive": 0}
    assert EvidenceExport.objects.get(pk=export_id).status == "running"


def test_a_queued_export_whose_task_was_lost_is_sent_again(
    world, compliance, django_capture_on_commit_callbacks, settings
):
    settings.RMM_TASKS_SYNC = True
    export_id = request_export(compliance, django_capture_on_commit_callbacks)  # its task never ran
    assert exports.sweep_exports()["requeued"] == 0  # not yet: the cluster may only be busy
    later = timezone.now() + timedelta(seconds=settings.RMM_EXPORT_STALE_SECONDS + 1)
    with django_capture_on_commit_callbacks(execute=True):
        assert exports.sweep_exports(later)["requeued"] == 1
    done = compliance.get(f"/api/v1/evidence/exports/{export_id}/").json()
    assert (done["status"], done["attempts"]) == ("done", 1)
