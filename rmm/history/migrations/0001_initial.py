from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.CreateModel(
            name="HistoryEvent",
            fields=[
                ("sequence", models.BigIntegerField(primary_key=True, serialize=False)),
                ("created_at", models.DateTimeField()),
                ("actor", models.CharField(max_length=200)),
                ("action", models.CharField(db_index=True, max_length=100)),
                ("subject_type", models.CharField(blank=True, max_length=100)),
                ("subject_id", models.CharField(blank=True, db_index=True, max_length=100)),
                ("site_id", models.UUIDField(blank=True, db_index=True, null=True)),
                ("payload", models.JSONField(default=dict)),
                ("prev_hash", models.CharField(max_length=64)),
                ("hash", models.CharField(max_length=64, unique=True)),
            ],
            options={"ordering": ["sequence"]},
        ),
    ]
