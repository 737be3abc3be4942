"""The server's processes as deploy/systemd's units start them: their command lines, environment
and stop timeouts, read from the unit files so that ``make prod-up`` (where systemd is not the
init system) cannot drift from what production runs."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
INSTALLED = "/opt/rmm"  # where the units expect the checkout (docs/operations.md)


@dataclass(frozen=True)
class Service:
    """One process of a unit: what to run, where, with which settings, and how to stop it."""

    name: str
    argv: list[str]
    cwd: Path
    environment: dict[str, str]
    stop_timeout: float
    mixed: bool  # KillMode=mixed: SIGTERM to the main process alone


def service_section(path: Path) -> list[tuple[str, str]]:
    """The ``[Service]`` section's settings in order, continuation lines joined, comments dropped."""
    settings, section, pending = [], None, ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            settings.append((key.strip(), value.strip()))
    return settings


def service(unit: str, instance: str | None = None, *, root: Path = ROOT, bin_dir: Path | None = None) -> Service:
    """The unit ``unit`` (``rmm-daphne@.service`` with ``instance`` "8001" for a template) as it would
    run from the checkout ``root`` with the virtualenv's ``bin_dir`` (this interpreter's by default)
    in place of /opt/rmm: the environment is the unit's own ``Environment=``; the caller adds the
    ``EnvironmentFile=``."""
    bin_dir = bin_dir or Path(sys.executable).parent
    settings = service_section(UNITS / unit)
    name = unit.replace("@.", f"@{instance}.") if instance else unit

    def expand(value: str) -> str:
        value = value.replace(f"{INSTALLED}/.venv/bin/", f"{bin_dir}/").replace(INSTALLED, str(root))
        return value.replace("%i", instance or "")

    values = dict(settings)
    environment = {}
    for key, value in settings:
        if key == "Environment":
            for assignment in shlex.split(value):
                name_, _, setting = assignment.partition("=")
                environment[name_] = expand(setting)
    return Service(
        name=name.removesuffix(".service"),
        argv=[expand(arg) for arg in shlex.split(values["ExecStart"])],
        cwd=Path(expand(values["WorkingDirectory"])),
        environment=environment,
        stop_timeout=float(values.get("TimeoutStopSec", "90").removesuffix("s")),
        mixed=values.get("KillMode") == "mixed",
    )
