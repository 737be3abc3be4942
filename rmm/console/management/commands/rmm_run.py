"""``make run``: migrate, a demo admin, a local agent, then the ASGI server, the task cluster
and that agent, until Ctrl-C stops all three."""

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from rmm.access import services as access_services
from rmm.inventory import services as inventory


class Command(BaseCommand):
    help = "Run the product on this machine: server, task cluster and a local agent."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--site", default="local", help="the site of this machine's own agent")

    def handle(self, *args, host, port, site, **options):
        call_command("migrate", interactive=False, verbosity=0)
        username, password = self._demo_admin()
        url = f"http://{host}:{port}"
        env = dict(os.environ, DJANGO_SETTINGS_MODULE="rmm.settings", PYTHONUNBUFFERED="1")
        procs = []

        def start(cmd):
            # Each component leads its own process group, so stopping it stops its workers too.
            procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))

        def stop(*_):
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(0.1, deadline - time.monotonic()))
                # whatever the leader leaves behind (a task-cluster worker outlives it) goes too
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

        signal.signal(signal.SIGTERM, lambda *_: (stop(), sys.exit(0)))
        try:
            access_log = Path(settings.VAR_DIR) / "access.log"
            start(
                [
                    sys.executable,
                    "-m",
                    "daphne",
                    "-b",
                    host,
                    "-p",
                    str(port),
                    "--access-log",
                    str(access_log),
                    "rmm.asgi:application",
                ]
            )
            start([sys.executable, "manage.py", "qcluster"])
            self._wait_for(url)
            state_dir = Path(settings.VAR_DIR) / "agent"
            if os.geteuid() == 0:  # a root agent runs unprivileged scripts as its own locked account
                subprocess.run([sys.executable, "-m", "rmm_agent", "install-account"], env=env, check=True)
            if not (state_dir / "config.json").exists():
                token = inventory.create_enrollment_token(
                    inventory.get_or_create_site(site, actor="cli:rmm_run"), actor="cli:rmm_run", max_uses=1
                )[1]
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "rmm_agent",
                        "enroll",
                        "--server",
                        url,
                        "--token",
                        token,
                        "--state-dir",
                        str(state_dir),
                    ],
                    env=env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
            start([sys.executable, "-m", "rmm_agent", "run", "--state-dir", str(state_dir)])
            self.stdout.write(
                self.style.SUCCESS(
                    f"\nRMM is running.\n  Console: {url}/console/   Admin: {url}/admin/   API docs: {url}/api/docs/\n"
                    f"  Demo admin login: {username} / {password}\n"
                    "  It is a superuser: its first sign-in sets up a second factor (TOTP) with an authenticator\n"
                    "  app (scan the QR code shown); later sign-ins ask for its code.\n"
                    f"  Lost the device: manage.py rmm_otp_reset {username}\n"
                    "  New here? The dashboard's first-run guide (and the README's \"First job in five\n"
                    '  minutes") leads to a finished job in the browser.\n'
                    f"  Local agent state: {state_dir} (site {site!r}); access log: {access_log}\n"
                    "  Ctrl-C stops the server, the task cluster and the agent.\n"
                )
            )
            while all(proc.poll() is None for proc in procs):
                time.sleep(0.5)
            self.stderr.write("A component stopped; shutting down the rest.")
        except KeyboardInterrupt:
            pass
        finally:
            stop()

    def _demo_admin(self) -> tuple[str, str]:
        """A superuser for the console and admin; its password lives in var/, shown here only. It
        also holds the psa role: with no PSA yet, the first run records its case and task on the
        local authority page, which only that role may (README, "First job in five minutes")."""
        path = Path(settings.VAR_DIR) / "demo_admin.json"
        User = get_user_model()
        if path.exists():
            data = json.loads(path.read_text())
            if User.objects.filter(username=data["username"]).exists():
                return data["username"], data["password"]
        username, password = "admin", secrets.token_urlsafe(12)
        user = access_services.ensure_user_with_role(username, "admin", actor="cli:rmm_run")
        access_services.ensure_user_with_role(username, "psa", actor="cli:rmm_run")
        user.is_superuser = True
        user.set_password(password)
        user.save()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"username": username, "password": password}, fh)
        return username, password

    def _wait_for(self, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url + "/accounts/login/", timeout=2).read()  # noqa: S310 - our own http URL
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"The server did not answer at {url}")
