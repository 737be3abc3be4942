"""The built-in Windows keys (registry value, service start type and running state, local security
policy through secedit): no Windows host runs here, so they are tested by what the server renders for them and
by how it reads the document their audit writes (samples of it, as the rendered script writes
them: one line per value, "`n"-terminated, base64 in the document)."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import pytest
from django.utils import timezone

from profiles import auditing
from profiles import services as profiles
from profiles.models import ConfigKey, ConfigurationEnforcementJob, ConfigurationObservation, ObservationState
from rmm.artefacts import services as artefacts
from rmm.engine import services as engine
from rmm_agent.results import make_result
from scripting.models import Script
from tests.helpers import approved_authority, make_agent
from tests.profiles.test_enforcement import approved_assignment, audit
from tests.support.profiles import grant_privileged_approval

HOSTILE = 'it\'s ‘quoted’ $(Remove-Item C:\\) `n "x"'


@pytest.fixture
def windows(caller):
    tech, boss = caller("tech", "technician").user, caller("boss", "approver").user
    grant_privileged_approval(boss)
    profiles.load_builtin_keys(tech)
    for script in Script.objects.filter(name__startswith="config_key.windows."):
        artefacts.decide(script, boss, approve=True)
    for key in ConfigKey.objects.filter(platform="windows"):
        artefacts.decide(key, boss, approve=True)
    return tech


def profile_items(tech, *keys: str):
    specs = {
        "windows.registry_value": {
            "parameters": {"path": "HKLM:\\SOFTWARE\\Policies\\Microsoft\\Windows\\WindowsUpdate\\AU", "name": HOSTILE},
            "desired_value": "1",
        },
        "windows.service_start_type": {"parameters": {"name": "RemoteRegistry"}, "desired_value": "Disabled"},
        "windows.service_status": {"parameters": {"name": "RemoteRegistry"}, "desired_value": "Stopped"},
        "windows.security_policy": {
            "parameters": {"section": "System Access", "setting": "MinimumPasswordLength"},
            "desired_value": "14",
        },
    }
    profile = profiles.create_profile(
        tech,
        name="windows-baseline",
        profile_type="hardening",
        items=[{"config_key": key, "comparison": "equals", **specs[key]} for key in keys],
    )
    return list(profile.current_revision.items.select_related("config_key__read_script").order_by("position"))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_one_powershell_instruction_reads_every_item_with_no_value_read_as_code(windows):
    items = profile_items(windows, "windows.registry_value", "windows.service_start_type", "windows.security_policy")
    rendered = auditing.render(items)
    assert rendered.interpreter == "powershell"
    assert rendered.privileged is True  # secedit /export needs an administrator
    assert rendered.timeout_seconds == 60 + 30 * 3
    text = rendered.content
    # each approved read script once, exactly its content, base64
    for item in items:
        assert text.count(b64(item.config_key.read_script.content)) == 1
    # each item run once with its parameters as its child's environment, never as text
    for item in items:
        assert text.count(f"Invoke-Script $entries '{item.pk}' ") == 1
    assert HOSTILE not in text and "Remove-Item C:" not in text and b64(HOSTILE) in text
    assert f"'RMM_PARAM_NAME' = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{b64(HOSTILE)}'))" in text
    assert b64("System Access") in text and b64("MinimumPasswordLength") in text
    # the document, its caps, the timeout per read, removed when it ends
    assert '{"format":"rmm.profile_audit/1","items":[' in text and "$env:RMM_RESULT_PATH" in text
    cap, stderr_cap = auditing.caps(3)
    assert f"(Head $o {cap})" in text and f"(Head $e {stderr_cap})" in text
    assert "$p.WaitForExit($limit)" in text and "$code = 124" in text
    assert all(line.endswith(" 30000") for line in text.splitlines() if line.startswith("  Invoke-Script "))
    assert "Remove-Item -LiteralPath $dir -Recurse -Force" in text


def test_reads_that_need_no_administrator_run_unprivileged_and_platforms_do_not_mix(windows):
    items = profile_items(windows, "windows.registry_value", "windows.service_start_type")
    assert auditing.render(items).privileged is False
    items[1].config_key.platform = "linux"
    with pytest.raises(ValueError, match="the profile mixes platforms: linux, windows"):
        auditing.render(items)


def sample(items, reads: list[tuple[int, bytes, bytes]]) -> dict:
    """The document the rendered script writes to RMM_RESULT_PATH for these reads."""
    entries = [
        {
            "item": str(item.pk),
            "exit_code": code,
            "stdout_bytes": len(out),
            "stdout": base64.b64encode(out).decode(),
            "stderr": base64.b64encode(err).decode(),
        }
        for item, (code, out, err) in zip(items, reads, strict=True)
    ]
    return {"structured": {"format": "rmm.profile_audit/1", "items": entries}}


def verdicts(items, result: dict) -> list[tuple[str, str | None]]:
    readings = auditing.parse(result)
    found = [
        auditing.compare(item.comparison, item.config_key.value_type, item.desired_value, readings.get(str(item.pk)))
        for item in items
    ]
    return [(verdict.state, verdict.observed_value) for verdict in found]


def test_the_documents_windows_reads_write_are_compared_on_the_server(windows):
    items = profile_items(windows, "windows.registry_value", "windows.service_start_type", "windows.security_policy")
    complying = sample(items, [(0, b"1\n", b""), (0, b"Disabled\n", b""), (0, b"14\n", b"")])
    assert verdicts(items, complying) == [("compliant", "1"), ("compliant", "Disabled"), ("compliant", "14")]
    drifted = sample(items, [(3, b"", b""), (0, b"Manual\n", b""), (0, b"7\n", b"")])
    assert verdicts(items, drifted) == [
        (ObservationState.NON_COMPLIANT, None),  # no such value: absent
        (ObservationState.NON_COMPLIANT, "Manual"),
        (ObservationState.NON_COMPLIANT, "7"),
    ]
    failed = sample(
        items,
        [
            (2, b"", b"path and name are required"),
            (124, b"", b""),
            (4, b"", b"secedit /export failed: Access is denied."),
        ],
    )
    states = verdicts(items, failed)
    assert [state for state, _ in states] == [ObservationState.ERROR] * 3
    readings = auditing.parse(failed)
    reason = auditing.compare("equals", "string", "14", readings[str(items[2].pk)]).reason
    assert "4" in reason and "Access is denied" in reason
    # the same document on stdout (an agent without a result path) reads the same
    stdout = json.dumps(failed["structured"]).encode() + b"\n"
    assert auditing.parse({"stdout": stdout}).keys() == readings.keys()


def test_a_services_running_state_is_read_beside_its_start_type_and_compared_on_the_server(windows):
    items = profile_items(windows, "windows.service_start_type", "windows.service_status")
    rendered = auditing.render(items)
    assert rendered.privileged is False  # Get-Service needs no administrator
    status = items[1].config_key
    assert status.set_script.privileged is True and status.set_script.language == "powershell"
    assert "Get-Service" in status.read_script.content and "$service.Status" in status.read_script.content
    assert {"Start-Service", "Stop-Service"} <= set(status.set_script.content.split())
    # both keys' read scripts once each, each item run once with its own script
    for n, item in enumerate(items):
        assert rendered.content.count(b64(item.config_key.read_script.content)) == 1
        assert f"Invoke-Script $entries '{item.pk}' (Join-Path $dir 's{n}.ps1')" in rendered.content
    stopped = sample(items, [(0, b"Disabled\n", b""), (0, b"Stopped\n", b"")])
    assert verdicts(items, stopped) == [("compliant", "Disabled"), ("compliant", "Stopped")]
    running = sample(items, [(0, b"Manual\n", b""), (0, b"Running\n", b"")])
    assert verdicts(items, running) == [
        (ObservationState.NON_COMPLIANT, "Manual"),
        (ObservationState.NON_COMPLIANT, "Running"),
    ]
    gone = sample(items, [(3, b"", b""), (3, b"", b"")])
    assert verdicts(items, gone) == [(ObservationState.NON_COMPLIANT, None)] * 2  # no such service: absent


def enforced_item(tech, key: str, desired: str, **parameters: str):
    profile = profiles.create_profile(
        tech,
        name=f"enforced-{key}",
        profile_type="hardening",
        items=[
            {
                "config_key": key,
                "parameters": parameters,
                "desired_value": desired,
                "comparison": "equals",
                "enforcement_mode": "enforce",
            }
        ],
    )
    return profile.current_revision.items.select_related("config_key__read_script", "config_key__set_script").get()


def test_an_enforcement_is_one_powershell_script_its_set_script_then_a_fresh_read(windows):
    path = "HKLM:\\SOFTWARE\\Policies\\Microsoft\\Windows\\WindowsUpdate\\AU"
    item = enforced_item(windows, "windows.registry_value", HOSTILE, path=path, name="NoAutoUpdate")
    key = item.config_key
    rendered = auditing.ENFORCEMENT_RENDERERS["windows"](item)
    assert (rendered.interpreter, rendered.privileged) == ("powershell", True)  # the set script is privileged
    assert rendered.timeout_seconds == 60 + 600 + 30
    text = rendered.content
    # both approved scripts once, exactly their content; no value is ever code
    assert text.count(b64(key.set_script.content)) == 1 and text.count(b64(key.read_script.content)) == 1
    assert HOSTILE not in text and "Remove-Item C:" not in text
    runs = [line for line in text.splitlines() if line.startswith("  Invoke-Script ")]
    assert len(runs) == 2
    set_run, read_run = runs  # the set script first, with its 600 s, then the re-read with 30 s

    def env(name: str, value: str) -> str:
        return f"'{name}' = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{b64(value)}'))"

    assert set_run.startswith("  Invoke-Script $sets 'set' (Join-Path $dir 's0.ps1') ") and set_run.endswith(" 600000")
    for name, value in (
        ("RMM_COMPARISON", "equals"),
        ("RMM_DESIRED_VALUE", HOSTILE),
        ("RMM_PARAM_NAME", "NoAutoUpdate"),
        ("RMM_PARAM_PATH", path),
    ):
        assert env(name, value) in set_run
    assert read_run.startswith(f"  Invoke-Script $entries '{item.pk}' (Join-Path $dir 's1.ps1') ")
    assert read_run.endswith(" 30000") and env("RMM_PARAM_PATH", path) in read_run
    assert "RMM_DESIRED_VALUE" not in read_run and "RMM_COMPARISON" not in read_run
    assert (
        """$doc = '{"format":"rmm.profile_enforce/1","set":[' + ($sets -join ',') + '],"items":[' """
        """+ ($entries -join ',') + ']}'"""
    ) in text
    assert f"(Head $o {auditing.value_cap(1)})" in text
    assert "Remove-Item -LiteralPath $dir -Recurse -Force" in text


def enforced(item, set_run: tuple[int, bytes], reread: tuple[int, bytes]) -> dict:
    """The document the rendered enforcement writes to RMM_RESULT_PATH: the set script's run and the
    re-read ``(exit code, stdout or stderr)`` (the set's bytes are its stderr)."""
    (set_code, set_err), (read_code, read_out) = set_run, reread
    entry = sample([item], [(read_code, read_out, b"")])["structured"]["items"]
    run = {"item": "set", "exit_code": set_code, "stdout_bytes": 0, "stdout": "", "stderr": b64(set_err.decode())}
    return {"structured": {"format": "rmm.profile_enforce/1", "set": [run], "items": entry}}


def test_the_re_read_in_the_enforcements_document_decides_never_the_set_scripts_exit(windows):
    item = enforced_item(windows, "windows.service_status", "Stopped", name="RemoteRegistry")
    arguments = auditing.enforcement_arguments(item)
    fixed = auditing.enforcement_outcome(arguments, enforced(item, (0, b""), (0, b"Stopped\n")))
    assert (fixed.failure, fixed.verdict.state, fixed.verdict.observed_value) == ("", "compliant", "Stopped")
    still = auditing.enforcement_outcome(arguments, enforced(item, (0, b""), (0, b"Running\n")))
    assert still.failure == ("the set script exited 0 but the re-read is non_compliant: 'Running' (equals 'Stopped')")
    refused = enforced(item, (2, b"the desired value must be Running or Stopped"), (0, b"Running\n"))
    failure = auditing.enforcement_outcome(arguments, refused).failure
    assert failure == "the set script exited 2: the desired value must be Running or Stopped"
    # the same document on stdout (an agent without a result path) is judged the same
    stdout = json.dumps(refused["structured"]).encode() + b"\n"
    assert auditing.enforcement_outcome(arguments, {"stdout": stdout}).failure == failure


def test_drift_on_an_enforce_mode_windows_item_makes_a_powershell_enforcement_job(
    windows, caller, site, settings, django_capture_on_commit_callbacks
):
    """Through the engine, as for Linux keys (tests/profiles/test_enforcement.py): approved, the
    audit's drift makes a job whose instruction is the rendered PowerShell; its recorded document
    is taken in and the re-read decides."""
    settings.RMM_TASKS_SYNC = True
    psa, boss = caller("psa", "psa"), caller("boss", "approver")
    agent, _ = make_agent(site, "win-01")
    w = SimpleNamespace(
        tech=caller("tech", "technician"), boss=boss, psa=psa, agent=agent, task=approved_authority(site, psa.user)
    )
    item = enforced_item(windows, "windows.service_status", "Stopped", name="RemoteRegistry")
    assignment = approved_assignment(w, item.revision.profile)
    audit(w, assignment, b"Running\n", django_capture_on_commit_callbacks)
    [job] = ConfigurationEnforcementJob.objects.all()
    assert (job.status, job.before_value, job.item_id) == ("queued", "Running", item.pk)
    [inst] = engine.lease(agent, 4, timezone.now())
    assert (inst.job_id, inst.interpreter, inst.privileged) == (job.pk, "powershell", True)
    assert inst.content == auditing.render_enforcement_windows(item).content
    assert inst.arguments == [str(item.pk), "equals", "string", "Stopped"]
    body = make_result(
        str(inst.pk),
        "completed",
        exit_code=0,
        stdout=json.dumps(enforced(item, (0, b""), (0, b"Stopped\n"))["structured"]).encode(),
    )
    assert engine.ingest_result(agent, body) == (201, {"status": "accepted"})
    job.refresh_from_db()
    assert (job.status, job.after_value, job.after_state) == ("succeeded", "Stopped", "compliant")
    assert ConfigurationObservation.objects.get(item=item).enforcement_job_id == job.pk
