"""Software packages as an artefact kind: four-eyes approved through :mod:`rmm.artefacts` before
any deployment may use them. Registered by the app's AppConfig.ready."""

from __future__ import annotations

from deployment.models import SoftwarePackage
from deployment.services import content
from rmm.artefacts.registry import ArtefactKind

SOFTWARE_PACKAGE = ArtefactKind(
    name="software_package",
    model=SoftwarePackage,
    label="package",
    action_prefix="package",
    content=content,
    describe=str,  # "7zip 24.08 (v2)"
    revision="revision",
    # An installer runs as root or SYSTEM on every endpoint it reaches: approving one needs what
    # approving a privileged script needs.
    privileged=lambda package: True,
    privileged_permission="scripting.approve_privileged",
    details=lambda package: f"{package.installer_type}, {package.size} bytes, sha256 {package.hash}",
)
