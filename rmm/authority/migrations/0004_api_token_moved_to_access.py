"""API tokens belong to the access app now (rmm/access/migrations/0001_initial.py): forget the model
here without touching its table."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("authority", "0003_written_by"),
        ("access", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[migrations.DeleteModel(name="ApiToken")], database_operations=[]),
    ]
