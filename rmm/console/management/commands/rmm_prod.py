"""``make prod-up`` / ``make prod-down``: the production layout (deploy/) on this machine, in the
background, until ``down`` stops it (rmm/deploy/layout.py; docs/operations.md, "Try the layout on
one machine")."""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from rmm.deploy import layout


class Command(BaseCommand):
    help = "Bring the production layout (nginx, agent tier, daphne, task cluster) up or down on this machine."
    requires_system_checks = []  # it runs the server's processes; it uses no database itself

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["up", "down"])
        parser.add_argument(
            "--state-dir",
            type=Path,
            default=None,
            help="where the layout keeps its files, pids and ports (default: var/prod under RMM_VAR_DIR)",
        )
        parser.add_argument("--port", type=int, default=8443, help="nginx's https port on 127.0.0.1 (0: a free one)")

    def handle(self, *args, action, state_dir, port, **options):
        state_dir = (state_dir or Path(settings.VAR_DIR) / "prod").resolve()
        try:
            if action == "up":
                self._up(state_dir, port)
            else:
                killed = layout.down(state_dir, self.stdout.write)
                if killed:
                    self.stdout.write(f"Killed after their stop timeout: {', '.join(killed)}")
                self.stdout.write(self.style.SUCCESS(f"The layout in {state_dir} is down."))
        except layout.LayoutError as error:
            raise CommandError(str(error)) from None

    def _up(self, state_dir: Path, port: int) -> None:
        state = layout.up(state_dir, port, self.stdout.write)
        url, ca = state["url"], state["ca_file"]
        processes = ", ".join(
            f"{p['name']}" + (f" on port {p['port']}" if p.get("port") else "") for p in state["processes"]
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"\nThe production layout is up (deploy/ on this machine; state in {state_dir}).\n"
                f"  Console: {url}/console/   API: {url}/api/v1/   Health: {url}/readyz\n"
                f"  The CA to pin: {ca}\n"
                f"    agents: python -m rmm_agent enroll --server {url} --ca-file {ca} --token …\n"
                f"    curl --cacert {ca} {url}/readyz; browsers: import it, or accept the warning\n"
                f"  manage.py with its settings (e.g. createsuperuser, rmm_enrollment_token):\n"
                f"    set -a; . {state['env_file']}; set +a; .venv/bin/python manage.py …\n"
                f"  Processes: {processes}\n"
                f"  Logs: {state_dir / 'logs'}, {state_dir / 'nginx'}\n"
                "  make prod-down stops them all.\n"
            )
        )
