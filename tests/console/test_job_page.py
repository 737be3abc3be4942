"""A job's page leads on: to its asset, to the PSA case that authorised it, and, once it has
finished, to its evidence records."""

from django.test import Client

from evidence.models import RmmEvidence
from tests.console.test_status_words import failed_job  # noqa: F401 (a fixture)


def test_a_finished_job_links_its_asset_case_and_evidence(failed_job, django_assert_max_num_queries):  # noqa: F811
    browser = Client()
    browser.force_login(failed_job["tech"].user)
    with django_assert_max_num_queries(20):
        page = browser.get(f"/console/jobs/script/{failed_job['id']}/").content.decode()
    record = RmmEvidence.objects.get()
    job = record.related_id

    assert str(job) == failed_job["id"]
    assert f'href="/console/assets/{record.asset_id}/">web-01</a>' in page
    assert f'href="/console/authority/cases/{record.psa_case_id}/"' in page
    assert f'href="/api/v1/evidence/{record.pk}/content/"' in page
    assert record.hash in page
    assert browser.get(f"/api/v1/evidence/{record.pk}/content/").status_code == 200
