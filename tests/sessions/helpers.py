"""Helpers of the remote-session tests."""

from __future__ import annotations

from django.utils import timezone

from rmm.artefacts import services as artefacts
from rmm.inventory.models import Agent
from sessions import services

URL = "/api/v1/remote-sessions/"


def online(agent, capabilities="remote_session,structured_result"):
    Agent.objects.filter(pk=agent.pk).update(capabilities=capabilities, protocol=2, last_seen_at=timezone.now())


def open_(world, who="tech", **extra):
    body = {"asset": str(world["asset"]), "session_type": "terminal", "provider": "terminal"}
    body["psa_task_id"] = str(world["task"].pk)
    body.update(extra)
    return world[who].post(URL, body, format="json")


def set_policy(world, **rules):
    """The site's policy in force now, through the services: proposed by its admin, approved by its
    approver (four eyes)."""
    version = services.propose_policy(world["admin"].user, site=world["site"].name, **rules)
    return artefacts.decide(version, world["approver"].user, approve=True)
