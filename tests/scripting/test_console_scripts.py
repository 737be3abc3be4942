"""The console's script library and editor: a technician writes a new version in the browser and
sees it in the library pending approval; a version's page shows its diff against the previous one,
escaped; roles that may not author scripts are refused (recorded) with 403."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from rmm.access import services as access_services
from rmm.history.models import HistoryEvent
from scripting import services as scripting
from scripting.models import Script
from tests.helpers import approved_script, otp_login

pytestmark = pytest.mark.django_db

FORM = {"name": "cleanup", "language": "bash", "content": "rm -rf /tmp/cache\n", "timeout_seconds": "120"}


def signed_in(name: str, role: str) -> tuple[Client, object]:
    user = access_services.ensure_user_with_role(name, role)
    client = Client()
    if role in ("admin", "approver"):
        otp_login(client, user)
    else:
        client.force_login(user)
    return client, user


def test_a_technician_writes_a_version_and_sees_it_pending_in_the_library():
    client, tech = signed_in("tech", "technician")
    response = client.post("/console/scripts/new/", {**FORM, "privileged": "on", "requires_approval": "on"})
    script = Script.objects.get(name="cleanup")
    assert response.status_code == 302 and response["Location"] == f"/console/scripts/{script.pk}/"
    assert (script.version, script.language, script.timeout_seconds) == (1, "bash", 120)
    assert script.privileged and script.requires_approval and script.author == tech
    created = HistoryEvent.objects.get(action="script.created", subject_id=str(script.pk))
    assert created.actor == "user:tech"

    page = client.get("/console/scripts/").content.decode()
    row = page[page.index(f'data-script-id="{script.pk}"') :].split("</tr>")[0]
    assert "cleanup" in row and "pending approval" in row and "Bash" in row
    shown = client.get(f"/console/scripts/{script.pk}/").content.decode()
    assert "pending approval" in shown and "The first version." in shown


def test_editing_writes_the_next_version_and_shows_the_changed_lines_escaped():
    client, tech = signed_in("tech", "technician")
    boss = access_services.ensure_user_with_role("boss", "approver")
    first = approved_script(tech, boss, name="greet", content="echo hello\necho <b>bye</b>\n")
    form = client.get(f"/console/scripts/new/?from={first.pk}").content.decode()
    assert "Next version of greet (after v1)" in form and "echo &lt;b&gt;bye&lt;/b&gt;" in form

    body = {**FORM, "name": "greet", "language": "sh", "content": "echo world\necho <b>bye</b>\n"}
    assert client.post("/console/scripts/new/", body).status_code == 302
    second = Script.objects.get(name="greet", version=2)
    first.refresh_from_db()
    assert first.content == "echo hello\necho <b>bye</b>\n" and first.approval_status == "approved"

    page = client.get(f"/console/scripts/{second.pk}/").content.decode()
    diff = page[page.index('id="diff"') :].split("</pre>")[0]
    assert '<span class="diff-removed">-echo hello</span>' in diff
    assert '<span class="diff-added">+echo world</span>' in diff
    assert '<span class="diff-same"> echo &lt;b&gt;bye&lt;/b&gt;</span>' in diff
    assert "<b>" not in diff
    versions = page[page.index('id="versions"') :].split("</ul>")[0]
    assert "v2</a> — pending approval" in versions and "v1</a> — approved" in versions


def test_bad_input_answers_400_beside_the_field():
    client, _ = signed_in("tech", "technician")
    response = client.post("/console/scripts/new/", {**FORM, "content": "   "})
    assert response.status_code == 400
    assert "A script needs content." in response.content.decode()
    response = client.post("/console/scripts/new/", {**FORM, "timeout_seconds": "0"})
    assert response.status_code == 400
    assert not Script.objects.exists()


@pytest.mark.parametrize("role", ["approver", "psa", "compliance", "edr", "scanner"])
def test_other_roles_may_not_author_and_the_refusal_is_recorded(role):
    client, user = signed_in(f"someone-{role}", role)
    assert client.get("/console/scripts/new/").status_code == 403
    assert client.post("/console/scripts/new/", FORM).status_code == 403
    assert not Script.objects.exists()
    assert HistoryEvent.objects.filter(action="refused.script.create").count() == 2
    library = client.get("/console/scripts/").content.decode()
    assert "Write a new script" not in library


def test_the_library_costs_the_same_queries_whatever_the_versions():
    client, tech = signed_in("tech", "technician")
    boss = access_services.ensure_user_with_role("boss", "approver")

    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/console/scripts/").status_code == 200
        return len(captured)

    approved_script(tech, boss, name="one")
    few = count()
    for n in range(12):
        script = scripting.create_script(tech, name=f"s{n % 4}", language="sh", content=f"echo {n}\n")
        if n % 3 == 0:
            scripting.approve_script(script, boss)
    assert count() == few
