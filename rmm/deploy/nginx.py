"""Debian's nginx running the shipped site (deploy/nginx/rmm.conf) in a prefix of its own, for
``make prod-up`` and the tests.

The site is used as shipped, with only its host-specific values (ports, certificate, blob store)
replaced; each replaced value must be found, so a change to the site that this no longer covers
fails here instead of passing unseen. The main configuration is Debian's own nginx.conf with its
paths moved into the prefix.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "deploy" / "nginx" / "rmm.conf"
DEBIAN_MAIN = Path("/etc/nginx/nginx.conf")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SITES = "include /etc/nginx/sites-enabled/*;"
TEMPS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")  # each <kind>_temp_path, in the prefix


def site(
    *, https_port: int, http_port: int, agent_ports: list[int], console_port: int, cert: Path, key: Path, blobs: Path
) -> str:
    """The shipped site with this host's values in place of the production ones."""
    text = SITE.read_text()
    agents = "\n    ".join(f"server 127.0.0.1:{port};" for port in agent_ports)
    for shipped, local in {
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        "listen [::]:443 ssl http2;\n": "",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen [::]:80;\n": "",
        "server 127.0.0.1:8101;\n    server 127.0.0.1:8102;": agents,
        "server 127.0.0.1:8001;": f"server 127.0.0.1:{console_port};",
        "/etc/ssl/rmm/fullchain.pem": str(cert),
        "/etc/ssl/rmm/privkey.pem": str(key),
        "/var/lib/rmm/evidence/": f"{blobs}/",
    }.items():
        assert shipped in text, f"{SITE} no longer holds {shipped!r}: update rmm/deploy/nginx.py"
        text = text.replace(shipped, local)
    return text


class Nginx:
    """One nginx master in ``prefix`` serving ``site_text``; ``connections`` per worker in place of
    Debian's 768 (each held heartbeat takes two: the agent's and the one to its worker)."""

    def __init__(self, prefix: Path, site_text: str, connections: int | None = None) -> None:
        self.prefix = prefix
        self.connections = connections
        for temp in TEMPS:
            (prefix / "temp" / temp).mkdir(parents=True, exist_ok=True)
        (prefix / "rmm.conf").write_text(site_text)
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(self._main())
        self.proc: subprocess.Popen | None = None

    def _main(self) -> str:
        """Debian's nginx.conf, its pid, logs, temporary files and sites moved into the prefix."""
        text = DEBIAN_MAIN.read_text()
        # Root: workers as this account (the state dir's files are private to it); otherwise no user.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
        text = re.sub(r"^user\s+[^;]*;", user, text, flags=re.M)
        text = re.sub(r"^pid\s+[^;]*;", f"pid {self.prefix}/nginx.pid;", text, flags=re.M)
        text = re.sub(r"access_log\s+[^;]*;", f"access_log {self.prefix}/access.log;", text)
        text = re.sub(r"error_log\s+[^;]*;", f"error_log {self.prefix}/error.log;", text)
        temps = "".join(
            f"\n\t{kind}_temp_path {self.prefix}/temp/{kind};" for kind in ("proxy", "fastcgi", "uwsgi", "scgi")
        )
        text = re.sub(
            r"^http\s*\{", f"http {{\n\tclient_body_temp_path {self.prefix}/temp/body;{temps}", text, flags=re.M
        )
        if self.connections:
            text, found = re.subn(r"worker_connections\s+\d+;", f"worker_connections {self.connections};", text)
            assert found == 1, "Debian's nginx.conf changed: update rmm/deploy/nginx.py"
            # Room for every connection and the files each worker opens besides.
            text = f"worker_rlimit_nofile {self.connections + 1024};\n{text}"
        assert "include /etc/nginx/sites-enabled/*;" in text, "Debian's nginx.conf changed: update rmm/deploy/nginx.py"
        return text.replace("include /etc/nginx/sites-enabled/*;", f"include {self.prefix}/rmm.conf;")

    def command(self, *args: str) -> list[str]:
        return [NGINX, "-p", str(self.prefix), "-e", str(self.prefix / "error.log"), "-c", str(self.conf), *args]

    def check(self) -> subprocess.CompletedProcess:
        """``nginx -t`` of the configuration."""
        return subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30, check=False)

    def start(self) -> Nginx:
        """The master in the foreground of a session of its own (its workers in it too), its output
        in the prefix's ``nginx.out``; back once it has written its pid file."""
        with open(self.prefix / "nginx.out", "ab") as out:
            self.proc = subprocess.Popen(
                self.command("-g", "daemon off;"),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 15
        while not (self.prefix / "nginx.pid").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not start: {(self.prefix / 'nginx.out').read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
