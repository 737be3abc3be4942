"""Inserting many new rows at once: COPY on PostgreSQL, ``bulk_create`` elsewhere."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import connection, models


def insert_many(objs: Sequence[models.Model]) -> None:
    """Insert unsaved instances of one model whose primary keys are already set (UUIDs).

    On PostgreSQL this is a COPY: ``bulk_create`` compiles every value through the ORM and
    psycopg quotes each in Python, which cost most of a 10,000-asset fan-out
    (docs/performance.md). No signals are sent, as with ``bulk_create``.
    """
    if not objs:
        return
    model = type(objs[0])
    if connection.vendor != "postgresql":
        model.objects.bulk_create(objs, batch_size=2000)
        return
    fields = model._meta.concrete_fields
    quote = connection.ops.quote_name
    sql = f"COPY {quote(model._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) FROM STDIN"
    with connection.cursor() as cursor, cursor.copy(sql) as copy:
        for obj in objs:
            copy.write_row([field.get_db_prep_save(field.pre_save(obj, True), connection) for field in fields])
