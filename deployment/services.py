"""Software packages as controlled artefacts (seed E): registered by upload or by an external
address with its mandatory sha256, stored once in the content-addressed blob store, approved by a
second person before any deployment may use them.

No byte of a package is held whole in memory: an upload or a download is copied in chunks into a
temporary file while it is hashed (:func:`rmm.core.blobs.spool`), checked, and only then stored
under its hash. No path from the client becomes a path on disk: the store names the blob by its
hash, and the file name the endpoint sees is made here from the checked name and version.
"""

from __future__ import annotations

import ipaddress
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from typing import IO, Any

from django.conf import settings
from django.utils import timezone

from deployment.models import DeploymentJob, InstalledSoftware, InstallerType, SoftwarePackage
from rmm.access import roles as access
from rmm.artefacts import services as artefacts
from rmm.core import blobs
from rmm.core.errors import InvalidInput, NotFound
from rmm.engine import services as engine
from rmm.history import services as history
from rmm.inventory.models import Asset
from rmm.outbox import addresses

BLOB_FOLDER = "packages"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:~-]{0,99}")
SHA256 = re.compile(r"[0-9a-f]{64}")
EXTENSION = {
    InstallerType.DEB: "deb",
    InstallerType.RPM: "rpm",
    InstallerType.MSI: "msi",
    InstallerType.EXE: "exe",
    InstallerType.SCRIPT: "script",
}
# A script package's file name ends as its interpreter wants (PowerShell runs only a .ps1 file).
SCRIPT_EXTENSION = {"sh": "sh", "powershell": "ps1"}
# How an endpoint tells the software is installed, by the rule's type: its fields, required first.
DETECTION = {
    "package": (("name",), ("version",)),  # dpkg / rpm database
    "file": (("path",), ()),
    "registry": (("key",), ("value", "data")),  # Windows registry
}


def _metadata(
    *,
    name: str,
    version: str,
    installer_type: str,
    silent_args: str,
    detection: Any,
    uninstall_args: str,
    interpreter: str = "",
) -> dict:
    """The package's own fields, checked: one 400 naming the first bad field."""
    name, version = (name or "").strip(), (version or "").strip()
    if not NAME.fullmatch(name):
        raise InvalidInput("Letters, digits and . _ + - only, starting with a letter or digit.", field="name")
    if not VERSION.fullmatch(version):
        raise InvalidInput("Letters, digits and . _ + : ~ - only, starting with a letter or digit.", field="version")
    if installer_type not in EXTENSION:
        raise InvalidInput(f"Must be one of: {', '.join(EXTENSION)}.", field="installer_type")
    interpreter = interpreter or ""
    if installer_type == InstallerType.SCRIPT and interpreter not in SCRIPT_EXTENSION:
        raise InvalidInput("A script package names what runs it: sh or powershell.", field="interpreter")
    if installer_type != InstallerType.SCRIPT and interpreter:
        raise InvalidInput("Only a script package names an interpreter.", field="interpreter")
    extension = SCRIPT_EXTENSION[interpreter] if interpreter else EXTENSION[installer_type]
    return {
        "name": name,
        "version": version,
        "installer_type": installer_type,
        "silent_args": _text(silent_args, "silent_args"),
        "detection": _detection(detection),
        "uninstall_args": _text(uninstall_args, "uninstall_args"),
        "interpreter": interpreter,
        "filename": f"{name}_{version.replace(':', '_')}.{extension}",
    }


def _text(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 2000 or "\n" in value or "\x00" in value:
        raise InvalidInput("One line of at most 2,000 characters.", field=field)
    return value.strip()


def _detection(rule: Any) -> dict:
    """A detection rule: ``{}`` (none), or ``{"type": ..., ...}`` with its type's fields as text."""
    if rule in (None, "", {}):
        return {}
    if isinstance(rule, str):
        try:
            rule = json.loads(rule)
        except ValueError:
            raise InvalidInput("Not JSON.", field="detection") from None
    if not isinstance(rule, dict) or rule.get("type") not in DETECTION:
        raise InvalidInput(f"An object whose type is one of: {', '.join(DETECTION)}.", field="detection")
    required, optional = DETECTION[rule["type"]]
    unknown = set(rule) - {"type", *required, *optional}
    if unknown:
        raise InvalidInput(f"Unknown field {sorted(unknown)[0]!r} for a {rule['type']} rule.", field="detection")
    for field in (*required, *optional):
        value = rule.get(field)
        if value is None and field in optional:
            continue
        if not isinstance(value, str) or not value.strip() or len(value) > 1000:
            raise InvalidInput(f"A {rule['type']} rule needs {field} as text.", field="detection")
    # Every value is quoted where a script uses it; none may hold a line break or a control
    # character. A package rule's version also goes into the detection document's JSON as is.
    if any(ord(ch) < 32 for field in (*required, *optional) for ch in rule.get(field) or ""):
        raise InvalidInput("No line breaks or control characters.", field="detection")
    if rule["type"] == "package" and "version" in rule and not VERSION.fullmatch(rule["version"]):
        raise InvalidInput("A package rule's version: letters, digits and . _ + : ~ - only.", field="detection")
    return rule


def register_upload(user, *, upload: IO[bytes] | Any, **fields: Any) -> SoftwarePackage:
    """A package from an uploaded file (a Django ``UploadedFile`` or any object with ``chunks()``
    or ``read``): stored under its sha256, pending approval."""
    engine.require_role(user, "author_scripts", "package.create")
    metadata = _metadata(**fields)
    chunks = upload.chunks() if hasattr(upload, "chunks") else iter(lambda: upload.read(blobs.CHUNK), b"")
    spooled, digest, size = _spool(chunks, "file")
    with spooled:
        if size == 0:
            raise InvalidInput("The file is empty.", field="file")
        return _create(user, metadata, spooled, digest, size, installer_uri="")


def register_uri(user, *, installer_uri: str, hash: str, size: int, **fields: Any) -> SoftwarePackage:  # noqa: A002
    """A package from an external address: downloaded into the store and checked against its
    mandatory sha256 and size before it exists; a mismatch stores nothing and is recorded."""
    engine.require_role(user, "author_scripts", "package.create")
    metadata = _metadata(**fields)
    digest = (hash or "").strip().lower()
    if not SHA256.fullmatch(digest):
        raise InvalidInput("A sha256: 64 hexadecimal digits.", field="hash")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= settings.RMM_PACKAGE_MAX_BYTES:
        raise InvalidInput(f"A whole number of bytes, 1 to {settings.RMM_PACKAGE_MAX_BYTES}.", field="size")
    uri = check_uri(installer_uri)
    spooled, got, got_size = _spool(_download(uri), "installer_uri", limit=size)
    with spooled:
        if (got, got_size) != (digest, size):
            reason = f"the download is {got_size} bytes with sha256 {got}, not {size} bytes with sha256 {digest}"
            history.record_refusal(user, "package.create", reason=reason, payload={"installer_uri": uri})
            raise InvalidInput(f"Refused: {reason}. Nothing was stored.", field="hash")
        return _create(user, metadata, spooled, digest, size, installer_uri=uri)


def check_uri(uri: str) -> str:
    """https, or http to a loopback address while ``RMM_DEBUG`` is on (a test's server); and never
    an address the outbox refuses a webhook (link-local and metadata addresses, the server itself,
    a name that does not resolve; private ones only with ``RMM_WEBHOOK_ALLOW_PRIVATE``): the same
    check, so that a registration cannot make the server fetch from inside its own network."""
    parts = urllib.parse.urlsplit((uri or "").strip())
    secure = parts.scheme == "https" and parts.hostname
    if not (secure or (parts.scheme == "http" and parts.hostname and settings.DEBUG and _loopback(parts.hostname))):
        raise InvalidInput(
            "Must be an https address (http only to a loopback address with RMM_DEBUG on).", field="installer_uri"
        )
    problem = addresses.refusal(parts.geturl())
    if problem:
        raise InvalidInput(problem, field="installer_uri")
    return parts.geturl()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect could leave https (or the address that was checked): refused, not followed."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise InvalidInput(f"The address redirects ({code}) to {newurl}; register that address.", field="installer_uri")


def _download(uri: str) -> Iterator[bytes]:
    opener = urllib.request.build_opener(_NoRedirects)
    # check_uri allowed only https (or http to loopback in debug), and redirects are refused.
    request = urllib.request.Request(uri, headers={"User-Agent": "rmm-server"})  # noqa: S310
    try:
        with opener.open(request, timeout=settings.RMM_PACKAGE_DOWNLOAD_TIMEOUT) as response:
            yield from iter(lambda: response.read(blobs.CHUNK), b"")
    except urllib.error.HTTPError as exc:
        raise InvalidInput(f"The download failed: HTTP {exc.code}.", field="installer_uri") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InvalidInput(f"The download failed: {reason}.", field="installer_uri") from None


def _spool(chunks: Iterable[bytes], field: str, limit: int | None = None):
    """The bytes in a temporary file with their sha256 and size; more than the limit is a 400."""
    limit = settings.RMM_PACKAGE_MAX_BYTES if limit is None else limit
    try:
        return blobs.spool(chunks, max_size=limit)
    except blobs.TooLarge:
        raise InvalidInput(f"More than {limit} bytes: refused, nothing was stored.", field=field) from None


def _create(user, metadata: dict, spooled, digest: str, size: int, *, installer_uri: str) -> SoftwarePackage:
    name = blobs.content_name(BLOB_FOLDER, digest, "bin")
    blobs.put(name, spooled, digest, action="package.store")

    def write(revision: int) -> SoftwarePackage:
        package = SoftwarePackage.objects.create(
            **metadata, revision=revision, hash=digest, size=size, blob=name, installer_uri=installer_uri, author=user
        )
        history.append(
            user,
            "package.created",
            package,
            payload={
                "name": package.name,
                "version": package.version,
                "revision": revision,
                "sha256": digest,
                "size": size,
                "installer_type": package.installer_type,
                "installer_uri": installer_uri,
            },
        )
        return package

    return artefacts.create_version(SoftwarePackage, metadata["name"], write, label="package", revision="revision")


def content(package: SoftwarePackage) -> str:
    """What an approver reads: every field that decides what runs, one per line (and so what the
    diff from the previous approved registration shows)."""
    lines = [
        f"name: {package.name}",
        f"version: {package.version}",
        f"installer_type: {package.installer_type}",
        *([f"interpreter: {package.interpreter}"] if package.interpreter else []),
        f"sha256: {package.hash}",
        f"size: {package.size}",
        f"file name on the endpoint: {package.filename}",
        f"silent_args: {package.silent_args}",
        f"uninstall_args: {package.uninstall_args}",
        f"detection: {json.dumps(package.detection, sort_keys=True)}",
        f"installer_uri: {package.installer_uri or '(uploaded)'}",
    ]
    return "\n".join(lines) + "\n"


def create_deployments(
    user,
    *,
    package_id,
    psa_task_id,
    asset_ids=None,
    site_name=None,
    plan: dict | None = None,
    action: str = "install",
    requires_approval: bool = False,
) -> list:
    """One approved package on many assets (the listed ones, or every asset of a site), one
    deployment job each, in one batch released by its ``plan`` (canary, rings, failure threshold:
    the engine's batches halt themselves past it). The engine applies every law. A rollout over
    an asset the caller may not see (another site's, or none) is 404, as if it did not exist, and
    recorded: nothing is created."""
    engine.require_role(user, "request_jobs", "deployment.create")
    if asset_ids:
        wanted = {str(asset_id) for asset_id in asset_ids}
        seen = Asset.objects.filter(pk__in=wanted, site__in=access.visible_sites(user)).count()
        if seen != len(wanted):
            reason = f"{len(wanted) - seen} of the assets do not exist or are outside your sites"
            history.record_refusal(user, "deployment.create", None, reason=reason, payload={"package": str(package_id)})
            raise NotFound(f"{len(wanted) - seen} of the assets do not exist.", field="assets")
    return engine.create_jobs(
        user,
        "deployment",
        psa_task_id=psa_task_id,
        asset_ids=asset_ids,
        site_name=site_name,
        plan=plan,
        package_id=package_id,
        action=action,
        requires_approval=requires_approval,
    )


def record_detection(job: DeploymentJob, inst, result: dict) -> InstalledSoftware | None:
    """What a detection step read becomes the asset's installed-software row for the package's
    name (one upsert, inside the engine's transaction for the result): actual state comes from the
    read after the change, never from the install's exit code. Other steps keep nothing here."""
    document = result.get("structured")
    if inst.step != 1 or not isinstance(document, dict) or not isinstance(document.get("installed"), bool):
        return None
    package = job.package
    installed = document["installed"]
    version = document.get("version") if installed and isinstance(document.get("version"), str) else ""
    row = InstalledSoftware(
        asset_id=job.asset_id,
        name=package.detection.get("name") or package.name,
        package=package,
        installed=installed,
        version=version[:200],
        read_at=timezone.now(),
        deployment_job=job,
    )
    InstalledSoftware.objects.bulk_create(
        [row],
        update_conflicts=True,
        unique_fields=["asset", "name"],
        update_fields=["package", "installed", "version", "read_at", "deployment_job", "evidence"],
    )
    return row


ASSET_PANEL_ROWS = 20


def installed_on(asset, user) -> list[InstalledSoftware]:
    """The console's installed-software panel on an asset's page (the page has checked the user
    may see the asset): its rows by name, one query."""
    rows = InstalledSoftware.objects.filter(asset=asset).select_related("package").order_by("name")
    return list(rows[:ASSET_PANEL_ROWS])


def detection_evidence(job: DeploymentJob, stored: InstalledSoftware | None, record) -> None:
    """The row a detection read wrote cites that read's evidence record."""
    if stored is not None:
        InstalledSoftware.objects.filter(asset_id=stored.asset_id, name=stored.name, deployment_job=job).update(
            evidence=record
        )
