"""History anchors are evidence (evidence/anchors.py): the hourly schedule that history/0003 made
calls the evidence app's task now."""

from django.db import migrations

NAME = "rmm.history.anchor"


def point(func: str):
    def run(apps, schema_editor):
        apps.get_model("django_q", "Schedule").objects.filter(name=NAME).update(func=func)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("evidence", "0008_registered_types"),
        ("history", "0003_anchor_schedule"),
    ]
    operations = [
        migrations.RunPython(point("evidence.tasks.anchor_history"), point("rmm.history.tasks.anchor_history")),
    ]
