"""The database refuses to change evidence: no UPDATE at all, and a DELETE only of a record whose
retention tombstone (EvidenceDisposal) already exists. Tombstones themselves never change."""

from django.db import migrations

EVIDENCE = "evidence_rmmevidence"
DISPOSAL = "evidence_evidencedisposal"
MESSAGE = "evidence is append-only: a record leaves only through a recorded retention run"
TOMBSTONE = "evidence tombstones are append-only"

SQLITE = [
    f"""CREATE TRIGGER evidence_no_update BEFORE UPDATE ON {EVIDENCE}
        BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END;""",
    f"""CREATE TRIGGER evidence_delete_needs_tombstone BEFORE DELETE ON {EVIDENCE}
        WHEN NOT EXISTS (SELECT 1 FROM {DISPOSAL} WHERE evidence_id = OLD.id)
        BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END;""",
    f"""CREATE TRIGGER evidence_tombstone_no_update BEFORE UPDATE ON {DISPOSAL}
        BEGIN SELECT RAISE(ABORT, '{TOMBSTONE}'); END;""",
    f"""CREATE TRIGGER evidence_tombstone_no_delete BEFORE DELETE ON {DISPOSAL}
        BEGIN SELECT RAISE(ABORT, '{TOMBSTONE}'); END;""",
]
SQLITE_REVERSE = [
    "DROP TRIGGER IF EXISTS evidence_no_update;",
    "DROP TRIGGER IF EXISTS evidence_delete_needs_tombstone;",
    "DROP TRIGGER IF EXISTS evidence_tombstone_no_update;",
    "DROP TRIGGER IF EXISTS evidence_tombstone_no_delete;",
]

POSTGRES = [
    f"""CREATE OR REPLACE FUNCTION evidence_refuse_change() RETURNS trigger AS $$
       BEGIN
         IF TG_OP = 'DELETE' THEN
           IF EXISTS (SELECT 1 FROM {DISPOSAL} WHERE evidence_id = OLD.id) THEN
             RETURN OLD;
           END IF;
         END IF;
         RAISE EXCEPTION '{MESSAGE}';
       END; $$ LANGUAGE plpgsql;""",
    f"""CREATE TRIGGER evidence_no_update_delete BEFORE UPDATE OR DELETE ON {EVIDENCE}
        FOR EACH ROW EXECUTE FUNCTION evidence_refuse_change();""",
    f"""CREATE TRIGGER evidence_no_truncate BEFORE TRUNCATE ON {EVIDENCE}
        FOR EACH STATEMENT EXECUTE FUNCTION evidence_refuse_change();""",
    f"""CREATE OR REPLACE FUNCTION evidence_tombstone_refuse_change() RETURNS trigger AS $$
       BEGIN RAISE EXCEPTION '{TOMBSTONE}'; END; $$ LANGUAGE plpgsql;""",
    f"""CREATE TRIGGER evidence_tombstone_no_update_delete BEFORE UPDATE OR DELETE ON {DISPOSAL}
        FOR EACH ROW EXECUTE FUNCTION evidence_tombstone_refuse_change();""",
    f"""CREATE TRIGGER evidence_tombstone_no_truncate BEFORE TRUNCATE ON {DISPOSAL}
        FOR EACH STATEMENT EXECUTE FUNCTION evidence_tombstone_refuse_change();""",
]
POSTGRES_REVERSE = [
    f"DROP TRIGGER IF EXISTS evidence_tombstone_no_truncate ON {DISPOSAL};",
    f"DROP TRIGGER IF EXISTS evidence_tombstone_no_update_delete ON {DISPOSAL};",
    "DROP FUNCTION IF EXISTS evidence_tombstone_refuse_change();",
    f"DROP TRIGGER IF EXISTS evidence_no_truncate ON {EVIDENCE};",
    f"DROP TRIGGER IF EXISTS evidence_no_update_delete ON {EVIDENCE};",
    "DROP FUNCTION IF EXISTS evidence_refuse_change();",
]


def _run(statements_by_vendor):
    def run(apps, schema_editor):
        for sql in statements_by_vendor.get(schema_editor.connection.vendor, []):
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [("evidence", "0003_backfill_provenance")]

    operations = [
        migrations.RunPython(
            _run({"sqlite": SQLITE, "postgresql": POSTGRES}),
            _run({"sqlite": SQLITE_REVERSE, "postgresql": POSTGRES_REVERSE}),
        )
    ]
