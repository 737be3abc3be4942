"""Session policies become versions of an artefact kind (docs/sessions.md, Policy): the one mutable
row a site had becomes its version 1, approved, authored by whoever last set it (the history's
``remote_session.policy`` event names them), so no site's rules change on upgrade."""

import uuid

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.utils import timezone

KEPT = "kept from the site's policy before policies were versioned"


def _author(apps, site_id):
    """Who last set the site's policy, by the history; else the first superuser, else the first user."""
    user_model = apps.get_model(*settings.AUTH_USER_MODEL.split("."))
    event = (
        apps.get_model("history", "HistoryEvent")
        .objects.filter(action="remote_session.policy", site_id=site_id, actor__startswith="user:")
        .order_by("-sequence")
        .first()
    )
    if event is not None:
        user = user_model.objects.filter(username=event.actor.removeprefix("user:")).first()
        if user is not None:
            return user
    user = user_model.objects.order_by("-is_superuser", "pk").first()
    if user is None:
        raise RuntimeError("A site has a session policy but there is no user to author its version.")
    return user


def version_existing(apps, schema_editor):
    old = apps.get_model("remote_sessions", "UnversionedSessionPolicy")
    new = apps.get_model("remote_sessions", "SessionPolicy")
    now = timezone.now()
    for row in old.objects.all():
        new.objects.create(
            site_id=row.site_id,
            version=1,
            allowed=row.allowed,
            approval_required=row.approval_required,
            max_duration_seconds=row.max_duration_seconds,
            idle_timeout_seconds=row.idle_timeout_seconds,
            author=_author(apps, row.site_id),
            approval_status="approved",
            decided_at=now,
            decision_reason=KEPT,
        )


def unversion(apps, schema_editor):
    """Back: each site's effective version becomes its one row again."""
    old = apps.get_model("remote_sessions", "UnversionedSessionPolicy")
    new = apps.get_model("remote_sessions", "SessionPolicy")
    for row in new.objects.filter(approval_status="approved").order_by("site_id", "-version"):
        old.objects.get_or_create(
            site_id=row.site_id,
            defaults={
                "allowed": row.allowed,
                "approval_required": row.approval_required,
                "max_duration_seconds": row.max_duration_seconds,
                "idle_timeout_seconds": row.idle_timeout_seconds,
            },
        )


class Migration(migrations.Migration):
    dependencies = [
        ("remote_sessions", "0004_provider_fields"),
        ("history", "0003_anchor_schedule"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RenameModel("SessionPolicy", "UnversionedSessionPolicy"),
        migrations.AlterModelTable("UnversionedSessionPolicy", "remote_session_policies_unversioned"),
        migrations.AlterField(
            model_name="unversionedsessionpolicy",
            name="site",
            field=models.OneToOneField(
                on_delete=django.db.models.deletion.CASCADE, related_name="+", to="inventory.site"
            ),
        ),
        migrations.CreateModel(
            name="SessionPolicy",
            fields=[
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "approval_status",
                    models.CharField(
                        choices=[("pending", "Pending"), ("approved", "Approved"), ("rejected", "Rejected")],
                        db_index=True,
                        default="pending",
                        max_length=20,
                    ),
                ),
                ("decided_at", models.DateTimeField(blank=True, null=True)),
                ("decision_reason", models.TextField(blank=True)),
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("version", models.PositiveIntegerField()),
                ("allowed", models.BooleanField(default=True)),
                ("approval_required", models.BooleanField(default=False)),
                ("max_duration_seconds", models.PositiveIntegerField(default=14400)),
                ("idle_timeout_seconds", models.PositiveIntegerField(default=900)),
                (
                    "author",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="+", to=settings.AUTH_USER_MODEL
                    ),
                ),
                (
                    "decided_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "site",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="session_policies",
                        to="inventory.site",
                    ),
                ),
            ],
            options={
                "verbose_name_plural": "session policies",
                "db_table": "remote_session_policies",
                "ordering": ["site", "-version"],
                "indexes": [
                    models.Index(fields=["site", "approval_status", "version"], name="remote_session_policy_idx")
                ],
                "constraints": [
                    models.UniqueConstraint(fields=("site", "version"), name="remote_session_policy_version_once")
                ],
            },
        ),
        migrations.RunPython(version_existing, unversion),
        migrations.DeleteModel("UnversionedSessionPolicy"),
    ]
