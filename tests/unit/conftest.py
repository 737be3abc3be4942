"""Fixtures shared by the unit tests."""

import pytest

from rmm.history import services as history
from rmm.history.models import HistoryEvent


@pytest.fixture
def events(db):
    """A few events of our own on top of whatever the database already holds."""
    for n in range(5):
        history.append("user:tester", "test.event", payload={"n": n})
    return list(HistoryEvent.objects.order_by("sequence"))
