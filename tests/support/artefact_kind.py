"""A test-only artefact kind, "test_policy": a named, versioned policy whose text lives in the core's
blob store, four-eyes approved through the same service and queue as script versions. Its table
exists in the test database only (made by :func:`policy_table`)."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection, models
from django.db.models import Max

from rmm.artefacts import registry
from rmm.artefacts.models import ArtefactVersion
from rmm.artefacts.registry import ArtefactKind
from rmm.core import blobs

FOLDER = "test-policies"


class PolicyVersion(ArtefactVersion):
    """One immutable version of a policy: the fields every artefact model has, and its blob's hash."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    version = models.PositiveIntegerField()
    content_sha256 = models.CharField(max_length=64)
    high_risk = models.BooleanField(default=False)

    class Meta:
        app_label = "artefacts"
        db_table = "test_only_policy"

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


def policy_text(policy: PolicyVersion) -> str:
    name = blobs.content_name(FOLDER, policy.content_sha256, "txt")
    return blobs.read(name, policy.content_sha256, action="test_policy.read").decode()


POLICY = ArtefactKind(
    name="test_policy",
    model=PolicyVersion,
    label="test policy",
    action_prefix="test_policy",
    content=policy_text,
    describe=str,
    privileged=lambda policy: policy.high_risk,
    privileged_permission="artefacts.approve_high_risk_policy",
    details=lambda policy: f"sha256 {policy.content_sha256}",
)


def write_policy(author, name: str, text: str, *, high_risk: bool = False) -> PolicyVersion:
    """The next version of ``name``, its text stored by its hash first."""
    digest, _uri = blobs.store(text.encode(), folder=FOLDER, extension="txt", action="test_policy.store")
    latest = PolicyVersion.objects.filter(name=name).aggregate(v=Max("version"))["v"] or 0
    return PolicyVersion.objects.create(
        name=name, version=latest + 1, content_sha256=digest, high_risk=high_risk, author=author
    )


@pytest.fixture(scope="session")
def policy_table(django_db_setup, django_db_blocker):
    """The test-only table, once per test database."""
    with django_db_blocker.unblock():
        if PolicyVersion._meta.db_table not in connection.introspection.table_names():
            with connection.schema_editor() as editor:
                editor.create_model(PolicyVersion)


@pytest.fixture
def policy_kind(policy_table):
    """The kind registered the way an app's AppConfig.ready does it, for this test only."""
    registry.register(POLICY)
    yield POLICY
    registry._KINDS.pop(POLICY.name)
