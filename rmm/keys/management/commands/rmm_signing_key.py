from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from rmm.core.errors import ServiceError
from rmm.keys import keyset, services, store

ACTOR = "cli:rmm_signing_key"


class Command(BaseCommand):
    help = (
        "The server's signing keys, per purpose (instructions: agents verify them; evidence: history anchors "
        "and export bundles). list | show | rotate | retire. See docs/security.md, Keys and credentials."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="every key: purpose, order, id, state, whether its private key is here")
        listing.add_argument("--purpose", choices=keyset.PURPOSES)
        show = sub.add_parser("show", help="one key in full: public key, fingerprint, its rotation statement")
        show.add_argument("--purpose", choices=keyset.PURPOSES, required=True)
        show.add_argument("--key-id", help="default: the key that signs now")
        rotate = sub.add_parser("rotate", help="a new key, announced by a statement the current key signs")
        rotate.add_argument("--purpose", choices=keyset.PURPOSES, required=True)
        rotate.add_argument("--key-file", type=Path, help="import this PEM (PKCS8) Ed25519 key instead of generating")
        rotate.add_argument("--not-before", help="ISO 8601: sign nothing with it before then (default: now)")
        retire = sub.add_parser("retire", help="stop signing with a key; agents stop trusting it")
        retire.add_argument("--purpose", choices=keyset.PURPOSES, required=True)
        retire.add_argument("--key-id", required=True)
        retire.add_argument("--force", action="store_true", help="even if agents or queued work still rely on it")

    def handle(self, *args, **options):
        try:
            getattr(self, f"do_{options['action']}")(options)
        except ServiceError as exc:
            raise CommandError(exc.detail) from None

    def do_list(self, options):
        keys = keyset.current()
        agents = services.agents_by_key()
        for purpose in [options["purpose"]] if options["purpose"] else keyset.PURPOSES:
            try:
                signing = keys.signer(purpose).key_id
            except keyset.KeyUnavailable:
                signing = None
            for key in keys.keys(purpose):
                state = "retired" if key.retired_at else ("signing" if key.key_id == signing else "active")
                line = (
                    f"{purpose:<12} #{key.sequence:<3} {key.key_id}  {state:<8} "
                    f"private key {'here' if keys.holds(key) else 'NOT here'}  "
                    f"not before {key.not_before.isoformat()}"
                )
                if purpose == keyset.INSTRUCTIONS:
                    held = agents.get(key.key_id, 0) + (agents.get("", 0) if key.sequence == 1 else 0)
                    line += f"  agents at this key: {held}"
                self.stdout.write(line)
            if not keys.keys(purpose):
                self.stdout.write(f"{purpose:<12} no key (rotate --purpose {purpose} registers its first)")
            for problem in keys.problems_in(purpose):
                self.stdout.write(f"PROBLEM      {problem}")

    def do_show(self, options):
        keys = keyset.current()
        purpose = options["purpose"]
        key = keys.get(purpose, options["key_id"]) if options["key_id"] else keys.signer(purpose)
        if key is None:
            raise CommandError(f"No {purpose} key {options['key_id']}.")
        self.stdout.write(f"purpose      {key.purpose} (#{key.sequence})")
        self.stdout.write(f"key id       {key.key_id}")
        self.stdout.write(f"fingerprint  {key.fingerprint}")
        self.stdout.write(f"public key   {key.public_key_b64}")
        self.stdout.write(f"created      {key.created_at.isoformat()}")
        self.stdout.write(f"not before   {key.not_before.isoformat()}")
        self.stdout.write(f"retired      {key.retired_at.isoformat() if key.retired_at else '-'}")
        self.stdout.write(f"private key  {'held by this process' if keys.holds(key) else 'not held here'}")
        if key.rotation:
            self.stdout.write(f"introduced   by key {key.rotation['key_id']}: {key.rotation['payload']}")

    def do_rotate(self, options):
        private = None
        if options["key_file"]:
            try:
                private = store.parse_keys(store.read_private_file(options["key_file"]), str(options["key_file"]))[0]
            except store.KeyFileProblem as exc:
                raise CommandError(str(exc)) from None
        not_before = None
        if options["not_before"]:
            not_before = parse_datetime(options["not_before"])
            if not_before is None or not_before.tzinfo is None:
                raise CommandError("--not-before needs an ISO 8601 date and time with its offset (…Z or …+00:00).")
        row = services.rotate(options["purpose"], ACTOR, private=private, not_before=not_before)
        key = keyset.current().get(row.purpose, row.key_id)
        self.stdout.write(f"New {row.purpose} key #{row.sequence}: key id {row.key_id}, {key.fingerprint}")
        if store.from_environment():
            self.stdout.write(
                "Keys come from RMM_SIGNING_KEYS: every server process signs with it once the secret holds it."
            )

    def do_retire(self, options):
        row, removed = services.retire(options["purpose"], options["key_id"], ACTOR, force=options["force"])
        self.stdout.write(f"Retired {row.purpose} key {row.key_id}.")
        for path in removed:
            self.stdout.write(f"Deleted its private key {path}.")
        if store.from_environment():
            self.stdout.write("Remove its private key from RMM_SIGNING_KEYS (and from any other copy).")
