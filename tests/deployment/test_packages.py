"""Software packages (seed E): registered by upload or by address and sha256, stored once under
their hash, four-eyes approved as privileged artefacts; bad input is a 400 naming the field, and
nothing is stored."""

from __future__ import annotations

import hashlib
import io
import threading
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.core.files.storage import default_storage

from deployment import services
from deployment.models import SoftwarePackage
from rmm.artefacts import services as artefacts
from rmm.core.errors import InvalidInput
from rmm.history.models import HistoryEvent
from tests.support.profiles import grant_privileged_approval

PAYLOAD = b"!<arch>\nnot really a deb, but bytes with a hash\n"
FIELDS = {"name": "hello-rmm", "version": "1.0-1", "installer_type": "deb"}


@pytest.fixture
def people(caller):
    boss = caller("boss", "approver")
    grant_privileged_approval(boss.user)
    return {"tech": caller("tech", "technician"), "boss": boss, "plain": caller("plain", "approver")}


def upload(who, data: bytes = PAYLOAD, **fields):
    body = {**FIELDS, "detection": '{"type": "package", "name": "hello-rmm"}', **fields}
    if data is not None:
        body["file"] = io.BytesIO(data)
        body["file"].name = "../../etc/evil name.deb"
    return who.post("/api/v1/packages/", body, format="multipart")


def stored_blobs(root: str = "packages") -> list[str]:
    if not default_storage.exists(root):
        return []
    found = []
    folders, files = default_storage.listdir(root)
    found += files
    for folder in folders:
        found += stored_blobs(f"{root}/{folder}")
    return found


class Origin:
    """A real HTTP server on 127.0.0.1 serving ``body`` at any path (or a redirect, or a 404)."""

    def __init__(self, body: bytes = PAYLOAD, status: int = 200, location: str = ""):
        origin = self
        self.body, self.status, self.location = body, status, location

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                self.send_response(origin.status)
                if origin.location:
                    self.send_header("Location", origin.location)
                self.send_header("Content-Length", str(len(origin.body)))
                self.end_headers()
                self.wfile.write(origin.body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files/hello.deb"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def origin():
    started = []

    def start(**kwargs) -> Origin:
        started.append(Origin(**kwargs))
        return started[-1]

    yield start
    for server in started:
        server.close()


def by_uri(who, url: str, *, digest: str = hashlib.sha256(PAYLOAD).hexdigest(), size: int = len(PAYLOAD)):
    return who.post("/api/v1/packages/", {**FIELDS, "installer_uri": url, "hash": digest, "size": size}, format="json")


def test_an_upload_is_stored_under_its_hash_pending_and_a_second_person_with_the_permission_approves(people):
    r = upload(people["tech"])
    assert r.status_code == 201, r.content
    body = r.json()
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    assert body["status"] == "pending" and body["revision"] == 1 and body["hash"] == digest
    assert body["size"] == len(PAYLOAD) and body["installer_uri"] == ""
    # The client's file name never becomes a path: the endpoint's name is made from name and version.
    assert body["filename"] == "hello-rmm_1.0-1.deb"
    package = SoftwarePackage.objects.get(pk=body["id"])
    assert package.blob == f"packages/{digest[:2]}/{digest}.bin"
    with default_storage.open(package.blob, "rb") as fh:
        assert fh.read() == PAYLOAD
    assert HistoryEvent.objects.filter(action="package.created", subject_id=str(package.pk)).exists()

    # Four eyes, and an installer runs as root: the author may not, an approver needs the permission.
    assert people["tech"].post(f"/api/v1/packages/{package.pk}/approve/").status_code == 403
    assert people["plain"].post(f"/api/v1/packages/{package.pk}/approve/").status_code == 403
    assert HistoryEvent.objects.filter(action="refused.package.approve").count() == 2
    r = people["boss"].post(f"/api/v1/packages/{package.pk}/approve/")
    assert r.status_code == 200 and r.json()["status"] == "approved" and r.json()["decided_by"] == "boss"
    assert people["boss"].post(f"/api/v1/packages/{package.pk}/approve/").status_code == 409


def test_a_new_registration_of_a_package_is_its_next_revision_and_the_queue_shows_what_changed(people):
    first = SoftwarePackage.objects.get(pk=upload(people["tech"]).json()["id"])
    artefacts.decide(first, people["boss"].user, approve=True)
    r = upload(people["tech"], b"version two's bytes\n", version="2.0-1", silent_args="--force-confold")
    assert r.status_code == 201 and r.json()["revision"] == 2
    second = SoftwarePackage.objects.get(pk=r.json()["id"])
    (item,) = [i for i in artefacts.pending("software_package")]
    assert item["obj"] == second and item["privileged"]
    assert f"-sha256: {first.hash}" in item["diff"] and f"+sha256: {second.hash}" in item["diff"]
    assert "+silent_args: --force-confold" in item["diff"] and "+version: 2.0-1" in item["diff"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "../etc/passwd"}, "name"),
        ({"name": ""}, "name"),
        ({"version": "1.0; rm -rf /"}, "version"),
        ({"installer_type": "apk"}, "installer_type"),
        ({"detection": "{not json"}, "detection"),
        ({"detection": '{"type": "file"}'}, "detection"),
        ({"detection": '{"type": "package", "name": "x", "path": "/x"}'}, "detection"),
        ({"silent_args": "a\nb"}, "silent_args"),
    ],
)
def test_bad_fields_are_refused_with_the_field_and_nothing_is_stored(people, fields, field):
    r = upload(people["tech"], **fields)
    assert r.status_code == 400 and field in r.json(), r.content
    assert not SoftwarePackage.objects.exists() and stored_blobs() == []


def test_an_empty_file_no_file_and_a_file_with_an_address_are_refused(people):
    assert upload(people["tech"], b"").json().keys() == {"file"}
    assert upload(people["tech"], None).json().keys() == {"file"}
    body = {**FIELDS, "file": io.BytesIO(PAYLOAD), "installer_uri": "https://example.org/x.deb"}
    assert people["tech"].post("/api/v1/packages/", body, format="multipart").json().keys() == {"file"}
    assert not SoftwarePackage.objects.exists() and stored_blobs() == []


def test_a_package_over_the_size_limit_is_refused_and_nothing_is_stored(people, settings):
    settings.RMM_PACKAGE_MAX_BYTES = len(PAYLOAD) - 1
    r = upload(people["tech"])
    assert r.status_code == 400 and "More than" in r.json()["file"][0]
    assert not SoftwarePackage.objects.exists() and stored_blobs() == []


def test_who_may_not_author_is_refused_and_it_is_recorded(caller):
    r = upload(caller("psa", "psa"))
    assert r.status_code == 403
    assert HistoryEvent.objects.filter(action="refused.package.create").count() == 1
    assert not SoftwarePackage.objects.exists()


def test_an_address_is_downloaded_into_the_store_and_checked_against_its_hash(people, origin, settings):
    settings.DEBUG = True  # http to a loopback address: a test's server
    served = origin()
    r = by_uri(people["tech"], served.url)
    assert r.status_code == 201, r.content
    package = SoftwarePackage.objects.get(pk=r.json()["id"])
    assert package.installer_uri == served.url and package.approval_status == "pending"
    with default_storage.open(package.blob, "rb") as fh:
        assert fh.read() == PAYLOAD


def test_a_download_whose_hash_or_size_does_not_match_is_refused_recorded_and_nothing_is_stored(
    people, origin, settings
):
    settings.DEBUG = True
    served = origin(body=b"something else entirely")
    r = by_uri(people["tech"], served.url, size=len(b"something else entirely"))
    assert r.status_code == 400 and "Nothing was stored" in r.json()["hash"][0]
    refusal = HistoryEvent.objects.get(action="refused.package.create")
    assert "sha256" in refusal.payload["reason"] and refusal.payload["installer_uri"] == served.url
    # More bytes than declared: the download stops at the declared size.
    r = by_uri(people["tech"], served.url, size=4)
    assert r.status_code == 400 and "installer_uri" in r.json()
    assert not SoftwarePackage.objects.exists() and stored_blobs() == []


@pytest.mark.parametrize(
    ("url", "debug"),
    [
        ("http://example.org/x.deb", True),  # http to a remote address
        ("ftp://example.org/x.deb", True),
        ("file:///etc/passwd", True),
        ("http://127.0.0.1:9/x.deb", False),  # http to loopback without RMM_DEBUG
        ("https://", True),
    ],
)
def test_an_address_that_is_not_https_is_refused(people, settings, url, debug):
    settings.DEBUG = debug
    r = by_uri(people["tech"], url)
    assert r.status_code == 400 and "https" in r.json()["installer_uri"][0]
    assert not SoftwarePackage.objects.exists()


def test_a_redirect_or_an_error_from_the_address_is_refused(people, origin, settings):
    settings.DEBUG = True
    moved = origin(status=302, location="http://example.org/elsewhere.deb", body=b"")
    r = by_uri(people["tech"], moved.url)
    assert r.status_code == 400 and "redirects" in r.json()["installer_uri"][0]
    missing = origin(status=404, body=b"no")
    r = by_uri(people["tech"], missing.url)
    assert r.status_code == 400 and "HTTP 404" in r.json()["installer_uri"][0]
    for bad in ({"hash": "abc"}, {"size": 0}):
        field = next(iter(bad))
        r = people["tech"].post(
            "/api/v1/packages/",
            {**FIELDS, "installer_uri": moved.url, "hash": "0" * 64, "size": 1, **bad},
            format="json",
        )
        assert r.status_code == 400 and field in r.json(), r.content
    assert not SoftwarePackage.objects.exists() and stored_blobs() == []


def test_a_large_installer_is_hashed_and_stored_in_chunks_never_held_whole(people, tmp_path):
    big = tmp_path / "big.bin"
    chunk = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB
    with big.open("wb") as fh:
        for _ in range(24):
            fh.write(chunk)
    tracemalloc.start()
    try:
        with big.open("rb") as fh:
            package = services.register_upload(
                people["tech"].user, upload=fh, **FIELDS, silent_args="", detection={}, uninstall_args=""
            )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert package.size == 24 * len(chunk)
    assert peak < 8 * len(chunk), f"peak {peak} bytes for a {package.size}-byte installer"
    with big.open("rb") as fh:
        assert package.hash == hashlib.sha256(fh.read()).hexdigest()
    assert Path(default_storage.path(package.blob)).stat().st_size == package.size


def test_the_service_refuses_bad_input_before_touching_the_network(people):
    with pytest.raises(InvalidInput) as refused:
        services.register_uri(
            people["tech"].user,
            installer_uri="https://203.0.113.1/never-contacted.deb",
            hash="0" * 64,
            size=1,
            name="ok",
            version="1",
            installer_type="nope",
            silent_args="",
            detection={},
            uninstall_args="",
        )
    assert refused.value.field == "installer_type"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://169.254.169.254/latest/meta-data/x.deb", "metadata"),
        ("https://[fe80::1]/x.deb", "link-local"),
        ("https://no-such-host.invalid/x.deb", "does not resolve"),
    ],
)
def test_an_https_address_the_outbox_would_refuse_is_refused_before_any_download(people, url, reason):
    r = by_uri(people["tech"], url)
    assert r.status_code == 400 and reason in r.json()["installer_uri"][0], r.content
    assert not SoftwarePackage.objects.exists()
