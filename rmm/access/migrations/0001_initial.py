"""API tokens move here from the authority app: the model only, its table and rows stay as they
are (``authority_apitoken``), and its content type is renamed so that permissions follow it."""

import uuid

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def rename_content_type(apps, schema_editor, old: str, new: str) -> None:
    ContentType = apps.get_model("contenttypes", "ContentType")
    if not ContentType.objects.filter(app_label=new, model="apitoken").exists():
        ContentType.objects.filter(app_label=old, model="apitoken").update(app_label=new)


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("authority", "0003_written_by"),
        ("contenttypes", "0002_remove_content_type_name"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="ApiToken",
                    fields=[
                        ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ("name", models.CharField(blank=True, max_length=200)),
                        ("prefix", models.CharField(max_length=16, unique=True)),
                        ("token_hash", models.CharField(max_length=64)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("expires_at", models.DateTimeField(blank=True, null=True)),
                        ("revoked_at", models.DateTimeField(blank=True, null=True)),
                        ("privileged", models.BooleanField(default=False)),
                        ("issued_by", models.CharField(blank=True, max_length=200)),
                        ("revoked_by", models.CharField(blank=True, max_length=200)),
                        ("last_used_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "user",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="api_tokens",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={"verbose_name": "API token", "db_table": "authority_apitoken"},
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(
            lambda apps, schema_editor: rename_content_type(apps, schema_editor, "authority", "access"),
            lambda apps, schema_editor: rename_content_type(apps, schema_editor, "access", "authority"),
        ),
    ]
