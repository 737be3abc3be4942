"""The Debian security tracker's JSON into the patch catalog through the command: read as a stream
(memory stays far below the file's size), written in batches (the same number of queries for each
batch), idempotent, and a file that breaks off writes nothing."""

from __future__ import annotations

import io
import json
import tracemalloc

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from patching import services
from patching.models import PatchCatalog, PatchCve
from rmm.history.models import HistoryEvent

DESCRIPTION = "A flaw was found in the parser that allows a remote attacker to cause a denial of service. " * 4


def tracker_package(n: int, cves: int = 6) -> dict:
    """One source package as the tracker writes it: each CVE with its state in three releases.
    bookworm: two fixed versions (urgencies low and high), one CVE open, one never affected ("0")."""
    records = {}
    for c in range(cves):
        bookworm = (
            {"status": "resolved", "fixed_version": f"1.{n}-1+deb12u1", "urgency": "low", "repositories": {}}
            if c < 2
            else {"status": "resolved", "fixed_version": f"1.{n}-1+deb12u2", "urgency": "high**", "repositories": {}}
            if c < 4
            else {"status": "open", "urgency": "medium", "repositories": {}}
            if c == 4
            else {"status": "resolved", "fixed_version": "0", "urgency": "unimportant", "repositories": {}}
        )
        records[f"CVE-2024-{n:05d}{c}"] = {
            "description": DESCRIPTION,
            "scope": "remote",
            "debianbug": 1000000 + n,
            "releases": {
                "bookworm": bookworm,
                "bullseye": {"status": "resolved", "fixed_version": f"1.{n}-1+deb11u1", "urgency": "medium"},
                "trixie": {"status": "resolved", "fixed_version": f"1.{n}-2", "urgency": "not yet assigned"},
            },
        }
    return records


def write_tracker(path, packages: int, **kw) -> int:
    """The tracker's file for ``packages`` packages, written one package at a time; its size."""
    with open(path, "w") as out:
        out.write("{")
        for n in range(packages):
            out.write(("," if n else "") + json.dumps(f"pkg{n:05d}") + ":" + json.dumps(tracker_package(n, **kw)))
        out.write("}")
    return path.stat().st_size


def tracker_bytes(packages: int, **kw) -> bytes:
    return json.dumps({f"pkg{n:05d}": tracker_package(n, **kw) for n in range(packages)}).encode()


def test_a_release_s_fixes_become_entries_with_their_cves_and_urgency(db, tmp_path, capsys):
    write_tracker(tmp_path / "tracker.json", 2)
    call_command("import_advisories", "--debian-tracker", str(tmp_path / "tracker.json"), "--release", "bookworm")
    assert "4 entries (4 new, 0 updated, 0 unchanged)" in capsys.readouterr().out
    rows = {
        (row.vendor, row.product, row.patch_id): (
            row.fixed_version,
            row.severity,
            sorted(row.cves.values_list("cve", flat=True)),
            row.source,
            row.url,
        )
        for row in PatchCatalog.objects.all()
    }
    tracker = "https://security-tracker.debian.org/tracker/source-package/"
    assert rows == {
        ("debian", "pkg00000", "1.0-1+deb12u1"): (
            "1.0-1+deb12u1",
            1,
            ["CVE-2024-000000", "CVE-2024-000001"],
            "debian_tracker",
            tracker + "pkg00000",
        ),
        ("debian", "pkg00000", "1.0-1+deb12u2"): (
            "1.0-1+deb12u2",
            3,
            ["CVE-2024-000002", "CVE-2024-000003"],
            "debian_tracker",
            tracker + "pkg00000",
        ),
        ("debian", "pkg00001", "1.1-1+deb12u1"): (
            "1.1-1+deb12u1",
            1,
            ["CVE-2024-000010", "CVE-2024-000011"],
            "debian_tracker",
            tracker + "pkg00001",
        ),
        ("debian", "pkg00001", "1.1-1+deb12u2"): (
            "1.1-1+deb12u2",
            3,
            ["CVE-2024-000012", "CVE-2024-000013"],
            "debian_tracker",
            tracker + "pkg00001",
        ),
    }
    (event,) = HistoryEvent.objects.filter(action="patch_catalog.imported")
    assert event.actor == "cli:import_advisories"
    assert event.payload == {
        "source": "debian_tracker",
        "release": "bookworm",
        "file": str(tmp_path / "tracker.json"),
        "imported": 4,
        "created": 4,
        "updated": 0,
        "unchanged": 0,
    }


def test_thousands_of_packages_are_streamed_in_bounded_memory_and_imported_again_unchanged(db, tmp_path, capsys):
    path = tmp_path / "tracker.json"
    size = write_tracker(path, 3000)
    assert size > 10_000_000

    tracemalloc.start()
    try:
        call_command("import_advisories", "--debian-tracker", str(path), "--release", "bookworm")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "6000 entries (6000 new, 0 updated, 0 unchanged)" in capsys.readouterr().out
    # json.load would hold the whole document: several times the file's size. The stream holds one
    # package and one batch of entries (a peak of 2.3 MB for this 13.5 MB file).
    assert peak < size / 4, f"peak {peak} bytes for a file of {size}"
    assert PatchCatalog.objects.count() == 6000
    assert PatchCve.objects.count() == 12000

    call_command("import_advisories", "--debian-tracker", str(path), "--release", "bookworm")
    assert "6000 entries (0 new, 0 updated, 6000 unchanged)" in capsys.readouterr().out
    assert PatchCatalog.objects.count() == 6000
    assert PatchCve.objects.count() == 12000


def _queries(packages: int) -> int:
    """Queries of importing ``packages`` packages of one fix each into an empty catalog."""
    PatchCve.objects.all().delete()
    PatchCatalog.objects.all().delete()
    with CaptureQueriesContext(connection) as queries:
        result = services.import_debian_tracker(
            "cli:test", io.BytesIO(tracker_bytes(packages, cves=1)), release="bookworm"
        )
    assert result.created == packages
    return len(queries)


def test_each_batch_costs_the_same_few_queries(db):
    one, two, three = (_queries(n * services.BATCH) for n in (1, 2, 3))
    per_batch = two - one
    assert three - two == per_batch
    assert per_batch <= 12  # one read, the inserts (split by SQLite's parameter limit), the CVE links


def test_a_file_that_breaks_off_writes_nothing(db, tmp_path):
    path = tmp_path / "tracker.json"
    write_tracker(path, 1200)
    path.write_bytes(path.read_bytes()[:-5000])  # cut inside the last packages: batches were written
    with pytest.raises(CommandError, match="refused, nothing written: file: Not the tracker's JSON"):
        call_command("import_advisories", "--debian-tracker", str(path), "--release", "bookworm")
    assert not PatchCatalog.objects.exists() and not PatchCve.objects.exists()
    assert not HistoryEvent.objects.filter(action="patch_catalog.imported").exists()


@pytest.mark.parametrize(
    "body,problem",
    [
        (
            b'{"pkg-a": {"CVE-2024-1": {"releases": {}}}, "pkg-b": ["CVE-2024-2"]}',
            {"pkg-b": ["Package 'pkg-b': expected an object of CVEs."]},
        ),
        (b'{"pkg-a": {"CVE-2024-1": "fixed"}}', {"pkg-a": ["Package 'pkg-a': 'CVE-2024-1' is not an object."]}),
        (b'[{"pkg-a": {}}]', {"file": ["Not the tracker's JSON: no package in it."]}),
        (b"{}", {"file": ["Not the tracker's JSON: no package in it."]}),
    ],
)
def test_a_file_that_is_not_the_tracker_s_json_is_refused_saying_where(db, body, problem):
    with pytest.raises(services.advisories.TrackerError) as refused:
        services.import_debian_tracker("cli:test", io.BytesIO(body), release="bookworm")
    assert refused.value.as_dict() == problem
    assert not PatchCatalog.objects.exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--debian-tracker", "x.json"], "--debian-tracker needs --release"),
        (["--release", "bookworm"], "--release goes with --debian-tracker"),
        ([], "Name CSAF files, or --debian-tracker FILE --release NAME."),
        (["--debian-tracker", "/nonexistent/tracker.json", "--release", "bookworm"], "No such file"),
        (["--debian-tracker", __file__, "--release", "Bookworm; DROP"], "release: A Debian release's codename"),
    ],
)
def test_the_command_refuses_bad_arguments(db, args, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(")):
        call_command("import_advisories", *args)
    assert not PatchCatalog.objects.exists()
