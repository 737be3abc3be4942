"""The patch catalog's only writer: advisory imports. An import is idempotent (it upserts on
(vendor, product, patch_id); a CVE is linked to an entry once), all or nothing (one transaction),
written in batches (a constant number of queries per batch) and recorded in the history."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

from django.db import IntegrityError, transaction
from django.utils import timezone

from patching import advisories, worst
from patching.advisories import Entry
from patching.models import CatalogSource, PatchCatalog, PatchCve
from rmm.core.errors import Conflict, InvalidInput
from rmm.engine import services as engine
from rmm.history import services as history

# Who may import through the API: admins and the scanner role (rmm/access/roles.py). The command
# runs on the server as its operator (actor ``cli:import_advisories``).
CAPABILITY = "import_advisories"
ACTION = "patch_catalog.import"
BATCH = 500
# Written again when an entry is imported again; its key and its CVEs (which only accumulate) aside.
UPDATED_FIELDS = ("fixed_version", "severity", "release_date", "title", "url", "source", "source_advisory_id")
RELEASE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")


@dataclass
class ImportResult:
    source: str
    imported: int  # entries in the source: created + updated + unchanged
    created: int
    updated: int
    unchanged: int


def _may_import(actor) -> None:
    """Law 7: an API caller needs a role that may import; the command's operator is the server's."""
    if isinstance(actor, str) and actor.startswith("cli:"):
        return
    engine.require_role(actor, CAPABILITY, ACTION)


def import_csaf(actor, document: dict) -> ImportResult:
    """A CSAF 2.0 document's fixes into the catalog. A document that fails the schema or a mandatory
    rule is refused with each problem's JSON path, and nothing is written."""
    _may_import(actor)
    advisories.validate_csaf(document)
    try:
        entries = advisories.csaf_entries(document)
    except RecursionError:  # a product tree nested deeper than Python recurses
        raise advisories.InvalidDocument({"/product_tree": ["Nested too deep."]}) from None
    tracking = document["document"]["tracking"]
    return _import(
        actor,
        entries.values(),
        source=CatalogSource.CSAF,
        payload={"advisory": tracking["id"], "advisory_version": tracking["version"]},
    )


def import_debian_tracker(actor, stream: IO[bytes], *, release: str, name: str = "") -> ImportResult:
    """The Debian security tracker's fixes for ``release`` (its JSON, read as a stream: tens of MB
    never held at once). A file that is not the tracker's JSON, at any point, writes nothing."""
    _may_import(actor)
    if not RELEASE.match(release or ""):
        raise InvalidInput("A Debian release's codename, e.g. bookworm.", field="release")
    entries = advisories.debian_tracker_entries(stream, release)
    return _import(actor, entries, source=CatalogSource.DEBIAN_TRACKER, payload={"release": release, "file": name})


def _import(actor, entries: Iterable[Entry], *, source: str, payload: dict) -> ImportResult:
    counts: Counter[str] = Counter()
    try:
        with transaction.atomic():
            batch: dict[tuple[str, str, str], Entry] = {}
            for entry in entries:
                if entry.key in batch:
                    batch[entry.key].merge(entry)
                    continue
                batch[entry.key] = entry
                if len(batch) >= BATCH:
                    _write(list(batch.values()), counts)
                    batch = {}
            _write(list(batch.values()), counts)
            result = ImportResult(
                source=source,
                imported=counts["created"] + counts["updated"] + counts["unchanged"],
                created=counts["created"],
                updated=counts["updated"],
                unchanged=counts["unchanged"],
            )
            history.append(
                actor,
                "patch_catalog.imported",
                subject_type="patching.patchcatalog",
                payload={
                    **payload,
                    "source": source,
                    "imported": result.imported,
                    "created": result.created,
                    "updated": result.updated,
                    "unchanged": result.unchanged,
                },
            )
    except IntegrityError as exc:  # another import inserted the same key meanwhile
        raise Conflict("Another import wrote the same catalog entries at the same time: import again.") from exc
    return result


def _write(entries: list[Entry], counts: Counter) -> None:
    """One batch: a read of the rows it may update and one of their CVEs, then one insert, one
    update and one insert of CVE links (each split further only by the database's limit on
    parameters). An entry that gains a CVE counts as updated."""
    if not entries:
        return
    existing = {
        (row.vendor, row.product, row.patch_id): row
        for row in PatchCatalog.objects.filter(
            vendor__in={e.vendor for e in entries},
            product__in={e.product for e in entries},
            patch_id__in={e.patch_id for e in entries},
        )
    }
    linked = set(
        PatchCve.objects.filter(patch__in=[row.pk for row in existing.values()]).values_list("patch_id", "cve")
    )
    now = timezone.now()
    new, changed, links = [], [], []
    for entry in entries:
        values = {name: getattr(entry, name) for name in UPDATED_FIELDS}
        row = existing.get(entry.key)
        created = row is None
        if created:
            row = PatchCatalog(vendor=entry.vendor, product=entry.product, patch_id=entry.patch_id, **values)
            new.append(row)
        cves = [PatchCve(patch_id=row.pk, cve=cve) for cve in sorted(entry.cves) if (row.pk, cve) not in linked]
        links += cves
        if created:
            continue
        if cves or any(getattr(row, name) != value for name, value in values.items()):
            for name, value in values.items():
                setattr(row, name, value)
            row.imported_at = now
            changed.append(row)
        else:
            counts["unchanged"] += 1
    PatchCatalog.objects.bulk_create(new)
    PatchCatalog.objects.bulk_update(changed, [*UPDATED_FIELDS, "imported_at"])
    if changed:  # a severity may have changed: the worst of the assets where they are outstanding
        worst.refresh(patch_ids=[row.pk for row in changed])
    PatchCve.objects.bulk_create(links)
    counts["created"] += len(new)
    counts["updated"] += len(changed)
