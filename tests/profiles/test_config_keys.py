"""Config key definitions: the built-in Linux keys arrive pending, idempotently; a key's hash covers
its scripts; four eyes through the one artefact service; the approval queue and the admin show them."""

import hashlib
import json
import shutil
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from profiles import services as profiles
from profiles.models import ConfigKey
from rmm.access import services as access_services
from rmm.core.errors import ServiceError
from rmm.history.models import HistoryEvent
from scripting.models import Script
from tests.helpers import otp_login
from tests.support.profiles import grant_privileged_approval

BUILTIN = Path(profiles.__file__).resolve().parent / "keys"
NAMES = {
    "linux.file_line",
    "linux.file_mode",
    "linux.file_owner",
    "linux.sysctl",
    "linux.systemd_unit_enabled",
    "linux.systemd_unit_active",
    "linux.package",
    "windows.registry_value",
    "windows.service_start_type",
    "windows.service_status",
    "windows.security_policy",
}
PRIVILEGED_READS = {"windows.security_policy"}  # secedit /export needs an administrator


@pytest.fixture
def people(caller):
    return {"tech": caller("tech", "technician"), "boss": caller("boss", "approver"), "psa": caller("psa", "psa")}


def load(author="tech") -> str:
    out = StringIO()
    call_command("rmm_config_keys_builtin", "--author", author, stdout=out)
    return out.getvalue()


def test_the_builtin_keys_arrive_pending_and_a_second_run_makes_nothing(people):
    assert load() == "11 new key version(s), 22 new script version(s), pending approval.\n"
    keys = ConfigKey.objects.all()
    assert {k.name for k in keys} == NAMES
    assert {k.approval_status for k in keys} == {"pending"}
    assert {s.approval_status for s in Script.objects.all()} == {"pending"}
    # Set scripts change the endpoint as root: approving them needs the privileged tier.
    assert all(k.set_script.privileged for k in keys)
    assert {k.name for k in keys if k.read_script.privileged} == PRIVILEGED_READS
    assert load() == "0 new key version(s), 0 new script version(s), pending approval.\n"
    assert ConfigKey.objects.count() == 11 and Script.objects.count() == 22


def test_a_changed_script_file_makes_a_new_script_and_key_version_whose_hash_covers_it(people, tmp_path):
    root = tmp_path / "keys"
    shutil.copytree(BUILTIN, root)
    tech = people["tech"].user
    profiles.load_builtin_keys(tech, root)
    before = ConfigKey.objects.get(name="linux.file_mode")
    read = root / "linux" / "file_mode" / "read.sh"
    read.write_text(read.read_text() + "# changed\n")
    assert profiles.load_builtin_keys(tech, root) == {"scripts": 1, "keys": 1}
    after = ConfigKey.objects.get(name="linux.file_mode", version=2)
    assert after.read_script.version == 2 and after.set_script_id == before.set_script_id
    assert after.content_sha256 != before.content_sha256
    document = profiles.definition_of(
        name=after.name,
        description=after.description,
        platform=after.platform,
        value_type=after.value_type,
        comparisons=after.comparisons,
        parameters=after.parameters,
        read_script=after.read_script,
        set_script=after.set_script,
    )
    assert document["read_script"]["sha256"] == hashlib.sha256(read.read_text().encode()).hexdigest()
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert after.content_sha256 == hashlib.sha256(canonical).hexdigest()


def test_loading_needs_a_script_author(people):
    with pytest.raises(CommandError, match="Your role may not author scripts."):
        load("psa")
    with pytest.raises(CommandError, match="No user named 'nobody'"):
        load("nobody")
    assert not ConfigKey.objects.exists()
    assert HistoryEvent.objects.filter(action="refused.config_key.create", actor="user:psa").exists()


def test_four_eyes_the_author_never_approves_a_key(people, caller):
    access_services.ensure_user_with_role("both", "technician")
    both = caller("both", "approver")  # a technician who is an approver too
    load("both")
    key = ConfigKey.objects.get(name="linux.sysctl")
    r = both.post(f"/api/v1/config-keys/{key.pk}/approve/")
    assert r.status_code == 403 and r.json() == {"detail": "You may not approve or reject your own work."}
    assert HistoryEvent.objects.filter(action="refused.config_key.approve", actor="user:both").exists()
    r = people["boss"].post(f"/api/v1/config-keys/{key.pk}/approve/")
    assert r.status_code == 200 and r.json()["status"] == "approved" and r.json()["usable"] is False
    assert people["boss"].post(f"/api/v1/config-keys/{key.pk}/approve/").status_code == 409
    # Its scripts are approved on their own; then the key is usable.
    grant_privileged_approval(people["boss"].user)
    for script in (key.read_script, key.set_script):
        assert people["boss"].post(f"/api/v1/scripts/{script.pk}/approve/").status_code == 200
    listed = people["psa"].get("/api/v1/config-keys/", {"name": "linux.sysctl"}).json()["results"]
    assert [(k["status"], k["usable"]) for k in listed] == [("approved", True)]
    assert profiles.usable_key("linux.sysctl") == key


def test_the_api_lists_what_a_key_is(people):
    load()
    r = people["psa"].get("/api/v1/config-keys/", {"name": "linux.file_line"})
    (key,) = r.json()["results"]
    assert key["platform"] == "linux" and key["value_type"] == "string" and key["status"] == "pending"
    assert key["comparisons"] == ["equals", "not_equals", "regex", "contains", "absent"]
    assert [p["name"] for p in key["parameters"]] == ["path", "key"]
    assert key["read_script"]["name"] == "config_key.linux.file_line.read" and key["read_script"]["version"] == 1
    assert key["set_script"]["approval_status"] == "pending"
    assert people["psa"].get("/api/v1/config-keys/", {"status": "approved"}).json()["count"] == 0


def test_the_approval_queue_lists_pending_keys_with_their_scripts(people):
    load()
    client = otp_login(Client(), people["boss"].user)
    page = client.get("/admin/approvals/", {"kind": "config_key"})
    assert page.status_code == 200
    body = page.content.decode()
    assert body.count('data-kind="config_key"') == len(NAMES)
    key = ConfigKey.objects.get(name="linux.file_line")
    assert "Config key linux.file_line v1" in body and key.content_sha256 in body
    assert "RMM_PARAM_PATH" in body  # the scripts' text, which the key's hash covers
    client.post("/admin/approvals/", {"kind": "config_key", "id": str(key.pk), "decision": "approve"})
    key.refresh_from_db()
    assert key.approval_status == "approved" and key.decided_by == people["boss"].user


def test_the_admin_shows_keys_and_profiles_read_only(people):
    load()
    client = otp_login(Client(), people["boss"].user)
    key = ConfigKey.objects.get(name="linux.package")
    assert "linux.package" in client.get("/admin/profiles/configkey/").content.decode()
    page = client.get(f"/admin/profiles/configkey/{key.pk}/change/").content.decode()
    assert "dpkg-query" in page and key.content_sha256 in page
    assert 'type="submit" value="Save"' not in page
    assert client.get("/admin/profiles/configurationprofile/").status_code == 200
    assert client.get("/admin/profiles/configkey/add/").status_code == 403


def test_a_bad_definition_loads_nothing(people, tmp_path):
    root = tmp_path / "keys"
    shutil.copytree(BUILTIN, root)
    broken = root / "linux" / "zz_broken"
    broken.mkdir()
    spec = json.loads((root / "linux" / "file_mode" / "key.json").read_text())
    (broken / "key.json").write_text(json.dumps({**spec, "name": "linux.broken", "comparisons": ["at_least"]}))
    shutil.copy(root / "linux" / "file_mode" / "read.sh", broken / "read.sh")
    shutil.copy(root / "linux" / "file_mode" / "set.sh", broken / "set.sh")
    with pytest.raises(ServiceError, match="A string key allows some of"):
        profiles.load_builtin_keys(people["tech"].user, root)
    assert not ConfigKey.objects.exists() and not Script.objects.exists()
