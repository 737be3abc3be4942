"""The fleet benchmark's server settings: the product's, with the bench's hooks (bench/hooks.py).

The product's settings and URLs know nothing of the benchmark; bench/cluster.py starts its
servers with ``DJANGO_SETTINGS_MODULE=bench.settings``. Never use these outside a benchmark: they
add unauthenticated endpoints under ``/api/v1/agent/bench/``.
"""

from rmm.settings import *  # noqa: F403
from rmm.settings import MIDDLEWARE

MIDDLEWARE = ["bench.hooks.QueryCountMiddleware", *MIDDLEWARE]
RMM_AGENT_TIER_MIDDLEWARE = ["bench.hooks.QueryCountMiddleware"]
ROOT_URLCONF = "bench.urls"
