"""Test settings: the product's, plus the test-only "step" job kind (tests/stepkind/)."""

from rmm.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.stepkind"]  # noqa: F405

# Webhook receivers in tests listen on 127.0.0.1 (tests/outbox/test_webhooks.py refuses it without this).
RMM_WEBHOOK_ALLOW_PRIVATE = True
