"""The compliance counts (``configuration_compliance_counts``): per profile revision and asset, how
many readings comply, drifted or could not be made, recounted from the observations in the
transaction that wrote them. The fleet summary (:func:`profiles.compliance.summary`) sums them."""

from __future__ import annotations

from django.db import connection

from profiles.models import ComplianceCount, ConfigurationObservation, ObservationState


def recount(asset_id=None, profile_revision_id=None) -> None:
    """Count the readings again, from the index on (profile_revision, asset, state) alone, into
    their count rows, in one statement: of one asset and revision (each intake of readings), or of
    all (a bulk load). Rows are kept by their unique (revision, asset): an upsert, so two intakes
    for one asset each leave the count of what is committed with their own readings."""
    where, params = ["1 = 1"], []
    for column, field, value in (
        ("asset_id", ConfigurationObservation._meta.get_field("asset"), asset_id),
        ("profile_revision_id", ConfigurationObservation._meta.get_field("profile_revision"), profile_revision_id),
    ):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(field.target_field.get_db_prep_value(value, connection))
    state = ObservationState
    counted = ", ".join(
        f"SUM(CASE WHEN state = '{value}' THEN 1 ELSE 0 END)"
        for value in (state.COMPLIANT, state.NON_COMPLIANT, state.ERROR)
    )
    # only table names and constants are interpolated; every value is a parameter
    query = f"""
        INSERT INTO {ComplianceCount._meta.db_table}
            (profile_revision_id, asset_id, observed, compliant, non_compliant, errors)
        SELECT profile_revision_id, asset_id, COUNT(*), {counted}
        FROM {ConfigurationObservation._meta.db_table}
        WHERE {" AND ".join(where)}
        GROUP BY profile_revision_id, asset_id
        ON CONFLICT (profile_revision_id, asset_id) DO UPDATE SET
            observed = excluded.observed, compliant = excluded.compliant,
            non_compliant = excluded.non_compliant, errors = excluded.errors
    """  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(query, params)
