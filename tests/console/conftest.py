"""The console tests' shared world (a technician of one site, its assets, authority and script)."""

from tests.console.test_lists import world  # noqa: F401 (a fixture, for the console's other test modules)
