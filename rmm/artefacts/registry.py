"""Artefact kinds register here: anything that must be four-eyes approved before it can run
(script versions, packages, config key definitions, session policies).

A domain app describes its kind once, in its AppConfig.ready; the one approval service
(:mod:`rmm.artefacts.services`), the admin approval queue and the approve/reject API shape
(:mod:`rmm.artefacts.api`) then serve it. The core never imports the apps that register.

An artefact model is one immutable version of a named thing. It has the fields the service reads
and writes: the field named by ``lineage`` (versions of one thing share it), the field named by
``revision`` (a number that grows along the lineage: ``version``, unless the kind's own data
has a ``version`` of another sense, as a software package's does), ``author`` (a user),
``created_at``, ``approval_status`` (:class:`rmm.artefacts.states.ApprovalStatus`, default
pending), ``decided_by`` (a nullable user), ``decided_at`` and ``decision_reason``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import models


def _never(_artefact) -> bool:
    return False


def _nothing(_artefact) -> str:
    return ""


@dataclass(frozen=True)
class ArtefactKind:
    # the queue's kind filter and form value, e.g. "script_version"; no job kind may share it
    name: str
    model: type[models.Model]
    # the artefact in messages: "This script version is already approved."
    label: str
    # prefix of its history actions: "script" -> script.approved, script.rejected, and the
    # refusals refused.script.approve, refused.script.reject
    action_prefix: str
    # artefact -> the text an approver reads, and the diff from the previous approved version
    content: Callable[[Any], str]
    # artefact -> a short title for the queue, e.g. "cleanup v2"
    describe: Callable[[Any], str]
    # the field whose value names the artefact; its versions share it
    lineage: str = "name"
    # the whole number that grows along the lineage (v1, v2, ...)
    revision: str = "version"
    # artefact -> whether approving it needs ``privileged_permission`` besides the approve role
    privileged: Callable[[Any], bool] = _never
    privileged_permission: str = ""
    # artefact -> one line of facts the queue shows above its content (language, hash, ...)
    details: Callable[[Any], str] = _nothing
    # the foreign key naming the site a version belongs to ("" for kinds every site shares, as
    # scripts): the queue shows and decides only versions of the caller's sites, and their
    # history is the site's
    site: str = ""


_KINDS: dict[str, ArtefactKind] = {}


def register(kind: ArtefactKind) -> None:
    if kind.privileged is not _never and not kind.privileged_permission:
        raise ValueError(f"Artefact kind {kind.name!r} marks privileged versions but names no permission.")
    _KINDS[kind.name] = kind


def get(name: str) -> ArtefactKind:
    return _KINDS[name]


def kind_of(artefact) -> ArtefactKind:
    for kind in _KINDS.values():
        if isinstance(artefact, kind.model):
            return kind
    raise LookupError(f"{type(artefact).__name__} is not a registered artefact kind")


def all_kinds() -> list[ArtefactKind]:
    return list(_KINDS.values())
