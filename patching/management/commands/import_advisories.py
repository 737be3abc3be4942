import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from patching import services
from rmm.core.errors import ServiceError

ACTOR = "cli:import_advisories"


class Command(BaseCommand):
    help = (
        "Import advisories into the patch catalog: CSAF 2.0 documents (FILE...), or the Debian security "
        "tracker's JSON for one release (--debian-tracker FILE --release bookworm), read as a stream. "
        "Importing again updates entries, never duplicates them; a file that is refused writes nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("files", nargs="*", metavar="FILE", help="CSAF 2.0 JSON documents")
        parser.add_argument("--debian-tracker", metavar="FILE", help="the tracker's JSON (tracker/data/json)")
        parser.add_argument("--release", help="with --debian-tracker: the release's codename, e.g. bookworm")

    def handle(self, *args, files, debian_tracker, release, **options):
        if release and not debian_tracker:
            raise CommandError("--release goes with --debian-tracker.")
        if debian_tracker and not release:
            raise CommandError("--debian-tracker needs --release (e.g. bookworm).")
        if not files and not debian_tracker:
            raise CommandError("Name CSAF files, or --debian-tracker FILE --release NAME.")
        for name in files:
            self._report(name, lambda name=name: services.import_csaf(ACTOR, self._document(name)))
        if debian_tracker:
            with self._open(debian_tracker) as stream:
                self._report(
                    debian_tracker,
                    lambda: services.import_debian_tracker(ACTOR, stream, release=release, name=debian_tracker),
                )

    def _open(self, name: str):
        try:
            return open(name, "rb")  # noqa: SIM115 - closed by the caller's with
        except OSError as exc:
            raise CommandError(f"{name}: {exc.strerror}") from exc

    def _document(self, name: str) -> dict:
        try:
            document = json.loads(Path(name).read_bytes())
        except OSError as exc:
            raise CommandError(f"{name}: {exc.strerror}") from exc
        except ValueError as exc:
            raise CommandError(f"{name}: not JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise CommandError(f"{name}: a CSAF document is a JSON object.")
        return document

    def _report(self, name: str, run) -> None:
        try:
            result = run()
        except ServiceError as exc:
            problems = "; ".join(f"{where}: {' '.join(map(str, why))}" for where, why in exc.as_dict().items())
            raise CommandError(f"{name}: refused, nothing written: {problems}") from exc
        self.stdout.write(
            f"{name}: {result.imported} entries ({result.created} new, {result.updated} updated, "
            f"{result.unchanged} unchanged)"
        )
