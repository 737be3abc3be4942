"""One API shape for deciding an artefact of any kind: ``POST …/{id}/approve/`` (no body) and
``POST …/{id}/reject/`` (``{"reason": "…"}``) on the kind's own resource, answering the decided
version in that resource's serializer; 400 without a reason, 403 for a role that may not approve,
self-approval or a privileged version without the permission, 409 when already decided."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.decorators import action
from rest_framework.response import Response

from rmm.artefacts import services
from rmm.core.api import reason_of
from rmm.core.api_schema import ReasonSerializer, refusal

DECIDED = refusal("This version is already approved or rejected.")


def decision_actions(serializer_class) -> tuple:
    """The ``approve`` and ``reject`` actions of a kind's viewset, whose ``get_object`` finds the
    version and whose serializer is ``serializer_class``."""

    @extend_schema(request=None, responses={200: serializer_class, 409: DECIDED})
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        artefact = services.decide(self.get_object(), request.user, approve=True)
        return Response(self.get_serializer(artefact).data)

    @extend_schema(request=ReasonSerializer, responses={200: serializer_class, 409: DECIDED})
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        artefact = services.decide(self.get_object(), request.user, approve=False, reason=reason_of(request))
        return Response(self.get_serializer(artefact).data)

    return approve, reject
