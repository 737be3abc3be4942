"""Config keys made as a user would: scripts and the definition written by one person through the
services and approved by another (tests/profiles, the authorization matrix's world)."""

from __future__ import annotations

from django.contrib.auth.models import Permission

from profiles import services as profiles
from profiles.models import ConfigKey
from rmm.artefacts import services as artefacts
from tests.helpers import approved_script

LINE_READ = 'awk -v k="$RMM_PARAM_KEY" \'$1 == k { print $2; f = 1 } END { exit f ? 0 : 3 }\' "$RMM_PARAM_PATH"\n'
DESCRIPTIONS = {"path": "the file", "key": "the line's key"}
LINE_SET = 'echo "$RMM_PARAM_KEY $RMM_DESIRED_VALUE" >> "$RMM_PARAM_PATH"\n'


def approved_key(
    author,
    approver,
    *,
    name: str = "test.line",
    value_type: str = "string",
    comparisons: tuple[str, ...] = ("equals", "not_equals", "regex", "contains", "absent"),
    settable: bool = True,
    approve: bool = True,
    read: str = LINE_READ,
    parameters: tuple[str, ...] = ("path", "key"),
    set_content: str = LINE_SET,
) -> ConfigKey:
    """A key with parameters ``path`` and ``key`` (or ``parameters``), its scripts approved (the
    read script ``read``, the set script ``set_content``), and itself approved unless ``approve``
    is false."""
    read = approved_script(author, approver, name=f"{name}.read", content=read)
    write = approved_script(author, approver, name=f"{name}.set", content=set_content) if settable else None
    key = profiles.create_config_key(
        author,
        name=name,
        platform="linux",
        value_type=value_type,
        comparisons=list(comparisons),
        parameters=[{"name": param, "description": DESCRIPTIONS.get(param, param)} for param in parameters],
        read_script=read,
        set_script=write,
    )
    return artefacts.decide(key, approver, approve=True) if approve else key


def grant_privileged_approval(user) -> None:
    """The permission that approving a privileged script (the built-in keys' set scripts) needs."""
    user.user_permissions.add(Permission.objects.get(codename="approve_privileged"))
    for cached in ("_perm_cache", "_user_perm_cache"):
        user.__dict__.pop(cached, None)


def audited(psa, assignment, agent_auth) -> dict:
    """One audit of ``assignment`` (of the agent's asset), leased and reported by the agent with
    every item present ("x"), so the world holds an audit job, observations and a drift event (the
    authorization matrix's world): their ids by placeholder (``observation``: the first item's)."""
    import base64
    import json

    from profiles import audits
    from profiles.models import ConfigurationDriftEvent, ConfigurationObservation
    from tests.helpers import heartbeat, report

    profile = assignment.profile
    [job] = audits.request_audit(psa, assignment.pk)
    [leased] = heartbeat(agent_auth)["instructions"]
    entries = [
        {"item": str(item.pk), "exit_code": 0, "stdout_bytes": 2, "stdout": base64.b64encode(b"x\n").decode()}
        for item in profile.current_revision.items.all()
    ]
    document = json.dumps({"format": "rmm.profile_audit/1", "items": entries})
    assert report(agent_auth, json.loads(leased["payload"])["instruction_id"], stdout=document).status_code == 201
    return {
        "audit_job": str(job.pk),
        "drift_event": str(ConfigurationDriftEvent.objects.get(audit_job=job).pk),
        "observation": str(ConfigurationObservation.objects.filter(audit_job=job).order_by("item__position")[0].pk),
    }


def enforcement_row(assignment, audit_job_id: str, requester, approver) -> str:
    """An enforcement job of the assignment's first item, as one that ran and failed (a row only,
    no instruction: nothing for the world's agent to lease): its id, for the authorization matrix."""
    from django.utils import timezone

    from profiles.models import ConfigurationEnforcementJob

    revision = assignment.profile.current_revision
    job = ConfigurationEnforcementJob.objects.create(
        assignment=assignment,
        profile_revision=revision,
        item=revision.items.order_by("position").first(),
        asset_id=assignment.asset_id,
        psa_task_id=assignment.psa_task_id,
        site_id=assignment.asset.site_id,
        audit_job_id=audit_job_id,
        before_value="x",
        before_state="non_compliant",
        before_observed_at=timezone.now(),
        status="failed",
        status_reason="the set script exited 1",
        requested_by=requester,
        decided_by=approver,
        decided_at=timezone.now(),
    )
    return str(job.pk)
