from django.core.management.base import BaseCommand

from evidence import retention


class Command(BaseCommand):
    help = "Apply the evidence retention policy now: a recorded run that legal holds stop."

    def handle(self, *args, **options):
        run = retention.run_retention("cli:retention_run")
        policy = ", ".join(f"{t}={d}d" for t, d in sorted(run.policy.items())) or "keep everything"
        self.stdout.write(
            f"Retention run {run.pk} ({policy}): {run.deleted_count} deleted, {run.held_count} kept under legal hold"
        )
