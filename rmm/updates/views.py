"""The release download for agents, and the API that creates update jobs through the engine."""

from __future__ import annotations

from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from rmm.core.api_schema import RETIRED_TARGET
from rmm.engine import services as engine
from rmm.inventory import services as inventory
from rmm.updates import releases


@require_GET
def release_download(request: HttpRequest, sha256: str) -> HttpResponse:
    """A published artefact, streamed from disk, to an enrolled agent only."""
    if inventory.authenticate_agent(request.headers.get("Authorization", "")) is None:
        response = JsonResponse({"detail": "Agent credential missing, wrong or revoked."}, status=401)
        response["WWW-Authenticate"] = "Agent"
        return response
    path = releases.artefact_path(sha256)
    if path is None:
        return JsonResponse({"detail": "No such release."}, status=404)
    return FileResponse(path.open("rb"), content_type="application/gzip")


class UpdateSerializer(serializers.Serializer):
    version = serializers.CharField(max_length=50)
    psa_task_id = serializers.UUIDField()
    asset_id = serializers.UUIDField(required=False)
    assets = serializers.ListField(child=serializers.UUIDField(), required=False, max_length=50_000)
    site = serializers.CharField(required=False)
    plan = serializers.DictField(required=False)
    requires_approval = serializers.BooleanField(default=False)


class AgentUpdateJobsView(GenericAPIView):
    """POST one asset (``asset_id``) or a batch (``assets`` or ``site``, with an optional ring
    ``plan``): one ``agent_update`` job per asset, under the PSA task's authority."""

    serializer_class = UpdateSerializer

    @extend_schema(
        responses={
            201: inline_serializer(
                "AgentUpdateJobsAnswer",
                {
                    "count": serializers.IntegerField(),
                    "batch": serializers.UUIDField(allow_null=True),
                    "status": serializers.CharField(),
                    "jobs": serializers.ListField(child=serializers.DictField()),
                },
            ),
            409: RETIRED_TARGET,
        }
    )
    def post(self, request):
        ser = UpdateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        data = ser.validated_data
        if "asset_id" in data:
            jobs = [
                engine.create_job(
                    request.user,
                    "agent_update",
                    asset_id=data["asset_id"],
                    psa_task_id=data["psa_task_id"],
                    version=data["version"],
                    requires_approval=data["requires_approval"],
                )
            ]
        else:
            jobs = engine.create_jobs(
                request.user,
                "agent_update",
                psa_task_id=data["psa_task_id"],
                asset_ids=data.get("assets"),
                site_name=data.get("site"),
                plan=data.get("plan"),
                version=data["version"],
                requires_approval=data["requires_approval"],
            )
        return Response(
            {
                "count": len(jobs),
                "batch": str(jobs[0].batch_id) if jobs[0].batch_id else None,
                "status": jobs[0].status,
                "jobs": [{"id": str(job.pk), "asset": str(job.asset_id)} for job in jobs],
            },
            status=status.HTTP_201_CREATED,
        )
