"""Helpers shared by the tests that try to break the history: verify it, tamper with it."""

from __future__ import annotations

import io

from django.core.management import call_command
from django.db import connection

TABLE = "history_historyevent"


def verify():
    """Run ``manage.py verify_history``; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("verify_history", stdout=out, stderr=err)
    except SystemExit as exc:
        return exc.code, out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def drop_triggers():
    """What an attacker with table rights would do first (rolled back with the test's transaction)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"DROP TRIGGER history_no_update_delete ON {TABLE}")
            cursor.execute(f"DROP TRIGGER history_no_truncate ON {TABLE}")
        else:
            cursor.execute("DROP TRIGGER history_no_update")
            cursor.execute("DROP TRIGGER history_no_delete")


def drop_evidence_triggers():
    """The evidence table's: a database owner deleting evidence records (rolled back with the test)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("DROP TRIGGER evidence_no_update_delete ON evidence_rmmevidence")
        else:
            cursor.execute("DROP TRIGGER evidence_delete_needs_tombstone")
