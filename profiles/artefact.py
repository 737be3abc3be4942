"""Config key definitions as an artefact kind: four-eyes approved through :mod:`rmm.artefacts`
before any profile may use them. Registered by the app's AppConfig.ready."""

from __future__ import annotations

from profiles.models import ConfigKey
from profiles.services import key_content
from rmm.artefacts.registry import ArtefactKind

CONFIG_KEY = ArtefactKind(
    name="config_key",
    model=ConfigKey,
    label="config key",
    action_prefix="config_key",
    content=key_content,
    describe=str,  # "linux.file_line v1"
    details=lambda key: (
        f"Platform {key.platform}, {key.value_type}, sha256 {key.content_sha256}; read {key.read_script}"
        + (f", set {key.set_script}" if key.set_script_id else ", no set script (audit only)")
        + ". Its scripts are approved on their own."
    ),
)
