"""Inserting many new rows at once: COPY on PostgreSQL, ``bulk_create`` elsewhere."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from django.db import connection, models


def insert_many(objs: Sequence[models.Model]) -> None:
    """Insert unsaved instances of one model whose primary keys are already set.

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
    getters = [_column_value(field) for field in model._meta.concrete_fields]
    copy_rows(model, ([get(obj) for get in getters] for obj in objs))


def copy_rows(model: type[models.Model], rows: Iterable[Sequence[Any]]) -> None:
    """COPY rows of values, in the order of the model's concrete fields, into its table
    (PostgreSQL only): for callers that build the values without instances."""
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in model._meta.concrete_fields)
    sql = f"COPY {quote(model._meta.db_table)} ({columns}) FROM STDIN"
    with connection.cursor() as cursor, cursor.copy(sql) as copy:
        for row in rows:
            copy.write_row(row)


# Field types whose Python value psycopg adapts as is: for them the ORM's preparation (most of a
# COPY's time, 610,000 calls in a 10,000-asset fan-out) changes nothing.
_AS_IS = {
    "BigIntegerField",
    "BooleanField",
    "CharField",
    "DateTimeField",
    "FloatField",
    "ForeignKey",
    "IntegerField",
    "OneToOneField",
    "PositiveIntegerField",
    "PositiveSmallIntegerField",
    "SmallIntegerField",
    "TextField",
    "UUIDField",
}


def _column_value(field: models.Field) -> Callable[[models.Model], Any]:
    """How one column's value is read from an instance for COPY."""
    if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
        return lambda obj: field.pre_save(obj, True)
    if field.get_internal_type() in _AS_IS:
        return operator.attrgetter(field.attname)
    return lambda obj: field.get_db_prep_save(field.pre_save(obj, True), connection)
