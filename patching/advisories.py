"""Reading advisories into catalog entries, without writing anything: CSAF 2.0 documents (validated
by the ``csaf`` package: the 2.0 schema and its mandatory rules) and the Debian security tracker's
JSON (read as a stream by ``ijson``, one source package at a time). The service
(:mod:`patching.services`) writes what these yield. docs/patching.md says how each field maps."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO
from urllib.parse import unquote

from patching.models import CatalogSource, PatchCatalog, PatchCve, Severity
from rmm.core.errors import InvalidInput
from rmm.core.text import storable

# The longest text each key field holds (the model's max_length).
LIMITS = {name: PatchCatalog._meta.get_field(name).max_length for name in ("vendor", "product", "patch_id")}
CVE_LIMIT = PatchCve._meta.get_field("cve").max_length
MAX_ERRORS = 20


class InvalidDocument(InvalidInput):
    """400: a document that is not a valid CSAF 2.0 document, each problem under its JSON path
    (``{"/vulnerabilities/0/product_status/fixed/2": ["product id `x` is not defined …"]}``)."""

    def __init__(self, errors: dict[str, list[str]]):
        first = next(iter(errors))
        super().__init__(errors[first][0], field=first)
        self.errors = errors

    def as_dict(self) -> dict:
        return dict(self.errors)


@dataclass
class Entry:
    """One catalog entry as an import found it; entries with the same key are merged."""

    vendor: str
    product: str
    patch_id: str
    source: str
    fixed_version: str = ""
    severity: int = Severity.NONE
    release_date: datetime | None = None
    title: str = ""
    url: str = ""
    source_advisory_id: str = ""
    cves: set[str] = field(default_factory=set)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.vendor, self.product, self.patch_id)

    def merge(self, other: Entry) -> None:
        """Another finding of the same fix: its CVEs join, the higher severity wins."""
        self.cves |= other.cves
        self.severity = max(self.severity, other.severity)
        self.url = self.url or other.url


def merged(entries) -> dict[tuple[str, str, str], Entry]:
    found: dict[tuple[str, str, str], Entry] = {}
    for entry in entries:
        if entry.key in found:
            found[entry.key].merge(entry)
        else:
            found[entry.key] = entry
    return found


# --- severities -----------------------------------------------------------------------------

# CVSS v3 baseSeverity, and the words vendors use in aggregate_severity (Red Hat's Important and
# Moderate, the BSI's and Siemens' High and Medium).
_WORDS = {
    "none": Severity.NONE,
    "informational": Severity.NONE,
    "low": Severity.LOW,
    "moderate": Severity.MEDIUM,
    "medium": Severity.MEDIUM,
    "important": Severity.HIGH,
    "high": Severity.HIGH,
    "critical": Severity.CRITICAL,
}


def severity_of_word(word) -> Severity:
    """A severity word (any case); NONE for a word the scale does not know."""
    return _WORDS.get(str(word or "").strip().lower(), Severity.NONE)


def severity_of_cvss_v2(score) -> Severity:
    """NVD's ranges for a CVSS v2 base score (v2 has no severity of its own)."""
    if not isinstance(score, int | float):
        return Severity.NONE
    return (
        Severity.HIGH if score >= 7 else Severity.MEDIUM if score >= 4 else Severity.LOW if score > 0 else Severity.NONE
    )


# --- CSAF 2.0 -------------------------------------------------------------------------------


def validate_csaf(document: dict) -> None:
    """Refuse (InvalidDocument) a document that fails the CSAF 2.0 schema or a mandatory rule
    (an unknown or twice-defined product id, contradicting product status, an invalid CVSS…)."""
    from csaf.csaf.v20 import validate  # imported on first use: the package loads its schemas then

    try:
        report = validate(document, preset="basic")
    except RecursionError:
        raise InvalidDocument({"/": ["Nested too deep."]}) from None
    errors: dict[str, list[str]] = {}
    for result in report.results:
        if result.passed or result.skipped or result.group == "informative":
            continue
        for error in result.errors:
            if len(errors) >= MAX_ERRORS and error.instance_path not in errors:
                break
            errors.setdefault(error.instance_path or "/", []).append(f"{error.message} ({_rule(result.id)})")
    if errors:
        raise InvalidDocument(errors)


def _rule(rule_id: str) -> str:
    return "the CSAF 2.0 schema" if rule_id == "schema" else f"CSAF 2.0 test {rule_id}"


def _text(value, where: str, limit: int | None = None) -> str:
    """A string of the document as the catalog can hold it, or a 400 at its path."""
    text = str(value or "").strip()
    if not storable(text):
        raise InvalidDocument({where: ["Contains a NUL or a lone surrogate."]})
    if limit is not None and len(text) > limit:
        raise InvalidDocument({where: [f"Longer than {limit} characters, the catalog's limit."]})
    return text


@dataclass
class _Product:
    vendor: str
    product: str
    version: str
    where: str  # the JSON path of its definition


# A package URL's type and namespace that name a distribution's packages -> that distribution's
# ``os-release`` id, the vendor its scans report: a Red Hat advisory's ``pkg:rpm/redhat/openssl``
# is the ``rhel`` scan's ``openssl``, so the advisory's CVEs and severity join what the scans found.
DISTRIBUTIONS = {
    ("rpm", "redhat"): "rhel",
    ("rpm", "fedora"): "fedora",
    ("rpm", "centos"): "centos",
    ("rpm", "almalinux"): "almalinux",
    ("rpm", "rocky"): "rocky",
    ("deb", "debian"): "debian",
    ("deb", "ubuntu"): "ubuntu",
}


@dataclass(frozen=True)
class _Purl:
    name: str
    version: str
    distribution: str  # the os-release id of the distribution whose package it is, or ""


def _purl(purl: str) -> _Purl | None:
    """What a package URL names: its package, its version (the epoch qualifier in front as RPM
    writes it) and its distribution (``pkg:rpm/redhat/openssl@3.0.7-27.el9?arch=x86_64&epoch=1``
    → ``openssl``, ``1:3.0.7-27.el9``, ``rhel``)."""
    if not purl.startswith("pkg:"):
        return None
    rest = purl[4:].split("#", 1)[0]
    rest, _, query = rest.partition("?")
    path, _, version = rest.partition("@")
    parts = [unquote(part) for part in path.strip("/").split("/")]
    name = parts[-1]
    if not name:
        return None
    qualifiers = dict(part.partition("=")[::2] for part in query.split("&") if part)
    version = unquote(version)
    epoch = qualifiers.get("epoch", "")
    if version and epoch and epoch != "0":
        version = f"{epoch}:{version}"
    namespace = parts[1].lower() if len(parts) == 3 else ""
    return _Purl(name, version, DISTRIBUTIONS.get((parts[0].lower(), namespace), ""))


def _product_of(full_name: dict, where: str, context: dict) -> _Product:
    """What a full product name (a product in the tree) names: its vendor, product and version.
    The purl of its identification helper wins (a package's name and version, and a
    distribution's package is that distribution's); else the names of the branches above it
    (vendor, product_name or product_family, product_version)."""
    helper = full_name.get("product_identification_helper") or {}
    parsed = _purl(str(helper.get("purl") or ""))
    vendor = context.get("vendor", "")
    product = context.get("product_name") or context.get("product_family") or full_name.get("name", "")
    version = context.get("product_version", "")
    if parsed is not None:
        product, version = parsed.name, parsed.version or version
        vendor = parsed.distribution or vendor
    return _Product(
        vendor=_text(vendor, where, LIMITS["vendor"]),
        product=_text(product, where, LIMITS["product"]),
        version=_text(version, where, LIMITS["patch_id"]),
        where=where,
    )


def _walk(branches: list, where: str, context: dict, products: dict[str, _Product]) -> None:
    for index, branch in enumerate(branches):
        here = f"{where}/{index}"
        inner = {**context, branch["category"]: branch["name"]}
        if "product" in branch:
            products[branch["product"]["product_id"]] = _product_of(branch["product"], f"{here}/product", inner)
        _walk(branch.get("branches", []), f"{here}/branches", inner, products)


def _products(document: dict) -> dict[str, _Product]:
    """Every product id of the tree. A relationship's product (a component of a platform) stands for
    its component: the package that the fix is a version of."""
    tree = document.get("product_tree", {})
    publisher = {"vendor": document["document"]["publisher"]["name"]}
    products: dict[str, _Product] = {}
    _walk(tree.get("branches", []), "/product_tree/branches", publisher, products)
    for index, full_name in enumerate(tree.get("full_product_names", [])):
        where = f"/product_tree/full_product_names/{index}"
        products[full_name["product_id"]] = _product_of(full_name, where, publisher)
    relationships = tree.get("relationships", [])
    for _ in range(len(relationships)):  # a relationship may name another's product: resolve in turns
        progressed = False
        for relationship in relationships:
            product_id = relationship["full_product_name"]["product_id"]
            component = products.get(relationship["product_reference"])
            if product_id not in products and component is not None:
                products[product_id] = component
                progressed = True
        if not progressed:
            break
    return products


def _groups(document: dict) -> dict[str, list[str]]:
    return {
        group["group_id"]: group["product_ids"] for group in document.get("product_tree", {}).get("product_groups", [])
    }


def _release_date(tracking: dict) -> datetime | None:
    try:
        released = datetime.fromisoformat(tracking["initial_release_date"].replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None
    return released if released.tzinfo else released.replace(tzinfo=UTC)  # no zone given: UTC


def _self_url(document: dict) -> str:
    for reference in document["document"].get("references", []):
        if reference.get("category") == "self":
            return str(reference.get("url") or "")
    return ""


def csaf_entries(document: dict) -> dict[tuple[str, str, str], Entry]:
    """The catalog entries of a valid CSAF 2.0 document (:func:`validate_csaf` first).

    Each product the document marks ``fixed`` (or ``first_fixed``) is a fix of its product at its
    version: patch_id and fixed_version are that version. A product that only a ``vendor_fix``
    remediation names (one ``known_affected``, say) is fixed by the advisory itself: patch_id is the
    advisory's tracking id, unless the same vulnerability marks a version of that product fixed.
    Severity: the highest CVSS v3 ``baseSeverity`` (else v2 base score) of the vulnerability's scores
    covering the product, else its highest score for any product, else the document's
    ``aggregate_severity``; an entry fixing several vulnerabilities takes the highest."""
    meta = document["document"]
    tracking = meta["tracking"]
    advisory = _text(
        tracking["id"], "/document/tracking/id", PatchCatalog._meta.get_field("source_advisory_id").max_length
    )
    title = _text(meta.get("title", ""), "/document/title")
    released = _release_date(tracking)
    default_severity = severity_of_word((meta.get("aggregate_severity") or {}).get("text"))
    self_url = _text(_self_url(document), "/document/references")
    products, groups = _products(document), _groups(document)
    found: list[Entry] = []

    def entry(product: _Product, patch_id: str, fixed_version: str, severity: int, url: str, cve: str) -> Entry:
        return Entry(
            vendor=product.vendor,
            product=product.product,
            patch_id=_text(patch_id, product.where, LIMITS["patch_id"]),
            source=CatalogSource.CSAF,
            fixed_version=fixed_version,
            severity=severity,
            release_date=released,
            title=title,
            url=url[:1000],
            source_advisory_id=advisory,
            cves={cve} if cve else set(),
        )

    for index, vulnerability in enumerate(document.get("vulnerabilities", [])):
        where = f"/vulnerabilities/{index}"
        cve = _text(vulnerability.get("cve", ""), f"{where}/cve", CVE_LIMIT)
        severities: dict[str, int] = {}
        for score in vulnerability.get("scores", []):
            if "cvss_v3" in score:
                level = severity_of_word(score["cvss_v3"].get("baseSeverity"))
            else:
                level = severity_of_cvss_v2(score.get("cvss_v2", {}).get("baseScore"))
            for product_id in score.get("products", []):
                severities[product_id] = max(severities.get(product_id, Severity.NONE), level)
        # A product without a score of its own (a fixed version, when the affected ones are scored)
        # takes the vulnerability's highest score, else the document's aggregate severity.
        default = max(severities.values(), default=default_severity)
        fix_urls: dict[str, str] = {}
        for r, remediation in enumerate(vulnerability.get("remediations", [])):
            if remediation.get("category") != "vendor_fix":
                continue
            url = _text(remediation.get("url", ""), f"{where}/remediations/{r}/url")
            named = list(remediation.get("product_ids", []))
            for group_id in remediation.get("group_ids", []):
                named += groups.get(group_id, [])
            for product_id in named:
                fix_urls.setdefault(product_id, url)
        # A vendor fix named for the affected products (a version range) is the fix of the fixed version.
        product_urls = {(products[p].vendor, products[p].product): url for p, url in fix_urls.items() if p in products}
        status = vulnerability.get("product_status", {})
        fixed_ids = list(dict.fromkeys(status.get("fixed", []) + status.get("first_fixed", [])))
        fixed_products: set[tuple[str, str]] = set()
        for product_id in fixed_ids:
            product = products[product_id]
            version = product.version
            severity = severities.get(product_id, default)
            url = fix_urls.get(product_id) or product_urls.get((product.vendor, product.product)) or self_url
            found.append(entry(product, version or advisory, version, severity, url, cve))
            fixed_products.add((product.vendor, product.product))
        for product_id, url in fix_urls.items():
            product = products.get(product_id)
            if product is None or product_id in fixed_ids or (product.vendor, product.product) in fixed_products:
                continue
            severity = severities.get(product_id, default)
            found.append(entry(product, advisory, "", severity, url or self_url, cve))
    return merged(found)


# --- the Debian security tracker --------------------------------------------------------------

DEBIAN_URGENCY = {
    "unimportant": Severity.NONE,
    "low": Severity.LOW,
    "medium": Severity.MEDIUM,
    "high": Severity.HIGH,
}
TRACKER_URL = "https://security-tracker.debian.org/tracker/source-package/"


class TrackerError(InvalidInput):
    """The tracker's file is not the JSON the tracker publishes; says where (a package's name)."""


def _debian_entries(package: str, cves, release: str) -> list[Entry]:
    if not isinstance(cves, dict):
        raise TrackerError(f"Package {package!r}: expected an object of CVEs.", field=package)
    found = []
    for cve, record in cves.items():
        if not isinstance(record, dict):
            raise TrackerError(f"Package {package!r}: {cve!r} is not an object.", field=package)
        if not storable(cve) or len(cve) > CVE_LIMIT:
            raise TrackerError(f"Package {package!r}: an id the catalog cannot hold.", field=package)
        releases = record.get("releases")
        state = releases.get(release) if isinstance(releases, dict) else None
        if not isinstance(state, dict) or state.get("status") != "resolved":
            continue  # open, undetermined, or not in this release: no fix to list
        version = state.get("fixed_version")
        if not isinstance(version, str) or version in ("", "0"):
            continue  # "0": the release was never affected
        urgency = str(state.get("urgency") or "").rstrip("*").strip()
        found.append(
            Entry(
                vendor="debian",
                product=package,
                patch_id=version,
                source=CatalogSource.DEBIAN_TRACKER,
                fixed_version=version,
                severity=DEBIAN_URGENCY.get(urgency, Severity.NONE),
                url=TRACKER_URL + package,
                source_advisory_id=f"debian-security-tracker:{release}",
                cves={cve} if cve.startswith("CVE-") else set(),
            )
        )
    return found


def debian_tracker_entries(stream: IO[bytes], release: str) -> Iterator[Entry]:
    """The catalog entries of the tracker's JSON for ``release``, one source package at a time:
    the whole file (tens of MB) is never in memory, only the package being read."""
    import ijson

    packages = 0
    try:
        for package, cves in ijson.kvitems(stream, "", use_float=True):
            packages += 1
            if not storable(package) or len(package) > LIMITS["product"]:
                raise TrackerError("A package name the catalog cannot hold.", field="package")
            for entry in merged(_debian_entries(package, cves, release)).values():
                if not storable(entry.patch_id) or len(entry.patch_id) > LIMITS["patch_id"]:
                    raise TrackerError(f"Package {package!r}: a fixed version the catalog cannot hold.", field=package)
                yield entry
    except ijson.JSONError as exc:
        raise TrackerError(f"Not the tracker's JSON: {exc}.", field="file") from None
    if not packages:
        raise TrackerError("Not the tracker's JSON: no package in it.", field="file")
