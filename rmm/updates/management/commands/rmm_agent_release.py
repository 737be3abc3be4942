"""``manage.py rmm_agent_release publish ARTEFACT --version V``: sign and publish an agent release."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from rmm.core.errors import ServiceError
from rmm.updates import releases


class Command(BaseCommand):
    help = "Sign an agent release artefact (a .tar.gz of rmm_agent) with the release key and publish it."

    def add_arguments(self, parser):
        commands = parser.add_subparsers(dest="command", required=True)
        publish = commands.add_parser("publish")
        publish.add_argument("artefact")
        publish.add_argument("--version", required=True)

    def handle(self, *args, **options):
        source = Path(options["artefact"])
        if not source.is_file():
            raise CommandError(f"{source} is not a file")
        try:
            record = releases.publish(source, options["version"])
        except ServiceError as exc:
            raise CommandError(str(exc)) from None
        key = record["manifest"]["key_id"]
        self.stdout.write(
            f"published {record['version']} sha256 {record['sha256']} ({record['size']} bytes), key {key}"
        )
