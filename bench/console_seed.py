"""The console benchmark's fleet: sites, assets with agents, PSA authority, scripts, script jobs and
batches, written set-based (``INSERT … SELECT generate_series``) so that a million jobs take
minutes, not hours of ORM saves.

The people, sites and scripts go through the services (as an installation makes them); the bulk
rows are plain SQL with the seed's tables and fields. Everything is derived from the row number, so
two seeds of the same size hold the same shape of data:

- assets: spread evenly over the sites; 1 % retired; OS and architecture from short lists;
- agents: 97 % of the assets; versions from a short list; 85 % seen within the last minute, 12 %
  hours ago, 3 % never; 1 % revoked;
- jobs: over the last 90 days, requested by one of ``REQUESTERS``; 95 % alone, with statuses as a
  quiet fleet has them (mostly succeeded, a few percent failed, timed out, aborted, lost or
  rejected; the active ones created within the last hour), and 5 % in batches of ``BATCH_SIZE``
  (one site each, a canary ring then the rest, one job in 50 failed).
"""

from __future__ import annotations

import time
import uuid

BATCH_SIZE = 500
BATCH_SHARE = 0.05
REQUESTERS = ("bench-psa", "tech-1", "tech-2", "tech-3", "tech-4")
DAYS = 90
# A status from a number in 0..999: (below this, status), in order.
STATUS_SHARES = (
    (880, "succeeded"),
    (930, "failed"),
    (945, "timed_out"),
    (960, "aborted"),
    (970, "lost"),
    (975, "rejected"),
    (985, "awaiting_approval"),
    (993, "queued"),
    (1000, "running"),
)
ACTIVE = ("awaiting_approval", "queued", "running")


def _status_case(number: str) -> str:
    whens = " ".join(f"WHEN {number} < {limit} THEN '{status}'" for limit, status in STATUS_SHARES)
    return f"CASE {whens} END"


def people_and_scripts(sites: int) -> dict:
    """The sites, the users (a technician of every site, one of the first site, the requesters, an
    approver), one approved PSA case and task per site and three approved scripts: through the
    services. Returns the names the measurements sign in as."""
    from rmm.access import services as access_services
    from rmm.authority import services as authority
    from rmm.inventory import services as inventory
    from scripting import services as scripting

    site_rows = []
    for n in range(sites):
        site = inventory.get_or_create_site(f"site-{n:03d}", actor="cli:bench")
        inventory.set_site_policy("cli:bench", site, allow_self_authorized_jobs=True)
        site_rows.append(site)
    psa = access_services.ensure_user_with_role(REQUESTERS[0], "psa")
    access_services.grant_site(psa, None)
    for name in REQUESTERS[1:]:
        access_services.grant_site(access_services.ensure_user_with_role(name, "technician"), None)
    everywhere = access_services.ensure_user_with_role("bench-tech", "technician")
    access_services.grant_site(everywhere, None)
    one_site = access_services.ensure_user_with_role("bench-site-tech", "technician")
    access_services.grant_site(one_site, site_rows[0])
    approver = access_services.ensure_user_with_role("bench-approver", "approver")
    for site in site_rows:
        case = authority.upsert_case(
            psa, _uuid(site.name, "case"), title=f"Maintenance {site.name}", status="approved", site_name=site.name
        )
        authority.upsert_task(psa, _uuid(site.name, "task"), case_id=case.pk, title="Run fix", status="approved")
    author = access_services.ensure_user_with_role(REQUESTERS[1], "technician")
    for name in ("disk-cleanup", "restart-spooler", "collect-logs"):
        script = scripting.create_script(author, name=name, language="sh", content=f"echo {name}\n")
        scripting.approve_script(script, approver)
    return {"everywhere": everywhere.username, "one_site": one_site.username}


def _uuid(*parts: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, "rmm-console-bench:" + ":".join(parts))


def bulk(cursor, assets: int, jobs: int) -> dict[str, float]:
    """Assets, agents, batches and jobs in set-based SQL; the seconds each took."""
    seconds = {}

    def timed(name: str, sql: str, params: dict | None = None) -> None:
        started = time.perf_counter()
        cursor.execute(sql, params or {})
        seconds[name] = round(time.perf_counter() - started, 1)

    params = {"assets": assets, "jobs": jobs, "days": DAYS}
    timed("assets", _ASSETS, params)
    timed("agents", _AGENTS, params)
    cursor.execute(_NUMBERED)
    batched = int(jobs * BATCH_SHARE) // BATCH_SIZE
    timed("batches", _BATCHES, {**params, "batches": batched, "size": BATCH_SIZE, "requesters": list(REQUESTERS)})
    timed(
        "jobs",
        _JOBS.format(status=_status_case("mod(g * 7919, 1000)"), active=_active("mod(g * 7919, 1000)")),
        {**params, "jobs": jobs - batched * BATCH_SIZE, "requesters": list(REQUESTERS)},
    )
    timed("batch jobs", _BATCH_JOBS, {"size": BATCH_SIZE})
    timed("analyze", "ANALYZE")
    return seconds


def _active(number: str) -> str:
    """True for the numbers whose status is active (the last shares)."""
    first = [status for _, status in STATUS_SHARES].index(ACTIVE[0])
    return f"{number} >= {STATUS_SHARES[first - 1][0]}"


_ASSETS = """
INSERT INTO inventory_asset (id, site_id, hostname, os, architecture, created_at,
                             retired_at, retired_by, retired_reason)
SELECT gen_random_uuid(), s.id,
       (ARRAY['ws', 'srv', 'lt', 'kiosk'])[1 + mod(n, 4)] || '-' || lpad(n::text, 6, '0'),
       (ARRAY['Linux', 'Windows', 'Windows', 'macOS'])[1 + mod(n / 4, 4)],
       (ARRAY['x86_64', 'x86_64', 'arm64'])[1 + mod(n, 3)],
       now() - interval '400 days' + n * interval '1 second',
       CASE WHEN mod(n, 100) = 99 THEN now() - interval '3 days' END,
       CASE WHEN mod(n, 100) = 99 THEN 'bench' ELSE '' END, ''
FROM generate_series(0, %(assets)s - 1) AS n
JOIN (SELECT id, row_number() OVER (ORDER BY name) - 1 AS k, count(*) OVER () AS total FROM inventory_site) AS s
  ON s.k = mod(n, s.total)
"""

_AGENTS = """
INSERT INTO inventory_agent (id, asset_id, secret_hash, pending_secret_hash, version, enrolled_at, last_seen_at,
                             revoked_at, revoked_reason, signing_key_id, protocol, capabilities)
SELECT gen_random_uuid(), a.id, md5(a.id::text) || md5(a.hostname), '',
       (ARRAY['2.3.1', '2.3.0', '2.2.4'])[1 + mod(h, 3)], a.created_at,
       CASE WHEN mod(h, 100) < 85 THEN now() - mod(h, 60) * interval '1 second'
            WHEN mod(h, 100) < 97 THEN now() - mod(h, 48) * interval '1 hour' - interval '1 hour' END,
       CASE WHEN mod(h, 100) = 50 THEN now() - interval '10 days' END, '', '', 2, ''
FROM (SELECT id, hostname, created_at, abs(hashtext(id::text)::bigint) AS h FROM inventory_asset) AS a
WHERE mod(a.h, 100) <> 98
"""

# The active assets numbered within their site (the batches' targets) and over the fleet.
_NUMBERED = """
CREATE TEMP TABLE bench_asset AS
SELECT id, site_id, row_number() OVER (ORDER BY hostname) - 1 AS n,
       row_number() OVER (PARTITION BY site_id ORDER BY hostname) - 1 AS in_site
FROM inventory_asset WHERE retired_at IS NULL;
CREATE INDEX ON bench_asset (n);
CREATE INDEX ON bench_asset (site_id, in_site);
CREATE TEMP TABLE bench_site AS
SELECT s.id, row_number() OVER (ORDER BY s.name) - 1 AS k, t.id AS task_id
FROM inventory_site s JOIN authority_psacase c ON c.site_id = s.id JOIN authority_psatask t ON t.case_id = c.id;
CREATE TEMP TABLE bench_user AS
SELECT id, array_position(%(requesters)s::text[], username) - 1 AS k FROM auth_user
WHERE username = ANY(%(requesters)s::text[]);
CREATE TEMP TABLE bench_script AS
SELECT id, row_number() OVER (ORDER BY name) - 1 AS k FROM scripting_script;
ANALYZE bench_asset; ANALYZE bench_site; ANALYZE bench_user; ANALYZE bench_script;
""".replace("%(requesters)s", "ARRAY['" + "','".join(REQUESTERS) + "']")

_BATCHES = """
INSERT INTO engine_batch (id, job_kind, site_id, requested_by_id, created_at, status, halt_reason, plan, timed,
                          ring_sizes, released_rings, ring_released_at, results, failed)
SELECT gen_random_uuid(), 'script', s.id, u.id, now() - mod(b * 7877, %(days)s * 86400) * interval '1 second',
       'completed', '', jsonb_build_object('canary', 50, 'ring_size', %(size)s - 50), false,
       jsonb_build_array(50, %(size)s - 50), 2, NULL, %(size)s, %(size)s / 50
FROM generate_series(0::bigint, %(batches)s - 1) AS b
JOIN bench_site s ON s.k = mod(b, (SELECT count(*) FROM bench_site))
JOIN bench_user u ON u.k = mod(b, (SELECT count(*) FROM bench_user))
"""

_JOBS = """
INSERT INTO scripting_scriptjob (id, status, site_id, requested_by_id, created_at, decided_at, status_reason,
                                 batch_id, ring, script_id, asset_id, psa_task_id, started_at, completed_at)
SELECT gen_random_uuid(), j.status, a.site_id, u.id, j.created, NULL, '', NULL, NULL, sc.id, a.id, s.task_id,
       CASE WHEN j.status NOT IN ('awaiting_approval', 'queued', 'rejected') THEN j.created + interval '2 seconds' END,
       CASE WHEN j.status NOT IN ('awaiting_approval', 'queued', 'running') THEN j.created + interval '30 seconds' END
FROM (SELECT g, {status} AS status,
             CASE WHEN {active} THEN now() - mod(g, 3600) * interval '1 second'
                  ELSE now() - mod(g * 104729, %(days)s * 86400) * interval '1 second' END AS created
      FROM generate_series(0::bigint, %(jobs)s - 1) AS g) AS j
JOIN bench_asset a ON a.n = mod(j.g * 7919, (SELECT count(*) FROM bench_asset))
JOIN bench_site s ON s.id = a.site_id
JOIN bench_user u ON u.k = mod(j.g, (SELECT count(*) FROM bench_user))
JOIN bench_script sc ON sc.k = mod(j.g, (SELECT count(*) FROM bench_script))
"""

_BATCH_JOBS = """
INSERT INTO scripting_scriptjob (id, status, site_id, requested_by_id, created_at, decided_at, status_reason,
                                 batch_id, ring, script_id, asset_id, psa_task_id, started_at, completed_at)
SELECT gen_random_uuid(), CASE WHEN mod(m, 50) = 7 THEN 'failed' ELSE 'succeeded' END,
       b.site_id, b.requested_by_id, b.created_at, NULL, '', b.id,
       CASE WHEN m < 50 THEN 0 ELSE 1 END, sc.id, a.id, s.task_id,
       b.created_at + interval '2 seconds', b.created_at + interval '30 seconds'
FROM engine_batch b
CROSS JOIN generate_series(0, %(size)s - 1) AS m
JOIN bench_site s ON s.id = b.site_id
JOIN bench_asset a ON a.site_id = b.site_id AND a.in_site = m
JOIN bench_script sc ON sc.k = 0
"""
