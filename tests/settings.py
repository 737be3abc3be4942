"""Test settings: the product's, plus the test-only "step" job kind (tests/stepkind/)."""

from rmm.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.stepkind"]  # noqa: F405
