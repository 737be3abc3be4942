import sys

from django.core.management.base import BaseCommand

from rmm.history.services import verify_chain


class Command(BaseCommand):
    help = "Walk the execution history's hash chain; exit 1 naming the first event that does not verify."

    def handle(self, *args, **options):
        report = verify_chain()
        if report.ok:
            self.stdout.write(f"OK: {report.checked} events verified")
            return
        self.stderr.write(
            f"FAILED at event {report.first_bad}: {report.problem} ({report.checked} events verified before it)"
        )
        sys.exit(1)
