"""The SIEM feed from the shell: each destination's position and lag, and shipping now."""

from django.core.management.base import BaseCommand

from rmm.siem import services
from rmm.siem.models import Destination


class Command(BaseCommand):
    help = "List SIEM destinations with their lag, ship what is due now, or follow the history."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="destinations, their position, lag and last error")
        sub.add_parser("ship", help="ship what every due destination has not acknowledged, now")
        follow = sub.add_parser("follow", help="ship, then keep looking for new events")
        follow.add_argument("--seconds", type=float, default=None)

    def handle(self, *args, action, **options):
        if action == "list":
            destinations = list(Destination.objects.prefetch_related("sites").order_by("name"))
            lags = services.lags(destinations)
            for d in destinations:
                lag = lags[d.pk]
                self.stdout.write(
                    f"{d.pk}\t{d.name}\t{d.kind}\t{d.address}\t{services.state(d)}\tposition={d.cursor}\t"
                    f"lag={lag.events} ({lag.seconds:.1f}s)\t{d.last_error[:80]}"
                )
        elif action == "ship":
            self.stdout.write(f"{services.ship_due()} events sent")
        else:
            self.stdout.write(f"{services.follow(options['seconds'])} events sent")
