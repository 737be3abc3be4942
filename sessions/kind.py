"""The "remote_session" job kind: a remote session is a job whose steps are its provider's (the
built-in terminal: one ``remote_session`` step the agent serves by relaying a PTY for as long as
the session lasts; MeshCentral: none, the job runs from the provider's start to the session's
end). So authority, sites, kill switches, approval, signing and history are the engine's, as for
every kind; the session's own rules are in sessions.services."""

from __future__ import annotations

from rmm.engine import registry
from sessions import providers
from sessions.models import RemoteSession

SESSION_STEP = "remote_session"  # the evidence type of the agent's report on serving the session
SESSION_RECORDING = "session_recording"  # the evidence type of a session's sealed recording


def prepare(
    *,
    initiated_by,
    provider: str,
    session_type: str,
    privileged: bool,
    requires_approval: bool,
) -> registry.NewJob:
    return registry.NewJob(
        fields={
            "initiated_by": initiated_by,
            "provider": provider,
            "session_type": session_type,
            "privileged": privileged,
        },
        requires_approval=requires_approval,
        names={"provider": provider, "session_type": session_type},
        created={"privileged": privileged},
    )


def admit(user, assets: list, new: registry.NewJob) -> None:
    """Once the engine's laws passed: the provider's own checks on the asset, which may ask a
    remote-access server (so a request without authority never reaches it), and the
    ``provider_*`` fields it keeps on the session."""
    from sessions import services

    new.fields.update(services.admit_provider(user, assets[0], new.fields["provider"]))


def render(session: RemoteSession) -> list[registry.InstructionSpec]:
    return providers.get(session.provider).steps(session)


def evidence_document(session: RemoteSession, inst, stored, result: dict, late: bool) -> dict:
    """What the agent reported of serving the session (the recording is its own record)."""
    task = session.psa_task
    return {
        "evidence_type": SESSION_STEP,
        "job": registry.job_document(session, "remote_session"),
        "session": str(session.pk),
        "provider": session.provider,
        "privileged": session.privileged,
        "instruction": registry.signed_instruction(inst),
        "authority": {"psa_task_id": task.pk, "psa_case_id": task.case_id},
        "asset": {"id": session.asset_id, "hostname": session.asset.hostname, "site": session.site.name},
        "result": registry.step_result(inst, result, late),
    }


def describe(session: RemoteSession) -> str:
    return f"{session.session_type} session ({session.provider}){' as root' if session.privileged else ''}"


def card(session: RemoteSession) -> list[tuple[str, str]]:
    return [
        ("Session", f"{session.session_type} through {session.provider}"),
        ("Runs as", "root (privileged)" if session.privileged else "the unprivileged account"),
        ("Initiated by", session.initiated_by.get_username()),
    ]


registry.register(
    registry.JobKind(
        name="remote_session",
        model=RemoteSession,
        prepare=prepare,
        admit=admit,
        render=render,
        evidence_type=SESSION_STEP,
        evidence_entity="remote_session",
        evidence_document=evidence_document,
        describe=describe,
        card=card,
        select_related=("asset", "site", "psa_task", "initiated_by"),
        api_detail="remote-session-detail",
        steps_optional=True,  # a provider that reaches the endpoint by its own means sends the agent nothing
    )
)
