"""Console pages of remote sessions: the list, and each session's page (its join URL), where the
technician works in the terminal while it is live and plays the recording back once it ended."""

import hashlib

from csp.decorators import csp_update
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from evidence import services as evidence
from rmm.access import roles as access
from rmm.core.errors import ServiceError
from rmm.engine.states import JobStatus
from rmm.history import services as history
from sessions import kind, providers, services
from sessions.models import RemoteSession

SHOWN = 100


def _visible(user):
    return (
        RemoteSession.objects.filter(site__in=access.visible_sites(user))
        .select_related("site", "asset", "initiated_by", "ended_by", "psa_task")
        .order_by("-created_at")
    )


@login_required
def session_list(request):
    return render(request, "sessions/list.html", {"sessions": _visible(request.user)[:SHOWN], "nav": "sessions"})


@login_required
# xterm.js and asciinema-player size and place the terminal with style attributes they set; the
# player decodes the recording with WebAssembly. Scripts stay this site's own.
@csp_update({"style-src": ["'unsafe-inline'"], "script-src": ["'wasm-unsafe-eval'"]})
def session_page(request, session_id):
    session = get_object_or_404(_visible(request.user), pk=session_id)
    relay = mode = None
    carrier = providers.get(session.provider) if session.provider in providers.names() else None
    relayed = carrier is not None and bool(carrier.capability)  # the built-in relay carries it
    if relayed and session.ended_at is None and session.status in (JobStatus.QUEUED, JobStatus.RUNNING):
        try:
            token, mode = services.mint_join_token(request.user, session)
        except ServiceError:
            pass  # others see the page, not the terminal
        else:
            relay = f"/ws/sessions/{session.pk}/?token={token}"
    return render(
        request,
        "sessions/session.html",
        {
            "session": session,
            "duration": services.duration_seconds(session),
            "relay": relay,
            "mode": mode,
            "extension": carrier.recording_format[0] if carrier else "cast",  # asciinema-player plays "cast"
            "nav": "sessions",
        },
    )


@login_required
def session_recording(request, session_id):
    """The sealed recording (asciicast v2, or its provider's own format), of the evidence the caller
    may read, streamed from the evidence store once its bytes are checked against the record's
    sha256: an altered recording is refused (409, recorded), never played as if it were the evidence."""
    session = get_object_or_404(_visible(request.user), pk=session_id, recorded=True)
    record = (
        evidence.visible_evidence(request.user)
        .filter(related_entity="remote_session", related_id=session.pk, evidence_type=kind.SESSION_RECORDING)
        .first()
    )
    if record is None:
        raise Http404("No recording.")
    digest = hashlib.sha256()
    for chunk in evidence.iter_blob(record):
        digest.update(chunk)
    if digest.hexdigest() != record.hash:
        reason = "the stored recording does not match its sha256"
        history.record_refusal(
            request.user, "remote_session.recording", session, reason=reason, site_id=session.site_id
        )
        return HttpResponse(f"Refused: {reason}.", status=409, content_type="text/plain")
    cast = record.storage_uri.endswith(".cast")  # else the provider's own format (MeshCentral's .mcrec)
    return StreamingHttpResponse(
        evidence.iter_blob(record), content_type="application/x-asciicast" if cast else "application/octet-stream"
    )


@login_required
@require_POST
def session_end(request, session_id):
    session = get_object_or_404(_visible(request.user), pk=session_id)
    try:
        services.end_session(request.user, session)
    except ServiceError as exc:
        messages.error(request, exc.detail)
    return redirect("remote-session", session_id=session.pk)
