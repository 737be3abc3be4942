"""How the kind contract test makes a job of each registered kind (tests/engine/test_kind_contract.py).

A new job kind adds its example here; the contract test fails for a registered kind without one.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from tempfile import NamedTemporaryFile
from typing import Any

from django.utils import timezone

from deployment import services as deployment
from profiles import services as profiles
from profiles.models import AssetConfigurationProfile, ConfigurationAuditJob, ConfigurationObservation
from rmm.artefacts import services as artefacts
from rmm.engine import services as engine
from rmm.inventory import services as inventory
from rmm.inventory.models import Agent
from rmm.updates import releases
from scripting import services as scripting
from tests.helpers import approved_script
from tests.stepkind.jobs import create_step_job
from tests.support.profiles import approved_key, grant_privileged_approval


@dataclass
class World:
    site: Any
    psa: Any  # the PSA's user, which requests the jobs
    tech: Any
    boss: Any  # an approver
    task: Any
    agent: Any


class ScriptExample:
    """Script jobs render one step: their multi-step cases run with that one step."""

    steps = (1,)

    def make(self, w: World, *, steps: int = 1, fail_step: int | None = None, requires_approval: bool = False):
        content = "echo step 0\n" + ("exit 1\n" if fail_step == 0 else "")
        # A version that requires approval makes each of its jobs wait for an approver.
        script = approved_script(w.tech, w.boss, name="contract", content=content, requires_approval=requires_approval)
        return scripting.create_script_job(w.psa, script_id=script.pk, asset_id=w.agent.asset_id, psa_task_id=w.task.pk)


class StepExample:
    steps = (1, 3)

    def make(self, w: World, *, steps: int = 1, fail_step: int | None = None, requires_approval: bool = False):
        return create_step_job(
            w.psa,
            asset=w.agent.asset,
            task=w.task,
            steps=steps,
            fail_step=fail_step,
            requires_approval=requires_approval,
        )


class UpdateExample:
    """An update is one step, to an agent that reports the self_update capability."""

    steps = (1,)

    def make(self, w: World, *, steps: int = 1, fail_step: int | None = None, requires_approval: bool = False):
        with NamedTemporaryFile(suffix=".tar.gz") as artefact:
            artefact.write(b"an agent release")
            artefact.flush()
            releases.publish(Path(artefact.name), "9.9.9")
        Agent.objects.filter(pk=w.agent.pk).update(capabilities="self_update")
        return engine.create_job(
            w.psa,
            "agent_update",
            asset_id=w.agent.asset_id,
            psa_task_id=w.task.pk,
            version="9.9.9",
            requires_approval=requires_approval,
        )


class DeploymentExample:
    """Two steps with a detection rule (install, detection read), one without; to an agent that
    fetches artefacts."""

    steps = (1, 2)

    def make(self, w: World, *, steps: int = 1, fail_step: int | None = None, requires_approval: bool = False):
        package = deployment.register_upload(
            w.tech,
            upload=io.BytesIO(b"a package"),
            name="contract-pkg",
            version="1.0",
            installer_type="deb",
            silent_args="",
            detection={"type": "package", "name": "contract-pkg"} if steps == 2 else {},
            uninstall_args="",
        )
        grant_privileged_approval(w.boss)
        artefacts.decide(package, w.boss, approve=True)
        Agent.objects.filter(pk=w.agent.pk).update(capabilities="artefacts,structured_result", protocol=2)
        w.agent.refresh_from_db()  # the lease reads the agent's protocol from the object it is given
        return engine.create_job(
            w.psa,
            "deployment",
            asset_id=w.agent.asset_id,
            psa_task_id=w.task.pk,
            package_id=package.pk,
            requires_approval=requires_approval,
        )


class AuditExample:
    """A configuration audit is one step reading every item of an assignment's profile."""

    steps = (1,)

    def make(self, w: World, *, steps: int = 1, fail_step: int | None = None, requires_approval: bool = False):
        if profiles.usable_key("contract.echo") is None:
            approved_key(w.tech, w.boss, name="contract.echo", parameters=("value",), read='echo "$RMM_PARAM_VALUE"\n')
        profile = profiles.create_profile(
            w.tech,
            name=f"contract-{uuid.uuid4().hex[:8]}",
            profile_type="contract",
            items=[
                {
                    "config_key": "contract.echo",
                    "parameters": {"value": "a"},
                    "desired_value": "a",
                    "comparison": "equals",
                }
            ],
        )
        assignment = AssetConfigurationProfile.objects.create(
            profile=profile, asset=w.agent.asset, psa_task=w.task, status="active", requested_by=w.tech
        )
        if requires_approval:  # audits ask for none of their own: the PSA requesting on its own authority does
            inventory.set_site_policy("cli:rmm_site_policy", w.site, allow_self_authorized_jobs=False)
        return engine.create_job(
            w.psa, "profile_audit", asset_id=w.agent.asset_id, psa_task_id=w.task.pk, assignment_id=assignment.pk
        )


class EnforcementExample:
    """An enforcement is one step (the set script, then a fresh read) on one drifted item, under an
    assignment a second person approved; with ``requires_approval`` the approval is the
    requester's own, which covers nothing, and the site wants a second person for the PSA's
    self-authorized jobs. The contract's agent reports an enforcement document whose re-read
    complies (:meth:`stdout`)."""

    steps = (1,)

    def make(self, w: World, *, steps: int = 1, fail_step: int | None = None, requires_approval: bool = False):
        if profiles.usable_key("contract.settable") is None:
            approved_key(
                w.tech, w.boss, name="contract.settable", parameters=("value",), read='echo "$RMM_PARAM_VALUE"\n'
            )
        profile = profiles.create_profile(
            w.tech,
            name=f"contract-{uuid.uuid4().hex[:8]}",
            profile_type="contract",
            items=[
                {
                    "config_key": "contract.settable",
                    "parameters": {"value": "a"},
                    "desired_value": "b",
                    "comparison": "equals",
                    "enforcement_mode": "enforce",
                }
            ],
        )
        revision = profile.current_revision
        assignment = AssetConfigurationProfile.objects.create(
            profile=profile,
            asset=w.agent.asset,
            psa_task=w.task,
            status="active",
            requested_by=w.psa,
            approved_revision=revision,
            decided_by=w.psa if requires_approval else w.boss,
            decided_at=timezone.now(),
        )
        if requires_approval:
            inventory.set_site_policy("cli:rmm_site_policy", w.site, allow_self_authorized_jobs=False)
        audit = ConfigurationAuditJob.objects.create(
            assignment=assignment,
            profile_revision=revision,
            asset=w.agent.asset,
            psa_task=w.task,
            site=w.site,
            status="succeeded",
            requested_by=w.psa,
        )
        observation = ConfigurationObservation.objects.create(
            asset=w.agent.asset,
            item=revision.items.get(),
            profile_revision=revision,
            observed_value="a",
            observed_at=timezone.now(),
            compliant=False,
            state="non_compliant",
            known_state="non_compliant",
            exit_code=0,
            audit_job=audit,
        )
        return engine.create_job(
            w.psa,
            "profile_enforce",
            asset_id=w.agent.asset_id,
            psa_task_id=w.task.pk,
            assignment_id=assignment.pk,
            observation_id=observation.pk,
        )

    @staticmethod
    def stdout(inst) -> str:
        """What the endpoint prints: the set script ran, and the re-read finds the desired value."""
        item, _, _, desired = inst.arguments
        entry = {
            "exit_code": 0,
            "stdout_bytes": len(desired) + 1,
            "stdout": base64.b64encode(f"{desired}\n".encode()).decode(),
        }
        return json.dumps(
            {
                "format": "rmm.profile_enforce/1",
                "set": [{"item": "set", "exit_code": 0, "stdout_bytes": 0, "stdout": ""}],
                "items": [{"item": item, **entry}],
            }
        )


def stdout_of(inst, default: str) -> str:
    """What the contract's agent prints for an instruction: its kind's example says, or ``default``."""
    example = EXAMPLES.get(inst.job_kind)
    return example.stdout(inst) if hasattr(example, "stdout") else default


class PatchScanExample:
    """A scan is one read-only step, to an agent that returns structured results."""

    steps = (1,)

    def make(self, w: World, *, steps: int = 1, fail_step: int | None = None, requires_approval: bool = False):
        Agent.objects.filter(pk=w.agent.pk).update(capabilities="structured_result", protocol=2)
        w.agent.refresh_from_db()
        if requires_approval:  # a scan asks for none of its own: the PSA requesting on its own authority does
            inventory.set_site_policy("cli:rmm_site_policy", w.site, allow_self_authorized_jobs=False)
        return engine.create_job(w.psa, "patch_scan", asset_id=w.agent.asset_id, psa_task_id=w.task.pk)


class PatchExample:
    """One asset's part of a patch job: install, then the re-scan. Its jobs always wait for a
    second person (they install as root): without requires_approval the example approves it."""

    steps = (2,)
    always_approved = True

    def make(self, w: World, *, steps: int = 2, fail_step: int | None = None, requires_approval: bool = False):
        from patching.models import PatchJob

        Agent.objects.filter(pk=w.agent.pk).update(capabilities="structured_result", protocol=2)
        w.agent.refresh_from_db()
        request = PatchJob.objects.create(
            psa_task=w.task,
            psa_case_id=w.task.case_id,
            site=w.site,
            scheduled_for=timezone.now(),
            reboot_policy="never",
            status="released",
            requested_by=w.psa,
        )
        job = engine.create_job(w.psa, "patch", asset_id=w.agent.asset_id, psa_task_id=w.task.pk, patch_job=request)
        type(job).objects.filter(pk=job.pk).update(packages=[["contract-pkg", "2.0"]])
        job = type(job).objects.get(pk=job.pk)
        if not requires_approval:
            engine.approve_job(job, w.boss)
        return type(job).objects.get(pk=job.pk)


class ContainmentExample:
    """Two steps always (the change, the state read), to an agent that returns structured results;
    an isolate asks no approver of its own, so the PSA requesting on its own authority does."""

    steps = (2,)

    def make(self, w: World, *, steps: int = 2, fail_step: int | None = None, requires_approval: bool = False):
        Agent.objects.filter(pk=w.agent.pk).update(capabilities="structured_result", protocol=2)
        w.agent.refresh_from_db()
        if requires_approval:
            inventory.set_site_policy("cli:rmm_site_policy", w.site, allow_self_authorized_jobs=False)
        return engine.create_job(
            w.psa,
            "containment",
            asset_id=w.agent.asset_id,
            psa_task_id=w.task.pk,
            action="isolate",
            reason="contract",
            server_endpoints=[["192.0.2.10", 443]],
            dns=False,
        )


class RemoteSessionExample:
    """The built-in terminal: one step the agent serves by relaying a PTY; a session asks an
    approver when privileged or when its site's policy says so, here when the contract asks."""

    steps = (1,)

    def make(self, w: World, *, steps: int = 1, fail_step: int | None = None, requires_approval: bool = False):
        return engine.create_job(
            w.psa,
            "remote_session",
            asset_id=w.agent.asset_id,
            psa_task_id=w.task.pk,
            initiated_by=w.tech,
            provider="terminal",
            session_type="terminal",
            privileged=False,
            requires_approval=requires_approval,
        )


EXAMPLES = {
    "script": ScriptExample(),
    "step": StepExample(),
    "agent_update": UpdateExample(),
    "deployment": DeploymentExample(),
    "containment": ContainmentExample(),
    "patch_scan": PatchScanExample(),
    "patch": PatchExample(),
    "profile_audit": AuditExample(),
    "profile_enforce": EnforcementExample(),
    "remote_session": RemoteSessionExample(),
}
