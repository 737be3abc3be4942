"""Fixtures shared by the app test folders (tests/<app>/), registered by tests/conftest.py."""

import importlib

import pytest
from django.db import connection

from rmm.history import services as history
from rmm.history.models import HistoryEvent
from rmm.keys import keyset


@pytest.fixture
def events(db):
    """A few events of our own on top of whatever the database already holds (the server's first
    signing keys among it, made before the events, as on a server that has signed anything)."""
    keyset.reload()
    for n in range(5):
        history.append("user:tester", "test.event", payload={"n": n})
    return list(HistoryEvent.objects.order_by("sequence"))


APPEND_ONLY = ("rmm.history.migrations.0002_append_only_triggers", "evidence.migrations.0004_append_only_triggers")


def _append_only_sql(forward: bool) -> list[str]:
    """The statements of the migrations that make history and evidence append-only (or undo them)."""
    suffix = "" if forward else "_REVERSE"
    prefix = {"sqlite": "SQLITE", "postgresql": "POSTGRES"}[connection.vendor]
    return [sql for name in APPEND_ONLY for sql in getattr(importlib.import_module(name), prefix + suffix)]


@pytest.fixture
def flushable_append_only(request, django_db_blocker):
    """For tests with real transactions (``transaction=True``), which end by emptying every table:
    the append-only triggers of history and evidence refuse that, so they are lifted for the flush
    and put back once the test is torn down (:func:`pytest_runtest_teardown`)."""
    yield
    request.node.append_only_lifted = django_db_blocker  # first: put back even if lifting fails midway
    with connection.cursor() as cursor:
        for sql in _append_only_sql(forward=False):
            cursor.execute(sql)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield  # every fixture is torn down, the flush included
    blocker = getattr(item, "append_only_lifted", None)
    if blocker is not None and nextitem is not None:  # after the last test the test database is gone
        with blocker.unblock(), connection.cursor() as cursor:
            for sql in _append_only_sql(forward=True):
                cursor.execute(sql)


class EvidenceStore:
    """The evidence store's folder, which a test can make refuse every read and write for real: a
    regular file takes the place of a folder on its path (as when a volume is not mounted and a
    file sits where its folder should be), so the operating system answers ENOTDIR."""

    def __init__(self, root):
        self.root, self.away = root, root.with_name(root.name + ".away")
        self.root.mkdir(parents=True, exist_ok=True)

    def refuse(self) -> None:
        self.root.rename(self.away)
        self.root.write_text("not a folder")

    def restore(self) -> None:
        self.root.unlink()
        self.away.rename(self.root)


@pytest.fixture
def evidence_store(settings, tmp_path):
    store = EvidenceStore(tmp_path / "store")
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {**settings.STORAGES["default"], "OPTIONS": {"location": str(store.root / "evidence")}},
    }
    yield store
    if store.away.exists():
        store.restore()


@pytest.fixture
def psa_webhook(settings):
    """A real PSA receiver on 127.0.0.1 that the outbox tells everything (its endpoint hears every
    event type), with deliveries sent as soon as their transaction commits."""
    from tests.e2e.psa import PsaReceiver

    psa = PsaReceiver()
    settings.RMM_PSA_WEBHOOK_URL = psa.url
    settings.RMM_PSA_WEBHOOK_SECRET = psa.secret
    settings.RMM_TASKS_SYNC = True
    yield psa
    psa.close()
