"""Sign-in: a second factor for admins, approvers and superusers; lockout after failed passwords;
the content security policy; production settings that pass ``check --deploy``."""

import os
import secrets
from datetime import timedelta
from urllib.parse import quote

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from rmm.engine import services as engine
from rmm.history.models import HistoryEvent
from rmm.history.services import verify_chain
from tests.helpers import check_deploy, otp_login

PASSWORD = "correct horse battery staple"
SETUP, VERIFY, LOGIN = "/accounts/otp/setup/", "/accounts/otp/verify/", "/accounts/login/"


def code_of(device: TOTPDevice) -> str:
    """The device's current code, computed the way the authenticator app does (django-otp's own TOTP)."""
    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits, drift=device.drift):06d}"


def signed_in(user) -> Client:
    """A password sign-in only (no second factor yet)."""
    client = Client()
    client.force_login(user)
    return client


def events(action: str, **filters):
    return HistoryEvent.objects.filter(action=action, **filters)


@pytest.fixture
def approver(caller):
    return caller("boss", "approver").user


@pytest.fixture
def technician(caller):
    return caller("tech", "technician").user


# --- the second factor ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/console/", "/admin/", "/admin/scripting/script/", "/api/docs/"])
def test_an_approver_without_a_device_is_sent_to_set_one_up(approver, path):
    r = signed_in(approver).get(path)
    assert r.status_code == 302
    assert r["Location"] == f"{SETUP}?next={quote(path, safe='')}"


def test_admins_and_superusers_need_it_too(caller):
    admin = caller("root-role", "admin").user
    superuser = get_user_model().objects.create_superuser("super", password=PASSWORD)
    for user in (admin, superuser):
        assert signed_in(user).get("/console/")["Location"].startswith(SETUP)


def test_a_technician_is_not_asked(technician):
    client = signed_in(technician)
    assert client.get("/console/").status_code == 200
    assert client.get(SETUP).status_code == 302  # nothing to set up: back to where it was going
    assert not TOTPDevice.objects.filter(user=technician).exists()


def test_setup_shows_the_secret_as_uri_text_and_qr_code_then_a_correct_code_lets_them_in(approver):
    client = signed_in(approver)
    page = client.get(f"{SETUP}?next=/admin/")
    assert page.status_code == 200
    device = TOTPDevice.objects.get(user=approver)
    assert not device.confirmed
    body = page.content.decode()
    assert device.config_url.replace("&", "&amp;") in body
    assert device.config_url.startswith("otpauth://totp/RMM%3Aboss?secret=")
    secret = page.context["secret"]
    assert secret in body and secret in device.config_url
    assert '<svg width="' in body and 'class="segno"' in body
    assert "<script" not in body and "style=" not in body
    assert client.get(SETUP).context["secret"] == secret  # a reload shows the same device
    assert events("signin.otp_device_created", actor="user:boss").count() == 1

    done = client.post(SETUP, {"code": code_of(device), "next": "/admin/"})
    assert done.status_code == 302 and done["Location"] == "/admin/"
    device.refresh_from_db()
    assert device.confirmed
    assert client.get("/console/").status_code == 200
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/scripting/script/").status_code == 200
    confirmed = events("signin.otp_confirmed", actor="user:boss").get()
    assert confirmed.subject_id == str(device.pk) and confirmed.payload["setup"] is True
    # With a confirmed device there is no second set-up through the web: only the code is asked.
    assert client.get(SETUP)["Location"] == "/console/"  # already verified: nothing to do
    fresh = signed_in(approver)
    assert fresh.get("/console/")["Location"] == f"{VERIFY}?next=%2Fconsole%2F"
    assert fresh.get(SETUP)["Location"].startswith(VERIFY)
    assert TOTPDevice.objects.filter(user=approver).count() == 1
    assert verify_chain().ok


def test_a_wrong_code_is_refused_recorded_and_throttled(approver, settings):
    client = signed_in(approver)
    client.get(SETUP)
    device = TOTPDevice.objects.get(user=approver)
    wrong = f"{(int(code_of(device)) + 1) % 1_000_000:06d}"
    r = client.post(SETUP, {"code": wrong, "next": "/console/"})
    assert r.status_code == 400
    assert "Refused: wrong code." in r.content.decode()
    refusal = events("refused.signin.otp", actor="user:boss").get()
    assert refusal.payload["reason"] == "wrong code" and refusal.payload["setup"] is True
    assert refusal.subject_id == str(device.pk)
    device.refresh_from_db()
    assert not device.confirmed
    assert client.get("/console/")["Location"].startswith(SETUP)

    # django-otp throttles the device after a wrong code: even the right one waits.
    r = client.post(SETUP, {"code": code_of(device), "next": "/console/"})
    assert r.status_code == 400 and "too many wrong codes" in r.content.decode()
    assert "too many wrong codes" in events("refused.signin.otp").last().payload["reason"]
    assert not events("signin.otp_confirmed").exists()

    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    assert client.post(SETUP, {"code": "not a code"}).status_code == 400
    assert events("refused.signin.otp", actor="user:boss").count() == 3
    assert client.post(SETUP, {"code": code_of(device)}).status_code == 302
    assert client.get("/console/").status_code == 200


def test_verify_accepts_a_code_once(approver, settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    device = TOTPDevice.objects.create(user=approver, name="phone", confirmed=True)
    code = code_of(device)
    client = signed_in(approver)
    page = client.get(VERIFY + "?next=/admin/")
    assert page.status_code == 200 and 'autocomplete="one-time-code"' in page.content.decode()
    assert b"otpauth://" not in page.content  # the secret is shown only while setting up
    r = client.post(VERIFY, {"code": code, "next": "/admin/"})
    assert r.status_code == 302 and r["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200
    assert events("signin.otp_verified", actor="user:boss").count() == 1

    # The same code in another session is refused: django-otp remembers the last one used.
    other = signed_in(approver)
    r = other.post(VERIFY, {"code": code})
    assert r.status_code == 400
    assert events("refused.signin.otp", actor="user:boss").get().payload["reason"] == "wrong code"
    assert other.get("/admin/")["Location"].startswith(VERIFY)


def test_next_is_never_another_site(approver, settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    device = TOTPDevice.objects.create(user=approver, name="phone", confirmed=True)
    r = signed_in(approver).post(VERIFY, {"code": code_of(device), "next": "https://evil.example/"})
    assert r["Location"] == "/console/"


def test_the_session_api_needs_the_second_factor_but_a_bearer_token_does_not(caller):
    boss = caller("boss", "approver")
    session = signed_in(boss.user)
    r = session.get("/api/v1/sites/")
    assert r.status_code == 403 and "second factor" in r.json()["detail"]
    assert boss.get("/api/v1/sites/").status_code == 200  # API token: issued on the command line
    # A bearer header does not open the console or the admin to an unverified session.
    for path in ("/admin/", "/console/"):
        assert session.get(path, HTTP_AUTHORIZATION=f"Bearer {boss.token}")["Location"].startswith(SETUP)
    assert otp_login(Client(), boss.user).get("/api/v1/sites/").status_code == 200


def test_rmm_otp_reset_removes_a_lost_device(approver, capsys):
    client = otp_login(Client(), approver)
    assert client.get("/console/").status_code == 200
    call_command("rmm_otp_reset", "boss")
    assert "Removed 1 device(s)" in capsys.readouterr().out
    assert not TOTPDevice.objects.filter(user=approver).exists()
    assert client.get("/console/")["Location"].startswith(SETUP)  # the verified session is no longer
    assert events("signin.otp_device_removed", actor="cli:rmm_otp_reset").count() == 1


def test_the_console_websocket_refuses_an_unverified_approver(approver, technician, monkeypatch):
    import channels.db
    from asgiref.sync import async_to_sync
    from channels.testing import WebsocketCommunicator

    from rmm.asgi import application

    # The consumer's database calls run on this thread, inside the test's transaction: keep it open.
    monkeypatch.setattr(channels.db, "close_old_connections", lambda: None)

    def connect(client):
        async def go():
            comm = WebsocketCommunicator(
                application,
                "/ws/console/",
                headers=[
                    (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()),
                    (b"origin", b"http://127.0.0.1"),
                    (b"host", b"127.0.0.1"),
                ],
            )
            connected, code = await comm.connect()
            await comm.disconnect()
            return connected, code

        return async_to_sync(go)()

    assert connect(signed_in(approver)) == (False, 4403)
    assert connect(otp_login(Client(), approver))[0] is True
    assert connect(signed_in(technician))[0] is True


# --- lockout ------------------------------------------------------------------------------------


def login(path=LOGIN, username="boss", password=PASSWORD, address="127.0.0.1"):
    client = Client(REMOTE_ADDR=address)
    return client.post(path, {"username": username, "password": password})


def test_five_wrong_passwords_lock_the_username_out_from_that_address(caller, settings):
    assert settings.AXES_FAILURE_LIMIT == 5
    assert settings.AXES_COOLOFF_TIME.total_seconds() == 3600
    boss = caller("boss", "technician")
    boss.user.set_password(PASSWORD)
    boss.user.save()
    for _ in range(4):
        r = login(password="wrong")
        assert r.status_code == 200 and "did not match" in r.content.decode()
    assert not events("refused.signin.locked_out").exists()
    fifth = login(password="wrong")
    assert fifth.status_code == 429
    assert "5 failed sign-ins" in fifth.content.decode() and "60 minutes" in fifth.content.decode()
    locked = events("refused.signin.locked_out").get()
    assert locked.actor == "anonymous" and locked.subject_id == str(boss.user.pk)
    assert locked.payload["username"] == "boss" and locked.payload["address"] == "127.0.0.1"
    assert locked.payload["reason"] == "5 failed sign-ins: locked out for 60 minutes"

    # The right password is refused now, through the console's form and the admin's alike.
    sixth = login()
    assert sixth.status_code == 429 and "_auth_user_id" not in sixth.client.session
    assert login("/admin/login/").status_code == 429
    # Attempts during the lockout are counted per address, not recorded one by one: the sweep
    # closes the address's window with one event that gives the count (docs/security.md).
    assert events("refused.signin.locked_out").count() == 1
    engine.sweep(timezone.now() + timedelta(seconds=settings.RMM_AGENT_REFUSAL_WINDOW_SECONDS + 1))
    counted = events("refused.signin.locked_out.repeated").get()
    assert counted.payload["refusals"] == 3 and counted.payload["address"] == "127.0.0.1"
    # Not another address, and not the user's API token.
    assert login(address="10.0.0.9").status_code == 302
    assert boss.get("/api/v1/sites/").status_code == 200

    # After the cool-off the right password works again.
    AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time - timedelta(minutes=61))
    ok = login()
    assert ok.status_code == 302 and ok["Location"] == "/console/"
    assert verify_chain().ok


def test_a_successful_sign_in_resets_the_count(caller):
    user = caller("tech", "technician").user
    user.set_password(PASSWORD)
    user.save()
    for _ in range(4):
        login(username="tech", password="wrong")
    assert login(username="tech").status_code == 302
    for _ in range(4):
        assert login(username="tech", password="wrong").status_code == 200
    assert login(username="tech").status_code == 302


# --- content security policy -------------------------------------------------------------------

CSP_PARTS = [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "frame-ancestors 'none'",
    "form-action 'self'",
]


def assert_csp(response):
    policy = response["Content-Security-Policy"]
    for part in CSP_PARTS:
        assert part in policy
    assert "connect-src 'self' ws: wss:" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response["X-Frame-Options"] == "DENY"


def test_csp_on_the_console_the_admin_and_the_sign_in_pages(caller, approver, technician):
    tech = signed_in(technician)
    boss = otp_login(Client(), approver)
    for client, path in [
        (Client(), LOGIN),
        (Client(), "/admin/login/"),
        (signed_in(caller("new-boss", "approver").user), SETUP),
        (signed_in(approver), VERIFY),
        (tech, "/console/"),
        (tech, "/console/kill-switches/"),
        (boss, "/admin/"),
        (boss, "/admin/scripting/script/"),
        (boss, "/api/docs/"),
    ]:
        r = client.get(path)
        assert r.status_code == 200, path
        assert_csp(r)
        body = r.content.decode()
        assert "<style" not in body, path
        assert "<script>" not in body, path  # every script is a file (src=…)


def test_api_docs_and_schema_need_a_sign_in(caller):
    anon = Client()
    assert anon.get("/api/docs/")["Location"].startswith(f"{LOGIN}?next=")
    assert anon.get("/api/schema/").status_code == 401
    tech = caller("tech", "technician")
    schema = tech.get("/api/schema/")
    assert schema.status_code == 200
    text = schema.content.decode()
    assert "bearerAuth" in text and "scheme: bearer" in text
    for name in ("AuthorityStatusEnum", "ApprovalStatusEnum", "JobStatusEnum"):
        assert name in text
    page = tech.get("/api/docs/")
    assert page.status_code == 200 and "swagger-ui" in page.content.decode()
    init = tech.get("/api/docs/?script=")
    assert init.status_code == 200 and init["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle" in init.content.decode()


# --- production settings -----------------------------------------------------------------------


def test_check_deploy_is_clean_with_https_settings(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "RMM_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="rmm.settings",
        RMM_VAR_DIR=str(tmp_path / "var"),
        RMM_HTTPS="1",
        RMM_DEBUG="0",
        RMM_SECRET_KEY=secrets.token_urlsafe(64),
        RMM_ALLOWED_HOSTS="rmm.example.com",
    )
    check_deploy(env)


def test_https_settings_answer_over_plain_http_with_a_redirect(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    r = Client().get(LOGIN)
    assert r.status_code == 301 and r["Location"].startswith("https://")
    assert Client().get(LOGIN, HTTP_X_FORWARDED_PROTO="https").status_code == 200
