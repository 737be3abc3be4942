import sys

from django.core.management.base import BaseCommand

from evidence.anchors import verify_history


class Command(BaseCommand):
    help = (
        "Walk the execution history's hash chain and check it against every signed anchor in the evidence "
        "store; exit 1 naming the first event that does not verify, or the anchor that is wrong."
    )

    def handle(self, *args, **options):
        report = verify_history()
        chain = report.chain
        for problem in report.problems:
            self.stderr.write(f"FAILED: {problem}")
        if not chain.ok:
            self.stderr.write(
                f"FAILED at event {chain.first_bad}: {chain.problem} ({chain.checked} events verified before it)"
            )
        if not report.ok:
            sys.exit(1)
        if report.anchors:
            newest = report.anchors[-1]
            anchors = f"{len(report.anchors)} anchors checked, the newest at event {newest.sequence} ({newest.time})"
        else:
            anchors = "no anchors yet"
        self.stdout.write(f"OK: {chain.checked} events verified; {anchors}")
        for anchor in report.unrecorded:
            self.stdout.write(
                f"NOTE: anchor {anchor.name} has no record yet: the run that wrote it stopped before "
                "recording it; the next anchor run records it"
            )
