"""What people and systems do to a running server, shared by the end-to-end tests.

Every step goes through a public door: ``manage.py`` commands, the REST API, the real agent,
and the login form and websocket a browser uses.
"""

from __future__ import annotations

import base64
import http.cookiejar
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from django_otp.oath import totp

from tests.e2e.server import ROOT

_STAFF: dict[str, dict[str, str]] = {}
SCREENSHOTS = ROOT / "docs" / "screenshots"  # the README's, written by the browser tests


def wait_for(condition, timeout: float = 10.0, what: str = "condition", every: float = 0.2):
    """Poll ``condition`` every ``every`` seconds until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(every)


def staff(server) -> dict[str, str]:
    """API tokens of a PSA, a technician and an approver granted every site (made once per server)."""
    if server.url not in _STAFF:
        tag = uuid.uuid4().hex[:6]
        roles = {"psa": "psa", "tech": "technician", "approver": "approver"}
        _STAFF[server.url] = dict(
            zip(roles, tokens(server, {f"{key}-{tag}": role for key, role in roles.items()}), strict=True)
        )
    return _STAFF[server.url]


def tokens(server, users: dict[str, str]) -> list[str]:
    """``rmm_token USER --role ROLE --all-sites`` for each of ``{username: role}``, in one process; the
    tokens in order."""
    lines = ["from django.core.management import call_command"]
    lines += [
        f"call_command('rmm_token', {username!r}, role={role!r}, all_sites=True)" for username, role in users.items()
    ]
    out = server.manage("shell", "--verbosity", "0", "-c", "\n".join(lines)).stdout.split()
    assert len(out) == len(users), out
    return out


def make_world(server, site: str | None = None) -> dict:
    """One site with one enrolled real agent, approved PSA authority, and the staff's tokens."""
    site = site or f"site-{uuid.uuid4().hex[:6]}"
    hostname = f"e2e-{uuid.uuid4().hex[:6]}"
    people = staff(server)
    state, config = server.enroll(site, hostname)
    # The PSA requests jobs on the authority it writes below: this site's policy allows that
    # (by default such jobs wait for an approver, docs/psa-integration.md).
    server.manage("rmm_site_policy", site, "--allow-self-authorized-jobs")
    case_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
    r = server.request(
        "PUT", f"/api/v1/psa/cases/{case_id}/", {"title": "CVE fix", "status": "approved", "site": site}, people["psa"]
    )
    assert r.status == 201, r.body
    r = server.request(
        "PUT",
        f"/api/v1/psa/tasks/{task_id}/",
        {"case": case_id, "title": "Run the fix", "status": "approved"},
        people["psa"],
    )
    assert r.status == 201, r.body
    assets = server.request("GET", f"/api/v1/assets/?hostname={hostname}", token=people["tech"]).json()["results"]
    assert len(assets) == 1
    return {
        "site": site,
        **people,
        "state": state,
        "config": config,
        "asset": assets[0]["id"],
        "task": task_id,
        "case": case_id,
        "hostname": hostname,
    }


def publish(server, w, content, **extra):
    """A technician writes a script; an approver approves it."""
    r = server.request(
        "POST",
        "/api/v1/scripts/",
        {
            "name": f"s-{uuid.uuid4().hex[:6]}",
            "language": "sh",
            "content": content,
            "requires_approval": False,
            **extra,
        },
        w["tech"],
    )
    assert r.status == 201, r.body
    script = r.json()
    r = server.request("POST", f"/api/v1/scripts/{script['id']}/approve/", token=w["approver"])
    assert r.status == 200, r.body
    return script


def run_job(server, w, script_id):
    """The PSA asks for the script to run on the world's asset under its task."""
    r = server.request(
        "POST", "/api/v1/script-jobs/", {"script": script_id, "asset": w["asset"], "psa_task_id": w["task"]}, w["psa"]
    )
    assert r.status == 201, r.body
    return r.json()


def assign_profile(server, w, profile_id: str) -> str:
    """An active assignment of a profile to the world's asset under its task, requested by a PSA
    account: its id. (The assignment API is another part of issue 15: the row is written here as it
    would write it.)"""
    code = (
        "from django.contrib.auth import get_user_model; from profiles.models import AssetConfigurationProfile; "
        "a = AssetConfigurationProfile.objects.create("
        f"profile_id={profile_id!r}, asset_id={w['asset']!r}, psa_task_id={w['task']!r}, status='active', "
        "requested_by=get_user_model().objects.filter(groups__name='psa').first()); print(a.pk)"
    )
    return server.manage("shell", "--verbosity", "0", "-c", code).stdout.strip()


def finished_export(server, export_id: str, token: str, seconds: float = 90) -> dict:
    """An export's status once the task cluster is done with it (or the time is up)."""
    deadline = time.monotonic() + seconds
    while True:
        status = server.request("GET", f"/api/v1/evidence/exports/{export_id}/", token=token).json()
        if status["status"] in {"done", "failed"} or time.monotonic() > deadline:
            return status
        time.sleep(0.3)


def upload_package(server, token: str, name: str, data: bytes, **fields) -> dict:
    """A software package registered by a multipart upload, as a technician's tool sends it
    (docs/deployment.md): a deb of version 1.0-1 unless ``fields`` say otherwise."""
    given = {"name": name, "version": "1.0-1", "installer_type": "deb", **fields}
    if "detection" in given:
        given["detection"] = json.dumps(given["detection"])
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in given.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}.{given["installer_type"]}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    request = urllib.request.Request(
        f"{server.url}/api/v1/packages/", data=b"".join(parts) + f"--{boundary}--\r\n".encode(), method="POST"
    )
    request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=60, context=server.ssl_context) as answer:
        assert answer.status == 201
        return json.loads(answer.read())


def privileged_approver(server) -> str:
    """The token of an approver who also holds the privileged-approval permission (what approving
    a privileged script or any package needs)."""
    name = f"root-approver-{uuid.uuid4().hex[:6]}"
    [token] = tokens(server, {name: "approver"})
    server.manage(
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model\n"
        "from django.contrib.auth.models import Permission\n"
        f"user = get_user_model().objects.get(username={name!r})\n"
        'user.user_permissions.add(Permission.objects.get(codename="approve_privileged"))',
    )
    return token


def agent_once(server, w):
    done = server.agent(["run", "--state-dir", str(w["state"]), "--once"])
    assert done.returncode == 0, done.stderr
    return done


def console_users(server, users: dict[str, tuple[str, list[str]]], password: str) -> None:
    """Create console users ``{username: (role, [site, ...])}`` with ``password``, in one process.

    Users are made by ``rmm_token`` (no sites listed: ``--all-sites``), then given a password.
    """
    lines = [
        "import io",
        "from django.core.management import call_command",
        "from django.contrib.auth import get_user_model",
    ]
    for username, (role, sites) in users.items():
        lines += [
            f"call_command('rmm_token', {username!r}, role={role!r}, site={list(sites)!r}, "
            f"all_sites={not sites!r}, stdout=io.StringIO())",
            f"u = get_user_model().objects.get(username={username!r}); u.set_password({password!r}); u.save()",
        ]
    server.manage("shell", "--verbosity", "0", "-c", "\n".join(lines))


def console_errors(page) -> list[str]:
    """The errors the page's console and scripts report from now on (a list that fills itself)."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def code_for(secret: str) -> str:
    """What the authenticator app shows for the base32 secret on the set-up page."""
    return f"{totp(base64.b32decode(secret)):06d}"


def sign_in_to(page, username: str, password: str, path: str, *, second_factor: bool = False) -> None:
    """A browser page signs in through the login form and lands on ``path``; with
    ``second_factor``, an admin or approver first sets up its second factor (the code its
    authenticator app would show for the secret on the page)."""
    page.goto(f"/accounts/login/?next={path}")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    if second_factor:
        page.wait_for_url("**/accounts/otp/setup/**")
        page.fill("#id_code", code_for(page.locator("#otp-secret").inner_text().strip()))
        page.click("main form button[type=submit] >> text=Confirm")
    page.wait_for_url(f"**{path}")


def choose_asset(page, hostname: str) -> str:
    """Choose the asset ``hostname`` in the console's run form's asset picker (a Playwright page);
    its id. The one place a browser test picks an asset there."""
    with page.expect_response(lambda response: "/console/assets/pick/" in response.url):
        page.fill("#id_asset_q", hostname)
    option = page.locator("#id_asset_matches .picker-option").filter(has=page.get_by_text(hostname, exact=True))
    radio = option.locator("input[name=asset]")
    radio.check()
    return radio.get_attribute("value")


class Session:
    """A browser-like HTTP client: keeps cookies, logs in through the login form."""

    def __init__(self, server):
        self.server = server
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)

    @property
    def cookie_header(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.jar)

    def open(self, path: str, form: dict | None = None) -> tuple[int, str, str]:
        """(status, final url, body) of a GET, or a form POST when ``form`` is given."""
        data = None if form is None else urllib.parse.urlencode(form).encode()
        try:
            with self.opener.open(self.server.url + path, data=data, timeout=30) as resp:
                return resp.status, resp.url, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.url, err.read().decode()

    def login(self, username: str, password: str) -> Session:
        status, _url, _body = self.open("/accounts/login/")
        assert status == 200
        status, url, body = self.open(
            "/accounts/login/",
            {"username": username, "password": password, "csrfmiddlewaretoken": self.cookie("csrftoken")},
        )
        assert status == 200 and url.endswith("/console/"), (status, url, body[:500])
        assert self.cookie("sessionid")
        return self
