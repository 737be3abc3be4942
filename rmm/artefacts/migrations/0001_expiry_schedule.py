"""Pending versions of every artefact kind expire in one scheduled task, which takes over from the
script-version task that scripting's 0002 scheduled (its function is gone)."""

from django.db import migrations

NAME = "rmm.artefacts.expire_pending"
SCRIPTING = {"name": "rmm.scripting.expire_pending_versions", "func": "scripting.tasks.expire_pending_versions"}


def create_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.filter(name=SCRIPTING["name"]).delete()
    Schedule.objects.update_or_create(
        name=NAME,
        defaults={"func": "rmm.artefacts.tasks.expire_pending", "schedule_type": "I", "minutes": 5, "repeats": -1},
    )


def remove_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.filter(name=NAME).delete()
    Schedule.objects.update_or_create(
        name=SCRIPTING["name"],
        defaults={"func": SCRIPTING["func"], "schedule_type": "I", "minutes": 5, "repeats": -1},
    )


class Migration(migrations.Migration):
    dependencies = [
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
        # Only to run after the schedule it replaces was made, on a new database too.
        ("scripting", "0002_privileged"),
    ]

    operations = [migrations.RunPython(create_schedule, remove_schedule)]
