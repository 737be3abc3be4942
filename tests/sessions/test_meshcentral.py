"""The MeshCentral provider against a real MeshCentral (the npm package, started on 127.0.0.1 with
HTTPS) and MeshCentral's own Linux agent from the same package: a real terminal session through
MeshCentral's relay, recorded by MeshCentral, pulled and hashed by the broker.

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
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from rmm.core import blobs
from sessions.providers.meshcentral import (
    CHUNK,
    MeshCentralError,
    MeshCentralProvider,
    RecordingMissing,
    RecordingNotRequired,
    UnknownDevice,
)
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


def test_meshcentral_starts_and_records_every_session(meshcentral, broker):
    broker.require_recording()  # no refusal
    with broker.control() as mc:
        assert mc.serverinfo["port"] == meshcentral.port
        assert mc.call("userinfo", answer="userinfo")["userinfo"]["_id"] == f"user//{meshcentral.username}"


def test_the_broker_creates_the_site_group_and_the_technician(broker):
    mesh_id = broker.ensure_device_group("site alpha", "RMM site alpha")
    assert broker.ensure_device_group("site alpha") == mesh_id  # found again, not duplicated
    user_id = broker.ensure_user("tech-ana", mesh_id)
    assert broker.ensure_user("tech-ana", mesh_id) == user_id == "user//tech-ana"

    with broker.control() as mc:
        meshes = [mesh for mesh in mc.call("meshes")["meshes"] if mesh["name"] == "site alpha"]
        users = {user["_id"]: user for user in mc.call("users")["users"]}
    assert len(meshes) == 1 and meshes[0]["_id"] == mesh_id
    assert meshes[0]["links"][user_id]["rights"] == 8  # remote control, nothing else
    assert "siteadmin" not in users[user_id]  # no server rights
    assert web_login(broker, "tech-ana", "tech-ana")[0] is None  # no password anybody knows


def test_a_login_token_serves_its_session_and_a_second_login_ends_it(broker):
    mesh_id = broker.ensure_device_group("site beta")
    user_id = broker.ensure_user("tech-bo", mesh_id)
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
        broker.revoke_login_token(user_id, token)

        # Revoked: MeshCentral closes the web session opened with it and refuses it from now on.
        with pytest.raises(ConnectionClosed):
            while True:
                web_app.recv(timeout=LOADED_TIMEOUT)
    assert web_login(broker, token.user, token.password)[0] is None
    with pytest.raises(MeshCentralError, match="refused the login"):
        broker.control(token.user, token.password)


def test_a_token_is_revoked_at_the_session_end_even_unused(broker):
    user_id = broker.ensure_user("tech-cy", broker.ensure_device_group("site beta"))
    token = broker.mint_login_token(user_id, "rmm-session-0002", minutes=5, node_id="node//none")
    broker.revoke_login_token(user_id, token)
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
    user_id = broker.ensure_user("tech-di", mesh_id)
    meshcentral.start_agent(mesh_id)
    device = wait_for(lambda: broker.device(socket.gethostname(), mesh_id))  # the asset's name is its host name
    since = datetime.now(UTC) - timedelta(seconds=1)

    token = broker.mint_login_token(user_id, "rmm-session-0004", minutes=10, node_id=device.node_id)
    state, shown, closed = terminal(
        broker,
        token.user,
        token.password,
        device.node_id,
        b"echo hello-$((6*7))\r",
        b"hello-42",
        then=lambda: broker.revoke_login_token(user_id, token),
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
def test_meshcentral_that_may_not_record_is_refused(tmp_path, session_recording, reason):
    server = MeshCentralServer(tmp_path, session_recording=session_recording).start()
    try:
        with pytest.raises(RecordingNotRequired, match=reason):
            broker_of(server).require_recording()
    finally:
        server.stop()
