from django.db import migrations, models

REASON = "superseded: a site has one active scan schedule (migration patching 0006)"


def stop_all_but_the_newest(apps, schema_editor):
    """Two requests at once could make two active schedules for a site before the constraint: the
    newest stays active, the others stop with the reason (the constraint could not be added else)."""
    schedules = apps.get_model("patching", "PatchScanSchedule")
    seen = set()
    for pk, site_id in schedules.objects.filter(status="active").order_by("-created_at").values_list("pk", "site_id"):
        if site_id in seen:
            schedules.objects.filter(pk=pk).update(status="stopped", status_reason=REASON)
        seen.add(site_id)


class Migration(migrations.Migration):
    dependencies = [("patching", "0005_vulnerability_findings")]

    operations = [
        migrations.RunPython(stop_all_but_the_newest, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="patchscanschedule",
            constraint=models.UniqueConstraint(
                condition=models.Q(status="active"),
                fields=("site",),
                name="patch_scan_schedules_one_active_per_site",
            ),
        ),
    ]
