"""The MeshCentral provider against a real MeshCentral (the npm package, started on 127.0.0.1 with
HTTPS) and MeshCentral's own Linux agent from the same package: a real terminal session through
MeshCentral's relay, recorded by MeshCentral, pulled and hashed by the broker; and the registered
``meshcentral`` session provider through the API: opened on authority, joined with its session's
token, ended, its recording pulled and sealed as evidence; its refusals.

What does not run here: a browser on MeshCentral's web app (the technician's side of the relay is
played as meshctrl.js plays it), and remote desktop (no display on this machine), so the recording
is a terminal one.
"""

from __future__ import annotations

import base64
import hashlib
import http.cookiejar
import json
import os
import socket
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from django.core.files.storage import default_storage
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from evidence.models import RmmEvidence
from rmm.core import blobs
from rmm.engine.models import Instruction
from rmm.history.models import HistoryEvent
from rmm.outbox.models import Event
from sessions import providers, recording, services
from sessions.models import RemoteSession
from sessions.providers import meshcentral as meshcentral_provider
from sessions.providers.meshcentral import (
    CHUNK,
    MeshCentralError,
    MeshCentralProvider,
    RecordingMissing,
    RecordingNotRequired,
    UnknownDevice,
)
from tests.helpers import make_agent
from tests.sessions.helpers import URL, open_
from tests.sessions.meshcentral_server import MeshCentralServer, terminal

pytestmark = pytest.mark.slow

MAX_RECORDING = 64 * 1024 * 1024
LOADED_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def meshcentral(tmp_path_factory):
    server = MeshCentralServer(tmp_path_factory.mktemp("meshcentral"), session_recording={}).start()
    yield server
    server.stop()


def broker_of(server: MeshCentralServer) -> MeshCentralProvider:
    # A minute, not the default 15 s: MeshCentral (one node process) answers slowly while the rest of the
    # suite loads both cores.
    return MeshCentralProvider(
        server.url, server.username, server.password, ca_file=str(server.ca_file), timeout=LOADED_TIMEOUT
    )


@pytest.fixture
def broker(meshcentral):
    return broker_of(meshcentral)


def web_login(broker: MeshCentralProvider, username: str, password: str) -> tuple[str | None, str]:
    """Log in on MeshCentral's login page as a browser does: the user id its session cookie names,
    and that cookie (for the web app's own websocket)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(jar), urllib.request.HTTPSHandler(context=broker.tls)
    )
    form = urllib.parse.urlencode({"action": "login", "username": username, "password": password}).encode()
    with opener.open(f"{broker.url}/login", data=form, timeout=LOADED_TIMEOUT):
        pass
    cookies = {c.name: c.value for c in jar}
    session = json.loads(base64.b64decode(cookies["xid"] + "==")) if "xid" in cookies else {}
    return session.get("userid"), "; ".join(f"{name}={value}" for name, value in cookies.items())


def configured(settings, server: MeshCentralServer):
    """The ``meshcentral`` session provider registered from the settings, for ``server``."""
    settings.RMM_MESHCENTRAL_URL = server.url
    settings.RMM_MESHCENTRAL_USER = server.username
    settings.RMM_MESHCENTRAL_PASSWORD = server.password
    settings.RMM_MESHCENTRAL_CA_FILE = str(server.ca_file)
    settings.RMM_MESHCENTRAL_TIMEOUT_SECONDS = LOADED_TIMEOUT
    return meshcentral_provider.configure()


@pytest.fixture
def carried(meshcentral, settings):
    yield configured(settings, meshcentral)
    providers.unregister("meshcentral")  # the embedded default again: the terminal only


def url_login(broker: MeshCentralProvider, url: str) -> str | None:
    """Open a URL as a browser does: the user id MeshCentral's session cookie names then."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(jar), urllib.request.HTTPSHandler(context=broker.tls)
    )
    with opener.open(url, timeout=LOADED_TIMEOUT):
        pass
    cookies = {c.name: c.value for c in jar}
    return json.loads(base64.b64decode(cookies["xid"] + "==")).get("userid") if "xid" in cookies else None


def site_device(world, meshcentral: MeshCentralServer, broker: MeshCentralProvider):
    """The asset of this machine's name in the site, with its MeshCentral device in the site's
    group (MeshCentral's agent started for it unless an earlier test did)."""
    mesh_id = broker.ensure_device_group(world["site"].name)
    try:
        broker.device(socket.gethostname(), mesh_id)
    except UnknownDevice:  # run alone: the site's device is not there yet
        meshcentral.start_agent(mesh_id)
        wait_for(lambda: broker.device(socket.gethostname(), mesh_id), LOADED_TIMEOUT)
    return make_agent(world["site"], socket.gethostname())[0]


def refusals() -> list[str]:
    return [e.payload["reason"] for e in HistoryEvent.objects.filter(action="refused.remote_session.open")]


def test_meshcentral_starts_and_records_every_session(meshcentral, broker):
    broker.require_recording()  # no refusal
    with broker.control() as mc:
        assert mc.serverinfo["port"] == meshcentral.port
        assert mc.call("userinfo", answer="userinfo")["userinfo"]["_id"] == f"user//{meshcentral.username}"


def test_the_broker_creates_the_site_group_and_the_technician(broker):
    mesh_id = broker.ensure_device_group("site alpha", "RMM site alpha")
    assert broker.ensure_device_group("site alpha") == mesh_id  # found again, not duplicated
    assert broker.find_device_group("site alpha") == mesh_id and broker.find_device_group("site none") is None
    user_id = broker.ensure_user("tech-ana")
    assert broker.ensure_user("tech-ana") == user_id == "user//tech-ana"

    with broker.control() as mc:
        meshes = [mesh for mesh in mc.call("meshes")["meshes"] if mesh["name"] == "site alpha"]
        users = {user["_id"]: user for user in mc.call("users")["users"]}
    assert len(meshes) == 1 and meshes[0]["_id"] == mesh_id
    assert user_id not in meshes[0].get("links", {})  # no rights on the group: they come per session and device
    assert not users[user_id].get("siteadmin")  # no server rights
    assert broker.rights_of(user_id) == {}
    assert web_login(broker, "tech-ana", "tech-ana")[0] is None  # no password anybody knows


def test_the_broker_never_uses_an_account_it_did_not_make(meshcentral, broker):
    with pytest.raises(MeshCentralError, match="the broker's own MeshCentral account"):
        broker.ensure_user(meshcentral.username.upper())
    password = "Admin-" + os.urandom(8).hex()
    with broker.control() as mc:
        mc.call("adduser", username="someone-else", siteadmin=0, **{"pass": password})
    with pytest.raises(MeshCentralError, match="not one the broker made"):
        broker.ensure_user("someone-else")
    assert web_login(broker, "someone-else", password)[0] == "user//someone-else"  # untouched


def test_a_login_token_serves_its_session_and_a_second_login_ends_it(broker):
    broker.ensure_device_group("site beta")
    user_id = broker.ensure_user("tech-bo")
    token = broker.mint_login_token(user_id, "rmm-session-0001", minutes=30, node_id="node//none")
    assert token.user.startswith("~t:") and token.login_url == f"{broker.url}/?gotonode=none"
    assert timedelta(minutes=29) < token.expires_at - datetime.now(UTC) <= timedelta(minutes=30)

    watch = broker.watch_logins(token)
    user, cookie = web_login(broker, token.user, token.password)
    assert user == user_id  # the technician, not the broker
    first = watch.next_login(timeout=LOADED_TIMEOUT)
    assert first["userid"] == user_id and first["tokenName"] == "rmm-session-0001"
    with connect(f"{broker.ws_url}/control.ashx", additional_headers={"Cookie": cookie}, ssl=broker.tls) as web_app:
        assert json.loads(web_app.recv(timeout=LOADED_TIMEOUT))["action"] == "serverinfo"

        # MeshCentral itself takes the token again: single use is the broker's, which sees the second login
        assert web_login(broker, token.user, token.password)[0] == user_id
        assert watch.next_login(timeout=LOADED_TIMEOUT)["tokenUser"] == token.user
        watch.close()
        broker.revoke_login_token(user_id, token.user)

        # Revoked: MeshCentral closes the web session opened with it and refuses it from now on.
        with pytest.raises(ConnectionClosed):
            while True:
                web_app.recv(timeout=LOADED_TIMEOUT)
    assert web_login(broker, token.user, token.password)[0] is None
    with pytest.raises(MeshCentralError, match="refused the login"):
        broker.control(token.user, token.password)


def test_a_token_is_revoked_at_the_session_end_even_unused(broker):
    user_id = broker.ensure_user("tech-cy")
    token = broker.mint_login_token(user_id, "rmm-session-0002", minutes=5, node_id="node//none")
    broker.revoke_login_token(user_id, token.user)
    assert web_login(broker, token.user, token.password)[0] is None


def test_an_asset_maps_to_the_device_of_its_name(broker):
    with broker.control() as mc:  # devices MeshCentral keeps without an agent
        mesh_id = mc.call("createmesh", meshname="lab devices", meshtype=3)["meshid"]
        for name in ("web-01", "db-01", "db-01"):
            mc.call("addlocaldevice", meshid=mesh_id, devicename=name, hostname="127.0.0.1", type=4)

    device = broker.device("web-01", mesh_id)
    assert device.name == "web-01" and device.mesh_id == mesh_id and device.node_id.startswith("node//")
    assert broker.device("web-01").node_id == device.node_id

    with pytest.raises(UnknownDevice, match="no MeshCentral devices named 'web-99'"):
        broker.device("web-99")
    with pytest.raises(UnknownDevice, match="2 MeshCentral devices named 'db-01'"):
        broker.device("db-01", mesh_id)
    other = broker.ensure_device_group("site gamma")
    with pytest.raises(UnknownDevice, match="in device group"):
        broker.device("web-01", other)  # another site's group does not see it


def wait_for(read, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if found := read():
                return found
        except UnknownDevice:
            pass
        assert time.monotonic() < deadline, "MeshCentral did not show it in time"
        time.sleep(0.5)


def test_a_real_session_is_recorded_by_meshcentral_and_pulled(meshcentral, broker):
    """MeshCentral's agent on this machine joins the site's group; the technician's session token opens
    a terminal through MeshCentral's relay, which records it; the broker finds the recording by the
    device and the technician, pulls it and hashes it."""
    mesh_id = broker.ensure_device_group("site delta")
    user_id = broker.ensure_user("tech-di")
    meshcentral.start_agent(mesh_id)
    device = wait_for(lambda: broker.device(socket.gethostname(), mesh_id))  # the asset's name is its host name
    broker.grant_device(user_id, device.node_id)
    assert broker.rights_of(user_id) == {device.node_id: {"rights": 8}}  # remote control of this device only
    since = datetime.now(UTC) - timedelta(seconds=1)

    token = broker.mint_login_token(user_id, "rmm-session-0004", minutes=10, node_id=device.node_id)
    state, shown, closed = terminal(
        broker,
        token.user,
        token.password,
        device.node_id,
        b"echo hello-$((6*7))\r",
        b"hello-42",
        then=lambda: broker.revoke_login_token(user_id, token.user),
    )
    assert state == "cr"  # MeshCentral's word for "connected, and this session is being recorded"
    assert b"hello-42" in shown
    # Revoking the token at the session's end does not close a tunnel already open through the relay:
    # MeshCentral has no call that does (the web app leaves it when its session is closed).
    assert closed is False

    names = wait_for(lambda: broker.recordings(device.node_id, user_id, since))
    assert len(names) == 1 and "tech-di" in names[0]
    spooled, digest, _ = blobs.spool(broker.fetch_recording(names[0]), max_size=MAX_RECORDING)
    with spooled:
        recording = spooled.read()
    assert b"hello-42" in recording  # what the technician saw is in it
    on_disk = (meshcentral.recordings / names[0]).read_bytes()
    assert digest == hashlib.sha256(on_disk).hexdigest() and recording == on_disk
    assert broker.recordings(device.node_id, "user//tech-ana", since) == []  # another technician's: none
    assert broker.recordings(device.node_id, user_id, since, until=since + timedelta(milliseconds=500)) == []
    assert broker.recordings(device.node_id, user_id, since, until=datetime.now(UTC)) == names


def test_a_recording_is_pulled_in_chunks_and_hashed(meshcentral, broker):
    """A large file in the folder where MeshCentral's relay writes recordings, named as it names them
    (MeshCentral lists only the recordings its relay made, so this one is fetched by name)."""
    meshcentral.recordings.mkdir(exist_ok=True)
    name = "relaysession-2026-12-07-11-00-00-tech-ana-web-01-rmmtest.mcrec"
    content = os.urandom(1_500_000)
    (meshcentral.recordings / name).write_bytes(content)

    stream = broker.fetch_recording(name)
    assert iter(stream) is stream and not hasattr(stream, "sha256")  # chunks as read; the spool hashes them
    sizes = []

    def counted():
        for chunk in stream:
            sizes.append(len(chunk))
            yield chunk

    spooled, digest, size = blobs.spool(counted(), max_size=MAX_RECORDING)
    with spooled:
        assert spooled.read() == content
    assert len(sizes) > 1 and max(sizes) <= CHUNK  # never the file whole in memory
    assert digest == hashlib.sha256(content).hexdigest() and size == len(content)

    assert broker.recordings("node//none", "user//tech-ana", datetime(2026, 1, 1, tzinfo=UTC)) == []
    with pytest.raises(RecordingMissing, match="no-such.mcrec"):
        list(broker.fetch_recording("no-such.mcrec"))
    with pytest.raises(RecordingMissing):
        list(broker.fetch_recording("../meshcentral-data/config.json"))


@pytest.mark.parametrize(
    ("session_recording", "reason"),
    [(None, "does not record sessions"), ({"onlySelectedUsers": True}, "records only selected sessions")],
    ids=["off", "selected-users-only"],
)
def test_meshcentral_that_may_not_record_is_refused(tmp_path, world, settings, session_recording, reason):
    server = MeshCentralServer(tmp_path, session_recording=session_recording).start()
    try:
        with pytest.raises(RecordingNotRequired, match=reason):
            broker_of(server).require_recording()
        configured(settings, server)  # no session opens through it: recording is never optional
        r = open_(world, session_type="remote_control", provider="meshcentral")
        assert r.status_code == 409 and reason in r.json()["provider"][0]
        assert refusals() == [r.json()["provider"][0].rstrip(".")]
        assert not RemoteSession.objects.exists()
    finally:
        providers.unregister("meshcentral")
        server.stop()


def test_the_provider_is_registered_only_when_configured(settings):
    settings.RMM_MESHCENTRAL_URL = ""
    assert meshcentral_provider.configure() is None
    assert providers.names() == ["terminal"]  # the embedded default


def test_a_session_through_meshcentral_is_opened_joined_ended_and_its_recording_sealed(
    world, meshcentral, broker, carried, settings, django_capture_on_commit_callbacks
):
    """On a PSA task's authority, on an asset named as MeshCentral's device: the broker makes the site's
    group and the technician's user, mints a token for this session only, and the session is live (no
    agent step). The join URL signs the technician in; the terminal through MeshCentral's relay is
    recorded; the end revokes the token; the recording is pulled into the chunk chain and sealed."""
    settings.RMM_TASKS_SYNC = True  # the seal task runs as the end commits
    site = world["site"]
    mesh_id = broker.ensure_device_group(site.name)
    meshcentral.start_agent(mesh_id)
    device = wait_for(lambda: broker.device(socket.gethostname(), mesh_id), LOADED_TIMEOUT)
    agent, _ = make_agent(site, socket.gethostname())  # the asset (its RMM agent need not be online)
    # MeshCentral's own full administrator named as the technician: the broker leaves it alone
    password = "Admin-" + os.urandom(8).hex()
    with broker.control() as mc:
        mc.call("adduser", username="tech", siteadmin=0xFFFFFFFF, **{"pass": password})
    account = f"user//rmm-{world['tech'].user.pk}"

    r = open_(world, asset=str(agent.asset_id), session_type="remote_control", provider="meshcentral")
    assert r.status_code == 201, r.content
    body = r.json()
    sid = body["id"]
    join = urllib.parse.urlsplit(body["join_url"])
    query = dict(urllib.parse.parse_qsl(join.query))
    assert f"{join.scheme}://{join.netloc}" == meshcentral.url and query["gotonode"] == device.node_id.split("/")[-1]
    assert query["user"].startswith("~t:") and body["status"] == "running"
    session = RemoteSession.objects.get(pk=sid)
    assert session.provider_user == account and session.provider_device == device.node_id
    assert session.provider_token == query["user"] and session.live
    assert not Instruction.objects.filter(job_id=sid).exists()  # MeshCentral's agent carries it, not ours
    shown = world["tech"].get(f"{URL}{sid}/").json()
    assert (
        shown["live"] is True
        and shown["provider"] == "meshcentral"
        and shown["join_url"] == f"/console/sessions/{sid}/"
    )
    assert broker.rights_of(account) == {device.node_id: {"rights": 8}}  # remote control of this device only

    assert url_login(broker, body["join_url"]) == account  # the join URL signs the technician in
    state, screen, _ = terminal(
        broker, query["user"], query["pass"], device.node_id, b"echo hello-$((6*7))\r", b"hello-42"
    )
    assert state == "cr" and b"hello-42" in screen  # recorded by MeshCentral
    (name,) = wait_for(lambda: broker.recordings(device.node_id, account, session.started_at), LOADED_TIMEOUT)

    with django_capture_on_commit_callbacks(execute=True):
        r = world["tech"].post(f"{URL}{sid}/end/")
    assert r.status_code == 200, r.content
    assert r.json()["end_reason"] == "user" and r.json()["status"] == "aborted"
    assert web_login(broker, query["user"], query["pass"])[0] is None  # the token is revoked
    assert broker.rights_of(account) == {}  # and the rights on the device
    assert web_login(broker, "tech", password)[0] == "user//tech"  # MeshCentral's own account untouched
    with broker.control("tech", password) as mc:
        assert mc.call("loginTokens").get("loginTokens", []) == []  # and no token minted for it

    on_disk = (meshcentral.recordings / name).read_bytes()
    digest = hashlib.sha256(on_disk).hexdigest()
    shown = world["tech"].get(f"{URL}{sid}/").json()
    assert shown["recorded"] is True and shown["recording_sha256"] == digest
    record = RmmEvidence.objects.get(related_id=sid, evidence_type="session_recording")
    assert record.hash == digest and str(record.pk) in shown["evidence"]
    recorded = HistoryEvent.objects.get(sequence=record.history_sequence).payload
    assert recorded["format"] == "MeshCentral recording (.mcrec)" and recorded["size"] == len(on_disk)
    assert record.storage_uri.endswith(f"{digest}.mcrec")
    with default_storage.open(record.storage_uri.split("/", 3)[-1], "rb") as fh:
        assert fh.read() == on_disk
    chunks = recording.verify_chunks(sid)  # the same chain the built-in relay writes
    assert sum(chunk["size"] for chunk in chunks) == len(on_disk)
    told = Event.objects.get(type="session.recorded", subject_id=sid)
    assert told.data["recording_sha256"] == digest and told.data["evidence"] == str(record.pk)
    happened = [e.action for e in HistoryEvent.objects.filter(subject_id=sid).order_by("sequence")]
    assert happened.index("session.started") < happened.index("session.ended")
    assert "job.running" in happened


def test_a_meshcentral_session_is_refused_without_a_device_or_when_it_would_wait(world, broker, carried, settings):
    site = world["site"]
    unknown, _ = make_agent(site, "no-such-device")
    r = open_(world, asset=str(unknown.asset_id), session_type="remote_control", provider="meshcentral")
    assert r.status_code == 409, r.content
    assert "no MeshCentral devices named 'no-such-device'" in r.json()["asset"][0]
    r = open_(
        world, asset=str(unknown.asset_id), session_type="remote_control", provider="meshcentral", privileged=True
    )
    assert r.status_code == 409 and "cannot wait for an approver" in r.json()["provider"][0]
    r = open_(world, asset=str(unknown.asset_id), session_type="terminal", provider="meshcentral")
    assert r.status_code == 400 and "session_type" in r.json()
    assert len(refusals()) == 2 and "no MeshCentral devices" in refusals()[0]
    assert not RemoteSession.objects.exists()


def test_a_meshcentral_session_grants_nothing_when_refused(world, meshcentral, broker, carried):
    """A refused open (no authority; an account of the technician's name the broker did not make)
    makes and grants nothing in MeshCentral; the account is left as it was, and no token is minted for it."""
    agent = site_device(world, meshcentral, broker)
    account = f"rmm-{world['other_tech'].user.pk}"

    def users() -> dict:
        with broker.control() as mc:
            return {user["_id"]: user for user in mc.call("users")["users"]}

    before = users()
    r = open_(
        world,
        "other_tech",
        asset=str(agent.asset_id),
        session_type="remote_control",
        provider="meshcentral",
        psa_task_id="00000000-0000-0000-0000-000000000000",
    )
    assert r.status_code == 400 and "No authority" in r.json()["psa_task_id"][0], r.content
    assert users() == before  # no account made, no rights granted

    password = "Admin-" + os.urandom(8).hex()
    with broker.control() as mc:
        if f"user//{account}" in before:  # made by an earlier test's technician of the same id
            mc.call("deleteuser", userid=f"user//{account}")
        mc.call("adduser", username=account, siteadmin=0xFFFFFFFF, **{"pass": password})
    try:
        r = open_(world, "other_tech", asset=str(agent.asset_id), session_type="remote_control", provider="meshcentral")
        assert r.status_code == 409 and "not one the broker made" in r.json()["provider"][0]
        assert refusals()[-1] == r.json()["provider"][0].rstrip(".")
        assert not RemoteSession.objects.exists()
        assert web_login(broker, account, password)[0] == f"user//{account}"  # its password still works
        with broker.control(account, password) as mc:
            assert mc.call("loginTokens").get("loginTokens", []) == []
        assert broker.rights_of(f"user//{account}") == {}
    finally:
        with broker.control() as mc:
            mc.call("deleteuser", userid=f"user//{account}")


def test_the_end_revokes_the_token_kept_after_the_ender_read_the_session(
    world, meshcentral, broker, carried, django_capture_on_commit_callbacks
):
    """An end decided on a copy of the session read before its token was kept (a concurrent start)
    still revokes the token: the provider hangs up the session as committed."""
    agent = site_device(world, meshcentral, broker)
    r = open_(world, asset=str(agent.asset_id), session_type="remote_control", provider="meshcentral")
    assert r.status_code == 201, r.content
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(r.json()["join_url"]).query))
    stale = RemoteSession.objects.get(pk=r.json()["id"])
    stale.provider_token = ""  # as read before start kept it

    with django_capture_on_commit_callbacks(execute=True):
        assert services.end_by_system(stale, "kill_switch")
    assert web_login(broker, query["user"], query["pass"])[0] is None  # revoked all the same
    assert broker.rights_of(stale.provider_user) == {}


def test_a_second_login_with_the_token_ends_the_session_at_the_minutes_sweep(
    world, meshcentral, broker, carried, django_capture_on_commit_callbacks
):
    """MeshCentral takes a token any number of times; the broker's sweep reads its event log: one
    login is the session's, a second one ends the session, recorded with both logins, and the
    token is revoked."""
    agent = site_device(world, meshcentral, broker)
    r = open_(world, asset=str(agent.asset_id), session_type="remote_control", provider="meshcentral")
    assert r.status_code == 201, r.content
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(r.json()["join_url"]).query))
    session = RemoteSession.objects.get(pk=r.json()["id"])

    assert web_login(broker, query["user"], query["pass"])[0] == session.provider_user
    assert services.end_misused() == 0  # the session's own login
    assert web_login(broker, query["user"], query["pass"])[0] == session.provider_user  # MeshCentral takes it again
    with django_capture_on_commit_callbacks(execute=True):
        assert services.end_misused() == 1
    session.refresh_from_db()
    assert session.end_reason == "credentials_misused" and not session.live
    seen = HistoryEvent.objects.get(action="session.credentials_misused", subject_id=str(session.pk)).payload
    assert "used for 2 logins" in seen["reason"] and [login["ip"] for login in seen["logins"]] == ["127.0.0.1"] * 2
    assert web_login(broker, query["user"], query["pass"])[0] is None  # the token is revoked
    assert services.end_misused() == 0
