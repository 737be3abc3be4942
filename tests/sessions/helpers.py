"""Helpers of the remote-session tests."""

from __future__ import annotations

from django.utils import timezone

from rmm.inventory.models import Agent

URL = "/api/v1/remote-sessions/"


def online(agent, capabilities="remote_session,structured_result"):
    Agent.objects.filter(pk=agent.pk).update(capabilities=capabilities, protocol=2, last_seen_at=timezone.now())


def open_(world, who="tech", **extra):
    body = {"asset": str(world["asset"]), "session_type": "terminal", "provider": "terminal"}
    body["psa_task_id"] = str(world["task"].pk)
    body.update(extra)
    return world[who].post(URL, body, format="json")
