"""Outbound events from the shell: what is pending or dead, replaying, sending what is due."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from rmm.outbox import services
from rmm.outbox.models import Delivery, DeliveryStatus


class Command(BaseCommand):
    help = "List deliveries, replay one (same id, same body), send what is due now, or make a secret."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="deliveries, newest first")
        listing.add_argument("--status", choices=DeliveryStatus.values)
        listing.add_argument("--limit", type=int, default=50)
        replay = sub.add_parser("replay", help="send a dead or delivered delivery again")
        replay.add_argument("delivery_id")
        sub.add_parser("send-due", help="send every pending delivery whose time has come, now")
        sub.add_parser("new-secret", help="print a fresh Standard Webhooks secret (whsec_…)")

    def handle(self, *args, action, **options):
        if action == "list":
            rows = Delivery.objects.select_related("event", "endpoint")
            if options["status"]:
                rows = rows.filter(status=options["status"])
            for d in rows[: options["limit"]]:
                self.stdout.write(
                    f"{d.pk}\t{d.status}\t{d.event.type}\t{d.event.message_id}\t{d.endpoint.name}\t"
                    f"attempts={d.attempts}\tlast={d.last_status_code or ''}\t{d.last_error[:80]}"
                )
        elif action == "replay":
            try:
                delivery = Delivery.objects.get(pk=options["delivery_id"])
            except (Delivery.DoesNotExist, ValidationError) as exc:
                raise CommandError(f"No delivery {options['delivery_id']}") from exc
            try:
                services.replay(delivery, "cli:rmm_outbox")
            except services.OutboxError as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(f"queued again: {delivery.pk}")
        elif action == "send-due":
            sent = [services.deliver(str(pk)) for pk in _due()]
            self.stdout.write(f"{len(sent)} sent: " + ", ".join(f"{s}" for s in sent))
        else:
            self.stdout.write(services.new_secret())


def _due():
    from django.utils import timezone

    return Delivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=timezone.now()).values_list(
        "pk", flat=True
    )
