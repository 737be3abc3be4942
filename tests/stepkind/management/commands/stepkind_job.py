"""Test-only: create a step job, or show one with its steps and evidence (the end-to-end test's
doors to the test-only kind, which has no API of its own)."""

import json
from pathlib import Path

from django.core.management.base import BaseCommand

from evidence.models import RmmEvidence
from rmm.access import services as access_services
from rmm.authority.models import PsaTask
from rmm.core import blobs
from rmm.engine import services as engine
from rmm.inventory.models import Asset
from tests.stepkind.jobs import create_step_job
from tests.stepkind.models import StepJob


class Command(BaseCommand):
    help = (
        "Create a test-only step job (create HOSTNAME TASK STEPS [FAIL_STEP] [--artefact FILE"
        " --artefact-step N --marker PATH]) or show one (show JOB)."
    )

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["create", "show"])
        parser.add_argument("args", nargs="+")
        parser.add_argument("--artefact", help="a file to put in the blob store, named by one step")
        parser.add_argument("--artefact-step", type=int, default=0)
        parser.add_argument("--marker", default="", help="a path the artefact's step touches when it runs")
        parser.add_argument("--found", type=int, default=None, help="Step 0 reports this many found.")
        parser.add_argument("--reboot-step", type=int, default=None, help="This step reboots once it succeeded.")

    def handle(self, *args, action, **options):
        if action == "create":
            artefact = None
            if options["artefact"]:
                data = Path(options["artefact"]).read_bytes()
                digest, _ = blobs.store(data, folder="stepkind", extension="bin", action="stepkind.artefact")
                artefact = {
                    "step": options["artefact_step"],
                    "name": "payload.bin",
                    "sha256": digest,
                    "size": len(data),
                    "blob": blobs.content_name("stepkind", digest, "bin"),
                    "marker": options["marker"],
                }
            hostname, task_id, steps, *fail = args
            user = access_services.ensure_user_with_role("stepkind-psa", "psa")
            asset = Asset.objects.select_related("site").get(hostname=hostname)
            access_services.grant_site(user, asset.site)  # the engine creates jobs only in the caller's sites
            job = create_step_job(
                user,
                asset=asset,
                task=PsaTask.objects.select_related("case").get(pk=task_id),
                steps=int(steps),
                fail_step=int(fail[0]) if fail else None,
                artefact=artefact,
                found=options["found"],
                reboot_step=options["reboot_step"],
            )
            self.stdout.write(str(job.pk))
            return
        job = StepJob.objects.get(pk=args[0])
        shown = {
            "status": job.status,
            "status_reason": job.status_reason,
            "agent_rebooting": job.asset.agent.rebooting_until is not None,
            "instructions": [
                {
                    "id": str(inst.pk),
                    "step": inst.step,
                    "status": inst.status,
                    "reason": inst.reason,
                    "structured": inst.structured,
                }
                for inst in engine.job_instructions(job).order_by("step")
            ],
            "evidence": [
                str(pk)
                for pk in RmmEvidence.objects.filter(related_id=job.pk)
                .order_by("history_sequence")
                .values_list("pk", flat=True)
            ],
        }
        self.stdout.write(json.dumps(shown))
