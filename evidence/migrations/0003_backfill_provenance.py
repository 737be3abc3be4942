"""Fill the new provenance fields of evidence recorded before them: the site (from the asset),
the history event that recorded it, and the PSA case and task (from the script job)."""

from django.db import migrations


def backfill(apps, schema_editor):
    Evidence = apps.get_model("evidence", "RmmEvidence")
    HistoryEvent = apps.get_model("history", "HistoryEvent")
    ScriptJob = apps.get_model("scripting", "ScriptJob")
    for row in Evidence.objects.select_related("asset").iterator(chunk_size=500):
        changed = {}
        if row.site_id is None and row.asset_id is not None:
            changed["site_id"] = row.asset.site_id
        if row.history_sequence is None:
            seq = (
                HistoryEvent.objects.filter(
                    action="evidence.recorded", subject_type="evidence.rmmevidence", subject_id=str(row.pk)
                )
                .values_list("sequence", flat=True)
                .first()
            )
            if seq is not None:
                changed["history_sequence"] = seq
        if row.psa_task_id is None and row.related_entity == "script_job":
            job = ScriptJob.objects.select_related("psa_task").filter(pk=row.related_id).first()
            if job is not None:
                changed["psa_task_id"] = job.psa_task_id
                changed["psa_case_id"] = job.psa_task.case_id
        if changed:
            Evidence.objects.filter(pk=row.pk).update(**changed)


class Migration(migrations.Migration):
    dependencies = [
        ("evidence", "0002_provenance_exports_retention"),
        ("history", "0002_append_only_triggers"),
        ("scripting", "0001_initial"),
    ]
    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
