"""A throwaway PostgreSQL database and a clean environment for the in-process profiles."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PG = "postgres://postgres@127.0.0.1:5432"


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """Point Django at a new database on 127.0.0.1, dropped on the way out.

    The caller's environment does not leak in (as bench/cluster.py): no RMM_* settings, no Redis
    (wake-ups and console events stay in process), keys in a folder of their own.
    """
    import psycopg

    dbname = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="rmm-bench-") as var:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        use_database(dbname, var)
        try:
            yield dbname
        finally:
            with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')  # FORCE: Django's connection too


def use_database(dbname: str, var: str) -> None:
    """Point this process's Django at ``dbname`` on 127.0.0.1 with keys under ``var``, and nothing
    of the caller's environment (no RMM_* settings, no Redis)."""
    for name in [name for name in os.environ if name.startswith(("RMM_", "PYTEST")) or name == "REDIS_URL"]:
        del os.environ[name]
    os.environ.update(
        DJANGO_SETTINGS_MODULE="rmm.settings",
        DATABASE_URL=f"{PG}/{dbname}",
        RMM_VAR_DIR=var,
        RMM_ALLOWED_HOSTS="testserver",
        RMM_API_RATE="1000000/min",
    )
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
