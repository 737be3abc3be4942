"""The fault-injection suite: real processes killed and stopped (docs/operations.md).

It runs in CI's PostgreSQL leg and needs its own PostgreSQL server (it stops and starts it), so
it is skipped when ``DATABASE_URL`` is not PostgreSQL. One stack serves every drill; each drill
leaves it running again and ends with :func:`~tests.faults.stack.assert_nothing_lost_twice_or_stuck`.
A new drill is a test function taking ``stack`` (``world`` for an enrolled agent with authority,
``timer`` to measure its recovery).
"""

import os
import tempfile
from pathlib import Path

import pytest

from rmm.deploy.stores import PrivatePostgres, PrivateRedis
from tests.e2e.flows import make_world
from tests.faults.stack import Clock, Stack

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    postgres = os.environ.get("DATABASE_URL", "").startswith("postgres")
    for item in items:
        if Path(str(item.fspath)).parent != HERE:
            continue
        item.add_marker(pytest.mark.faults)
        if not postgres:
            item.add_marker(
                pytest.mark.skip(
                    reason="fault drills run in the PostgreSQL leg (DATABASE_URL=postgres://…): "
                    "they stop and start a PostgreSQL server of their own"
                )
            )


@pytest.fixture(scope="session")
def pg():
    server = PrivatePostgres(Path(tempfile.mkdtemp(prefix="rmm-faults-pg-")))  # reachable by postgres
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def stack(tmp_path_factory, pg, redis_server):
    running = Stack(tmp_path_factory.mktemp("faults"), pg, redis_server).start()
    yield running
    running.stop()


@pytest.fixture
def world(stack):
    """A site with an enrolled agent (not running: a drill starts it), PSA authority and staff tokens."""
    return make_world(stack)


@pytest.fixture
def timer(record_property):
    """``timer("what failed")``: a :class:`~tests.faults.stack.Clock` started now."""
    return lambda drill: Clock(drill, record_property)
