"""Script versions as an artefact kind: four-eyes approved before any job may run them
(:mod:`rmm.artefacts`). Registered by the app's AppConfig.ready."""

from __future__ import annotations

from rmm.artefacts.registry import ArtefactKind
from scripting.models import Script

SCRIPT_VERSION = ArtefactKind(
    name="script_version",
    model=Script,
    label="script version",
    action_prefix="script",
    content=lambda script: script.content,
    describe=str,  # "cleanup v2"
    privileged=lambda script: script.privileged,
    privileged_permission="scripting.approve_privileged",
    details=lambda script: (
        f"Language {script.language}, sha256 {script.sha256}"
        + ("; each job of it needs approval too." if script.requires_approval else ".")
    ),
)
