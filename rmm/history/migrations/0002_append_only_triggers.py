"""The database itself refuses UPDATE and DELETE on the execution history."""

from django.db import migrations

TABLE = "history_historyevent"

SQLITE = [
    f"""CREATE TRIGGER history_no_update BEFORE UPDATE ON {TABLE}
        BEGIN SELECT RAISE(ABORT, 'execution history is append-only'); END;""",
    f"""CREATE TRIGGER history_no_delete BEFORE DELETE ON {TABLE}
        BEGIN SELECT RAISE(ABORT, 'execution history is append-only'); END;""",
]
SQLITE_REVERSE = ["DROP TRIGGER IF EXISTS history_no_update;", "DROP TRIGGER IF EXISTS history_no_delete;"]

POSTGRES = [
    """CREATE OR REPLACE FUNCTION history_refuse_change() RETURNS trigger AS $$
       BEGIN RAISE EXCEPTION 'execution history is append-only'; END; $$ LANGUAGE plpgsql;""",
    f"""CREATE TRIGGER history_no_update_delete BEFORE UPDATE OR DELETE ON {TABLE}
        FOR EACH ROW EXECUTE FUNCTION history_refuse_change();""",
    f"""CREATE TRIGGER history_no_truncate BEFORE TRUNCATE ON {TABLE}
        FOR EACH STATEMENT EXECUTE FUNCTION history_refuse_change();""",
]
POSTGRES_REVERSE = [
    f"DROP TRIGGER IF EXISTS history_no_truncate ON {TABLE};",
    f"DROP TRIGGER IF EXISTS history_no_update_delete ON {TABLE};",
    "DROP FUNCTION IF EXISTS history_refuse_change();",
]


def _run(statements_by_vendor):
    def run(apps, schema_editor):
        for sql in statements_by_vendor.get(schema_editor.connection.vendor, []):
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [("history", "0001_initial")]

    operations = [
        migrations.RunPython(
            _run({"sqlite": SQLITE, "postgresql": POSTGRES}),
            _run({"sqlite": SQLITE_REVERSE, "postgresql": POSTGRES_REVERSE}),
        )
    ]
