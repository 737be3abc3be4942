"""MeshCentral as a remote-session provider: the broker drives a MeshCentral server through its own
API (the control websocket ``/control.ashx`` that meshctrl.js speaks, and the ``/login`` and
``/recordings.ashx`` pages its web app uses) and never through its database or files, so the
same code works against a MeshCentral on another host.

The broker's MeshCentral account is a full administrator (it creates device groups and users and
reads recordings). Technicians get MeshCentral accounts whose password nobody knows: the broker
sets a fresh random one only for the moment it needs to act as them (to mint or revoke their
login token), so the only way in is a login token the broker minted for one session.
"""

from __future__ import annotations

import base64
import contextlib
import http.cookiejar
import json
import logging
import math
import secrets
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus

from django.conf import settings
from django.core.cache import cache
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from rmm.core.errors import Conflict
from sessions.providers.base import Provider, RecordingUnavailable, register, unregister

# serverinfo.features bit that MeshCentral sets when the domain has "sessionRecording"
# (webserver.js getDomainUserFeatures: "Server recordings enabled").
FEATURE_SERVER_RECORDINGS = 0x08000000
# serverinfo flags that mean only selected users, user groups or device groups are recorded.
SELECTIVE_RECORDING_FLAGS = ("usersSessionRecording", "userGroupsSessionRecording", "devGroupSessionRecording")
MESH_TYPE_AGENTS = 2  # a device group of devices running MeshCentral's agent
MESH_RIGHT_REMOTE_CONTROL = 8  # remote control only: no agent console, no server files, no group admin
BROKER_MADE = "RMM technician (made by the broker)"  # the real name of every account the broker makes
MSG_CHANGED_CREDENTIALS = 75  # meshuser.js changeuserpass: "Changed account credentials"
CHUNK = 64 * 1024
LOGIN_EVENTS = 500  # how many of a technician's latest MeshCentral events are searched for a token's logins

log = logging.getLogger(__name__)


class MeshCentralError(Exception):
    """MeshCentral refused, answered something unexpected, or could not be reached."""


class RecordingNotRequired(MeshCentralError):
    """The server would let a session run unrecorded; recording is never optional, so no session starts."""


class ForeignAccount(MeshCentralError):
    """The MeshCentral account the broker would use for a technician is not one the broker made."""


class UnknownDevice(MeshCentralError):
    """No MeshCentral device (or more than one) carries the asset's name."""


class RecordingMissing(MeshCentralError):
    """MeshCentral has no recording file for the session (it fails open when it cannot write one)."""


@dataclass(frozen=True)
class LoginToken:
    """A MeshCentral login token of the technician's account, named after the one session."""

    name: str
    user: str  # "~t:..." — typed as the user name on MeshCentral's login page
    password: str
    expires_at: datetime
    login_url: str


@dataclass(frozen=True)
class Device:
    node_id: str
    name: str
    mesh_id: str


def _meshauth(username: str, password: str) -> str:
    """The ``x-meshauth`` header of meshctrl.js: base64 user name and password, comma separated."""
    return ",".join(base64.b64encode(part.encode()).decode() for part in (username, password))


class ControlSession:
    """One authenticated connection to ``/control.ashx``: JSON commands in, JSON answers and events out."""

    def __init__(
        self, ws_url: str, username: str, password: str, timeout: float, tls: ssl.SSLContext | None = None
    ) -> None:
        self.timeout = timeout
        self._open = contextlib.ExitStack()  # websockets wants its connection used as a context manager
        self.ws: ClientConnection = self._connect(ws_url, username, password, tls)
        first = self.receive()
        if first.get("action") == "close":  # MeshCentral's refusal: {"action": "close", "cause": "noauth"}
            self.close()
            raise MeshCentralError(f"MeshCentral refused the login of {username!r}: {first.get('cause')}")
        self.serverinfo = first.get("serverinfo", {}) if first.get("action") == "serverinfo" else {}

    def _connect(self, ws_url: str, username: str, password: str, tls: ssl.SSLContext | None) -> ClientConnection:
        """The websocket, tried a second time after a handshake that timed out or was cut off:
        MeshCentral 1.1.55 now and then leaves one upgrade unanswered until Node's headers timeout
        answers it 408 (a minute or more), or closes the connection before answering (seen on a
        loaded machine), while the next connection is answered at once. A refusal (another status,
        a connection refused) is final."""
        try:
            return self._handshake(ws_url, username, password, tls)
        except (
            TimeoutError,
            InvalidStatus,
            InvalidMessage,
            ConnectionClosed,
            ssl.SSLEOFError,
            ConnectionResetError,
        ) as exc:
            if isinstance(exc, InvalidStatus) and exc.response.status_code != HTTPStatus.REQUEST_TIMEOUT:
                raise MeshCentralError(f"cannot reach MeshCentral at {ws_url}: {exc}") from exc
            log.warning("MeshCentral left a websocket handshake unanswered (%s); trying once more", exc)
        except (OSError, WebSocketException) as exc:
            raise MeshCentralError(f"cannot reach MeshCentral at {ws_url}: {exc}") from exc
        try:
            return self._handshake(ws_url, username, password, tls)
        except (OSError, WebSocketException) as exc:
            raise MeshCentralError(f"cannot reach MeshCentral at {ws_url}: {exc}") from exc

    def _handshake(self, ws_url: str, username: str, password: str, tls: ssl.SSLContext | None) -> ClientConnection:
        return self._open.enter_context(
            connect(
                f"{ws_url}/control.ashx",
                additional_headers={"x-meshauth": _meshauth(username, password)},
                open_timeout=self.timeout,
                max_size=None,
                ssl=tls,
            )
        )

    def receive(self) -> dict:
        try:
            return self._read(self.timeout)
        except TimeoutError as exc:
            raise MeshCentralError("MeshCentral did not answer in time") from exc

    def _read(self, timeout: float) -> dict:
        """One message; the connection's failures (closed, an answer that is not JSON) are MeshCentralError."""
        try:
            return json.loads(self.ws.recv(timeout=timeout))
        except WebSocketException as exc:
            raise MeshCentralError(f"MeshCentral closed the connection: {exc}") from exc
        except ValueError as exc:  # json's JSONDecodeError, or a binary frame that is not UTF-8
            raise MeshCentralError(f"MeshCentral answered something that is not JSON: {exc}") from exc

    def send(self, action: str, **fields) -> None:
        try:
            self.ws.send(json.dumps({"action": action, **fields}))
        except (OSError, WebSocketException) as exc:
            raise MeshCentralError(f"MeshCentral closed the connection: {exc}") from exc

    def call(self, action: str, *, answer: str | None = None, **fields) -> dict:
        """Send a command and wait for its answer: MeshCentral tags errors with our ``responseid`` but
        some successes only with the action's name, so either is the answer."""
        responseid = secrets.token_hex(8)
        self.send(action, responseid=responseid, **fields)
        answer = answer or action
        while True:
            message = self.receive()
            if message.get("responseid") == responseid or (
                message.get("action") == answer and "responseid" not in message
            ):
                result = message.get("result", "ok")
                # addmeshuser answers with a sentence per user and a count of those that failed
                if message.get("failed", 0) if "failed" in message else result != "ok":
                    raise MeshCentralError(f"MeshCentral refused {action}: {result}")
                return message

    def wait_for_event(self, matches, timeout: float) -> dict:
        """The first event for which ``matches(event)`` holds, within ``timeout`` seconds."""
        deadline = datetime.now(UTC).timestamp() + timeout
        while (left := deadline - datetime.now(UTC).timestamp()) > 0:
            try:
                message = self._read(left)
            except TimeoutError:
                break
            event = message.get("event") if message.get("action") == "event" else None
            if event and matches(event):
                return event
        raise MeshCentralError(f"no such MeshCentral event within {timeout} s")

    def close(self) -> None:
        self._open.close()

    def __enter__(self) -> ControlSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LoginWatch:
    """MeshCentral's login events of one token. MeshCentral accepts a token for any number of logins
    until it expires or is revoked, and revoking it logs out every web session opened with it; so the
    broker watches: the first login is the session's, a second one is the token used twice, and the
    broker then revokes it (which ends the session)."""

    def __init__(self, provider: MeshCentralProvider, token: LoginToken) -> None:
        self.token = token
        self.control = provider.control()  # subscribed from here on: no login can slip past

    def next_login(self, timeout: float) -> dict:
        """The token's next login event (who, from which address and browser)."""
        return self.control.wait_for_event(
            lambda event: event.get("action") == "login" and event.get("tokenUser") == self.token.user, timeout
        )

    def close(self) -> None:
        self.control.close()


class MeshCentralProvider:
    """The broker's side of MeshCentral: device groups per site, users per technician, devices per
    asset, one login token per session, and the session's recording afterwards."""

    name = "meshcentral"

    def __init__(
        self, url: str, username: str, password: str, *, ca_file: str | None = None, timeout: float = 15.0
    ) -> None:
        self.url = url.rstrip("/")  # http(s)://host:port of MeshCentral's web server
        # MeshCentral's own certificate authority (root-cert-public.crt in its data folder) when its
        # certificate is the self-signed one it makes at first start.
        self.tls = ssl.create_default_context(cafile=ca_file) if self.url.startswith("https:") else None
        self.ws_url = "ws" + self.url.removeprefix("http")
        self.username = username
        self.password = password
        self.timeout = timeout

    def control(self, username: str | None = None, password: str | None = None) -> ControlSession:
        return ControlSession(self.ws_url, username or self.username, password or self.password, self.timeout, self.tls)

    # Recording is never optional.
    def require_recording(self) -> None:
        """Refuse unless MeshCentral records every session of every user on every device group."""
        with self.control() as mc:
            info = mc.serverinfo
        if not int(info.get("features", 0)) & FEATURE_SERVER_RECORDINGS:
            raise RecordingNotRequired("MeshCentral does not record sessions (its domain has no sessionRecording)")
        selective = [flag for flag in SELECTIVE_RECORDING_FLAGS if info.get(flag)]
        if selective:
            raise RecordingNotRequired(f"MeshCentral records only selected sessions ({', '.join(selective)})")

    # Device groups, users, devices.
    def ensure_device_group(self, name: str, description: str = "") -> str:
        """The id of the device group named ``name`` (one per site), created if it does not exist."""
        with self.control() as mc:
            for mesh in mc.call("meshes").get("meshes", []):
                if mesh.get("name") == name:
                    return mesh["_id"]
            return mc.call("createmesh", meshname=name, meshtype=MESH_TYPE_AGENTS, desc=description)["meshid"]

    def find_device_group(self, name: str) -> str | None:
        """The id of the device group named ``name``, or None: a lookup, nothing made."""
        with self.control() as mc:
            return next((mesh["_id"] for mesh in mc.call("meshes").get("meshes", []) if mesh.get("name") == name), None)

    def _user_id(self, name: str) -> str:
        return f"user//{name.lower()}"

    def check_user(self, name: str) -> str:
        """The user id of the broker's account ``name`` for a technician, read only: refused when it
        is the broker's own account, or exists but the broker did not make it or it has server rights
        (the broker never takes over, resets or mints a token for an account it does not own)."""
        user_id = self._user_id(name)
        if user_id == self._user_id(self.username):
            raise ForeignAccount(f"{name!r} is the broker's own MeshCentral account")
        with self.control() as mc:
            found = next((user for user in mc.call("users").get("users", []) if user["_id"] == user_id), None)
        if found is not None and (found.get("siteadmin") or found.get("realname") != BROKER_MADE):
            raise ForeignAccount(f"the MeshCentral account {name!r} exists and is not one the broker made")
        return user_id

    def ensure_user(self, name: str) -> str:
        """The user id of the broker's account ``name`` for a technician (see :meth:`check_user`),
        created with an unknowable password and no rights if new: rights come per session and device."""
        user_id = self.check_user(name)
        with self.control() as mc:
            if user_id not in {user["_id"] for user in mc.call("users").get("users", [])}:
                mc.call(
                    "adduser", username=name, realname=BROKER_MADE, siteadmin=0, **{"pass": secrets.token_urlsafe(24)}
                )
        return user_id

    def grant_device(self, user_id: str, node_id: str) -> None:
        """Remote-control rights (and no others) for the user on this one device."""
        with self.control() as mc:
            mc.call("adddeviceuser", nodeid=node_id, userids=[user_id], rights=MESH_RIGHT_REMOTE_CONTROL)

    def revoke_device(self, user_id: str, node_id: str) -> None:
        """The user's rights on this one device removed."""
        with self.control() as mc:
            mc.call("adddeviceuser", nodeid=node_id, userids=[user_id], rights=0, remove=True)

    def rights_of(self, user_id: str) -> dict:
        """What the user may reach: device groups and devices (MeshCentral's ``links``), by id."""
        with self.control() as mc:
            found = next((user for user in mc.call("users").get("users", []) if user["_id"] == user_id), None)
        return dict((found or {}).get("links", {}))

    def device(self, asset_name: str, mesh_id: str | None = None) -> Device:
        """The one device named after the asset (in ``mesh_id`` when given); none or several is an error."""
        with self.control() as mc:
            groups = mc.call("nodes", **({"meshid": mesh_id} if mesh_id else {})).get("nodes", {})
        found = [
            Device(node_id=node["_id"], name=node["name"], mesh_id=group)
            for group, nodes in groups.items()
            for node in nodes
            if node.get("name") == asset_name
        ]
        if len(found) != 1:
            where = f" in device group {mesh_id}" if mesh_id else ""
            raise UnknownDevice(f"{len(found) or 'no'} MeshCentral devices named {asset_name!r}{where}")
        return found[0]

    # One login token per session.
    def _as_user(self, user_id: str) -> ControlSession:
        """A control connection as the technician, under a fresh random password nobody keeps (so two
        of these for one technician at once would race: the caller serialises them)."""
        password = secrets.token_urlsafe(24)
        with self.control() as mc:
            # changeuserpass answers nothing; MeshCentral announces the change as an account event
            mc.send("changeuserpass", userid=user_id, removeMultiFactor=False, **{"pass": password})
            mc.wait_for_event(
                lambda event: (
                    event.get("action") == "accountchange"
                    and event.get("msgid") == MSG_CHANGED_CREDENTIALS
                    and event.get("account", {}).get("_id") == user_id
                ),
                self.timeout,
            )
        return self.control(user_id.split("/")[-1], password)

    def mint_login_token(self, user_id: str, session_name: str, minutes: int, node_id: str) -> LoginToken:
        """A login token of the technician's account, named after the session, that MeshCentral refuses
        after ``minutes`` (the web session it opens ends then too). Revoking it at the session's end
        logs the technician out; a second login with it is seen by :meth:`watch_logins`."""
        with self._as_user(user_id) as mc:
            token = mc.call("createLoginToken", name=session_name, expire=max(1, minutes))
        query = urllib.parse.urlencode({"gotonode": node_id.split("/")[-1]})  # the web app opens the device
        return LoginToken(
            name=session_name,
            user=token["tokenUser"],
            password=token["tokenPass"],
            expires_at=datetime.fromtimestamp(token["expire"] / 1000, UTC),
            login_url=f"{self.url}/?{query}",
        )

    def revoke_login_token(self, user_id: str, token_user: str) -> None:
        """Revoke the token (by its ``user``, "~t:..."): MeshCentral refuses it from now on and closes the
        web sessions opened with it. A terminal or desktop tunnel already open through its relay stays
        open (MeshCentral has no call that closes one): the web app leaves it when its session closes, a
        client of its own need not."""
        with self._as_user(user_id) as mc:
            remaining = mc.call("loginTokens", remove=[token_user]).get("loginTokens", [])
        if any(doc.get("tokenUser") == token_user for doc in remaining):
            raise MeshCentralError(f"MeshCentral kept login token {token_user!r}")

    def token_logins(self, user_id: str, token_user: str) -> list[dict]:
        """The logins MeshCentral recorded with this token (its event log of the technician's
        account, most recent first): who, when, from which address."""
        with self.control() as mc:
            events = mc.call("events", userid=user_id, limit=LOGIN_EVENTS).get("events", [])
        return [event for event in events if event.get("action") == "login" and event.get("tokenUser") == token_user]

    def watch_logins(self, token: LoginToken) -> LoginWatch:
        """Start listening for the token's logins, before its login URL is handed out."""
        return LoginWatch(self, token)

    # The recording.
    def recordings(self, node_id: str, user_id: str, since: datetime, until: datetime | None = None) -> list[str]:
        """File names of the recordings MeshCentral made of ``user_id`` on ``node_id`` that started
        from ``since`` and before ``until`` (a tunnel opened after a session's end is not that
        session's), oldest first, from MeshCentral's own recording events."""
        with self.control() as mc:
            events = mc.call("recordings").get("events", [])
        names = []
        for event in events:
            if event.get("nodeid") != node_id or user_id not in event.get("userids", []) or not event.get("present"):
                continue
            started = _recording_start(event)
            if started >= since and (until is None or started < until):
                names.append((started, event["filename"]))
        return [name for _, name in sorted(names)]

    def fetch_recording(self, filename: str) -> Iterator[bytes]:
        """The recording file's bytes in chunks, as they are read from MeshCentral's own download page
        (never whole in memory): the caller stores them through ``rmm.core.blobs.spool``, which hashes
        them on the way."""
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
            urllib.request.HTTPSHandler(context=self.tls),
        )
        form = urllib.parse.urlencode({"action": "login", "username": self.username, "password": self.password})
        try:
            with opener.open(f"{self.url}/login", data=form.encode(), timeout=self.timeout):
                pass  # the answer is the web app's page; what matters is the session cookie
            query = urllib.parse.urlencode({"file": filename})
            response = opener.open(f"{self.url}/recordings.ashx?{query}", timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise RecordingMissing(f"MeshCentral has no recording {filename!r} for the broker ({exc.code})") from exc
        except OSError as exc:
            raise MeshCentralError(f"cannot reach MeshCentral at {self.url}: {exc}") from exc

        def chunks() -> Iterator[bytes]:
            with response:
                while chunk := response.read(CHUNK):
                    yield chunk

        return chunks()


def _recording_start(event: dict) -> datetime:
    """When a recording's tunnel opened (its event's ``startTime``, milliseconds since the epoch), or,
    from a MeshCentral that does not say, when the recording was finished (the event's ``time``)."""
    if isinstance(event.get("startTime"), int | float):
        return datetime.fromtimestamp(event["startTime"] / 1000, UTC)
    return datetime.fromisoformat(event["time"].replace("Z", "+00:00"))


# --- the session provider: the broker's sessions carried by MeshCentral (docs/sessions-meshcentral.md) ---


def account_name(user) -> str:
    """The MeshCentral account the broker makes for an RMM user: named after its primary key, never
    its user name (which may name an account of MeshCentral's own, or differ only in case)."""
    return f"rmm-{user.pk}"


def _session_name(session) -> str:
    return f"rmm-session-{session.pk}"


@contextlib.contextmanager
def _one_at_a_time(user_id: str, wait: float) -> Iterator[None]:
    """Minting and revoking set the technician's MeshCentral password for a moment: one at a time per
    technician, across every worker (the cache: Redis in production)."""
    key = f"meshcentral-technician:{user_id}"
    deadline = time.monotonic() + wait
    while not cache.add(key, 1, timeout=int(wait) + 1):
        if time.monotonic() > deadline:
            raise MeshCentralError(f"another change of {user_id}'s MeshCentral credentials is still under way")
        time.sleep(0.1)
    try:
        yield
    finally:
        cache.delete(key)


class MeshCentralSessions(Provider):
    """The ``meshcentral`` provider: MeshCentral carries the session to the device with its own agent
    (no RMM agent step), records it, and hands the recording back; the broker keeps the laws."""

    name = "meshcentral"
    session_types = ("remote_control",)
    can_wait_for_approval = False  # its join URL carries the session's token, handed out once
    hands_out_credentials = True  # MeshCentral takes a token any number of times: the sweep checks its logins
    records_itself = True
    recording_format = ("mcrec", "MeshCentral recording (.mcrec)")

    def __init__(self, client: MeshCentralProvider) -> None:
        self.client = client

    def prepare(self, user, asset) -> dict:
        """Lookups and checks only, before the session exists and after the engine's laws (a request
        without authority never reaches MeshCentral): recording required, the technician's account
        usable, the asset's device in the site's device group; or a refusal (409). Nothing is made
        or granted here."""
        try:
            self.client.require_recording()
            user_id = self.client.check_user(account_name(user))
            mesh_id = self.client.find_device_group(asset.site.name)
            if mesh_id is None:
                raise UnknownDevice(
                    f"no MeshCentral devices named {asset.hostname!r}: no device group {asset.site.name!r}"
                )
            device = self.client.device(asset.hostname, mesh_id)
        except RecordingNotRequired as exc:
            raise Conflict(f"{exc}: recording is never optional.", field="provider") from exc
        except UnknownDevice as exc:
            raise Conflict(f"The asset has no MeshCentral device: {exc}.", field="asset") from exc
        except MeshCentralError as exc:
            raise Conflict(f"MeshCentral: {exc}.", field="provider") from exc
        return {"provider_user": user_id, "provider_device": device.node_id}

    def start(self, session) -> str:
        """Once the session's job exists (the engine checked its authority and kill switches): the
        technician's account (made if new), remote-control rights on the session's one device, and a
        login token for this session only, expiring with the site's maximum duration; the session is
        live from now. The join URL opens MeshCentral's web app on the device, signed in with the
        token (its ``user`` and ``pass`` in the URL, MeshCentral's URL sign-in)."""
        from sessions import policies, services

        minutes = math.ceil(policies.policy_for(session.site).max_duration_seconds / 60)
        try:
            self.client.ensure_user(session.provider_user.split("/")[-1])
            self.client.grant_device(session.provider_user, session.provider_device)
            with _one_at_a_time(session.provider_user, 4 * self.client.timeout):
                token = self.client.mint_login_token(
                    session.provider_user, _session_name(session), minutes, session.provider_device
                )
        except MeshCentralError as exc:
            raise Conflict(f"MeshCentral could not start the session: {exc}.", field="provider") from exc
        try:
            services.provider_started(session, token.user)
        except Exception:
            self._revoke(session.provider_user, token.user)  # ended meanwhile: the token must not outlive it
            raise
        return f"{token.login_url}&{urllib.parse.urlencode({'user': token.user, 'pass': token.password})}"

    def _revoke(self, user_id: str, token_user: str) -> None:
        with _one_at_a_time(user_id, 4 * self.client.timeout):
            self.client.revoke_login_token(user_id, token_user)

    def end(self, session, reason: str) -> None:
        """Revoke the session's token (MeshCentral refuses it and closes the web app's session opened
        with it) and the technician's rights on the device, unless another live session of theirs
        uses it. A terminal or desktop tunnel already open stays open until its client closes it:
        MeshCentral has no call that closes one (docs/sessions-meshcentral.md)."""
        from sessions import services
        from sessions.models import RemoteSession

        try:
            if session.provider_token:
                self._revoke(session.provider_user, session.provider_token)
            others = RemoteSession.objects.filter(
                provider=self.name,
                provider_user=session.provider_user,
                provider_device=session.provider_device,
                ended_at__isnull=True,
            ).exclude(pk=session.pk)
            if session.provider_user and session.provider_device and not others.exists():
                self.client.revoke_device(session.provider_user, session.provider_device)
        except Exception as exc:  # loud and recorded; the other end-of-session hooks still run
            log.exception("session %s: its MeshCentral token or rights could not be revoked", session.pk)
            services.provider_failed(session, "end", exc)

    def misuse(self, session) -> dict | None:
        """The session's token used for a second login (MeshCentral takes a token until it is
        revoked): the logins, oldest first. Revoking it, as the session's end does, closes every web
        session opened with it."""
        if not session.provider_token:
            return None
        logins = self.client.token_logins(session.provider_user, session.provider_token)
        if len(logins) < 2:
            return None
        seen = [{"at": login.get("time"), "ip": login.get("ip")} for login in reversed(logins)]
        return {"reason": f"its login token was used for {len(logins)} logins", "logins": seen}

    def fetch_recording(self, session) -> Iterator[bytes] | None:
        """MeshCentral's recordings of the technician on the device whose tunnels opened while the
        session lasted, in order, as chunks; RecordingUnavailable while there is none (MeshCentral
        writes a recording when its tunnel closes) or MeshCentral cannot be reached."""
        if session.started_at is None:
            return None

        def pieces() -> Iterator[bytes]:
            try:
                names = self.client.recordings(
                    session.provider_device, session.provider_user, session.started_at, session.ended_at
                )
                if not names:
                    raise RecordingMissing("MeshCentral lists no recording of the session")
                for name in names:
                    yield from self.client.fetch_recording(name)
            except MeshCentralError as exc:
                raise RecordingUnavailable(str(exc)) from exc

        return pieces()


def configure() -> MeshCentralSessions | None:
    """Register the provider when MeshCentral is configured (RMM_MESHCENTRAL_URL, _USER, _PASSWORD);
    otherwise there is none (the embedded default has the terminal only)."""
    if not (settings.RMM_MESHCENTRAL_URL and settings.RMM_MESHCENTRAL_USER and settings.RMM_MESHCENTRAL_PASSWORD):
        unregister(MeshCentralSessions.name)
        return None
    client = MeshCentralProvider(
        settings.RMM_MESHCENTRAL_URL,
        settings.RMM_MESHCENTRAL_USER,
        settings.RMM_MESHCENTRAL_PASSWORD,
        ca_file=settings.RMM_MESHCENTRAL_CA_FILE or None,
        timeout=settings.RMM_MESHCENTRAL_TIMEOUT_SECONDS,
    )
    provider = MeshCentralSessions(client)
    register(provider)
    return provider
