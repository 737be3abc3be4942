"""Shared fixtures: API clients per role, enrolled agents, and a real server in a subprocess."""

from __future__ import annotations

import uuid

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from rmm.access import services as access_services
from rmm.core import dependencies
from rmm.inventory import services as inventory
from tests.helpers import approved_authority, make_agent  # noqa: F401

# Fixtures of the app test folders (tests/<app>/), shared by all of them: tests/support/fixtures.py,
# and the authorization matrix's world (``matrix``) for each tests/<app>/test_authorization.py.
pytest_plugins = ("tests.support.fixtures", "tests.support.authorization")


@pytest.fixture(autouse=True)
def _test_settings(settings, tmp_path):
    """Each test stores evidence and signing keys under its own folder; agents may call as fast as
    tests drive them."""
    settings.RMM_HEARTBEAT_MIN_SPACING_SECONDS = 0
    if not settings.REDIS_URL:
        # API rate-limit counters start afresh. Not with Redis: clear() empties the whole database,
        # and with it the other test worker's channel layer; counters there are per token and per
        # user, never reused.
        cache.clear()
    dependencies._down.clear()  # no dependency left down by an earlier test in this process
    # Cache keys of this test's own (the agent protocol's refusal counts), in a Redis database
    # shared with the other test worker.
    settings.RMM_INSTANCE_NAME = f"rmm-test-{uuid.uuid4().hex[:12]}"
    # Signing keys of its own (generated on first use), and no key from before rotation to import.
    settings.RMM_SIGNING_KEY_DIR = str(tmp_path / "signing-keys")
    settings.RMM_SIGNING_KEY_FILE = str(tmp_path / "no-legacy-key.pem")
    settings.RMM_RELEASE_DIR = str(tmp_path / "releases")
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {**settings.STORAGES["default"], "OPTIONS": {"location": str(tmp_path / "evidence")}},
    }


class Caller:
    """A user in a role with an API client that sends its bearer token."""

    def __init__(self, username: str, role: str, sites=None):
        self.user = access_services.ensure_user_with_role(username, role)
        if sites is None:
            access_services.grant_site(self.user, None)
        for site in sites or []:
            access_services.grant_site(self.user, site)
        self.token = access_services.issue_token(self.user)
        self.client = APIClient()
        self.client.credentials(HTTP_AUTHORIZATION=f"Bearer {self.token}")

    def __getattr__(self, name):
        return getattr(self.client, name)


@pytest.fixture
def caller(db):
    made = {}

    def make(username: str, role: str, sites=None) -> Caller:
        if username not in made:
            made[username] = Caller(username, role, sites)
        return made[username]

    return make


@pytest.fixture
def site(db):
    return inventory.get_or_create_site("alpha")


@pytest.fixture
def other_site(db):
    return inventory.get_or_create_site("beta")


# Tests that share one worker under xdist (`--dist loadgroup`, as `make test` runs): the end-to-end
# tests that install and purge packages through dpkg and apt (the machine has one dpkg lock), and
# the MeshCentral tests (one MeshCentral for the run instead of one per worker).
GROUPS = {
    "dpkg": {
        f"tests/e2e/{name}.py"
        for name in (
            "test_agent_deb",
            "test_deployment",
            "test_deployment_rollout",
            "test_patching",
            "test_patch_verification",
        )
    },
    "meshcentral": {"tests/sessions/test_meshcentral.py"},
}
# The longest test (about a third of the suite's time) is collected first, so that it starts at
# once on one worker while the other takes the rest, instead of starting late and ending last.
FIRST = "tests/e2e/test_api_fuzz.py"


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    """Every end-to-end test and fault drill is slow: `make test-fast` (-m "not slow") leaves them out.
    Marks go on before the other plugins look (pytest's -m, xdist's groups); the longest test moves
    first after pytest-django has ordered the rest."""
    for item in items:
        path = str(item.path).replace("\\", "/")
        if any(part in path for part in ("/tests/e2e/", "/tests/faults/")):
            item.add_marker(pytest.mark.slow)
        for group, files in GROUPS.items():
            if any(path.endswith(name) for name in files):
                item.add_marker(pytest.mark.xdist_group(group))
    yield
    items.sort(key=lambda item: not str(item.path).replace("\\", "/").endswith(FIRST))


def pytest_terminal_summary(terminalreporter):
    """The fault drills' recovery times (tests/faults), listed at the end of the run. Here, not in
    tests/faults/conftest.py: under xdist the controller loads only this conftest."""
    from tests.faults.stack import RECOVERY

    lines = [
        f"{name[len(RECOVERY) :]}: {value:.2f} s"
        for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
        if report.when == "call"
        for name, value in report.user_properties
        if name.startswith(RECOVERY)
    ]
    if lines:
        terminalreporter.write_sep("=", "fault drills: time to recover")
        for line in lines:
            terminalreporter.write_line(line)
