"""The index the console's asset picker searches with (rmm/console/asset_picker.py): a hostname
prefix in any case, as Django's ``hostname__istartswith`` asks each database for it.

PostgreSQL compares ``UPPER(hostname::text) LIKE UPPER('pre%')``: an index on that expression in
the "C" collation serves the prefix as a range, and the picker's order (the same expression, in
"C") from the same index, so a page of matches is read in order whatever the fleet's size.
SQLite's ``LIKE`` is case-insensitive: a ``NOCASE`` index on the hostname serves both."""

from django.db import migrations

INDEX = "asset_hostname_prefix"
CREATE = {
    "postgresql": f'CREATE INDEX IF NOT EXISTS {INDEX} ON inventory_asset ((UPPER(hostname::text) COLLATE "C"))',
    "sqlite": f"CREATE INDEX IF NOT EXISTS {INDEX} ON inventory_asset (hostname COLLATE NOCASE)",
}


def create(apps, schema_editor):
    if schema_editor.connection.vendor in CREATE:
        schema_editor.execute(CREATE[schema_editor.connection.vendor])


def drop(apps, schema_editor):
    schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    dependencies = [("inventory", "0011_asset_retired")]

    operations = [migrations.RunPython(create, drop)]
