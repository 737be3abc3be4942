"""The head of the history is signed and stored as a history_anchor evidence record every hour
(django-q2); `manage.py anchor_history` does it on demand."""

from django.db import migrations

NAME = "rmm.history.anchor"


def create(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.update_or_create(
        name=NAME,
        defaults={"func": "rmm.history.tasks.anchor_history", "schedule_type": "I", "minutes": 60, "repeats": -1},
    )


def remove(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("history", "0002_append_only_triggers"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]
    operations = [migrations.RunPython(create, remove)]
