"""What a person reads in an export: one summary per item (what ran where, on whose authority,
approved by whom, with what result), as CSV, HTML and PDF rows.

Summaries come from the evidence document itself, the thing the hash covers, not from the
database. Every job kind's document has the same top-level parts (``job``, ``authority``,
``asset``, ``result``; a script result adds ``script``); a part a kind lacks is left blank.
"""

from __future__ import annotations

from html import escape

from rmm.engine.states import status_word

CSV_COLUMNS = [
    "id",
    "captured_at",
    "evidence_type",
    "site",
    "asset_hostname",
    "asset_id",
    "what",
    "psa_case_id",
    "psa_task_id",
    "authority",
    "requested_by",
    "approved_by",
    "result",
    "started_at",
    "completed_at",
    "hash",
    "history_sequence",
    "blob",
]


def _part(document, key) -> dict:
    value = document.get(key) if isinstance(document, dict) else None
    return value if isinstance(value, dict) else {}


def summarize(evidence_type: str, document) -> dict:
    """The readable facts of one evidence document."""
    job, script = _part(document, "job"), _part(document, "script")
    authority, asset, result = _part(document, "authority"), _part(document, "asset"), _part(document, "result")
    if script.get("name"):
        what = f"{job.get('kind') or 'script'}: {script['name']} v{script.get('version')}"
        if script.get("privileged"):
            what += " (privileged)"
    else:
        what = job.get("kind") or evidence_type
    approvals = []
    if job.get("approved_by"):
        approvals.append(f"job: {job['approved_by']}")
    if script.get("approved_by"):
        approvals.append(f"version: {script['approved_by']}")
    # The status word the console and the API show, never the agent's raw outcome ("completed"
    # with exit 3 "failed"); a document without the instruction's status uses its job's.
    status, raw = result.get("status") or job.get("status"), result.get("outcome")
    outcome = status_word(status, outcome=raw, exit_code=result.get("exit_code")) if status or raw else ""
    if result.get("exit_code") is not None:
        outcome += f" (exit {result['exit_code']})"
    if result.get("reason"):
        outcome += f": {result['reason']}"
    case = authority.get("psa_case_title") or authority.get("psa_case_id") or ""
    task = authority.get("psa_task_title") or authority.get("psa_task_id") or ""
    return {
        "what": what,
        "where": f"{asset.get('hostname', '')} ({asset['site']})" if asset.get("site") else asset.get("hostname", ""),
        "authority": f"case {case} / task {task}" if case or task else "",
        "requested_by": job.get("requested_by") or "",
        "approved_by": "; ".join(approvals),
        "result": outcome,
        "started_at": job.get("started_at") or "",
        "completed_at": job.get("completed_at") or "",
    }


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """A text cell a spreadsheet would run as a formula gets a leading apostrophe (OWASP "CSV
    injection"): hostnames come from agents, titles from the PSA. items.jsonl keeps the exact text."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_row(item: dict) -> list:
    return [csv_cell(value) for value in _csv_values(item)]


def _csv_values(item: dict) -> list:
    s, asset, auth = item["summary"], item.get("asset") or {}, item["authority"]
    return [
        item["id"],
        item["captured_at"],
        item["evidence_type"],
        item.get("site") or "",
        asset.get("hostname", ""),
        asset.get("id", ""),
        s["what"],
        auth.get("psa_case_id") or "",
        auth.get("psa_task_id") or "",
        s["authority"],
        s["requested_by"],
        s["approved_by"],
        s["result"],
        s["started_at"],
        s["completed_at"],
        item["hash"],
        item["history_sequence"],
        item["blob"],
    ]


def html_head(title: str, facts: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts)
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>"
        "body{font:13px/1.4 sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
        "th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
        "code{font-size:11px}.problem{color:#a00;font-weight:bold}</style></head><body>"
        f"<h1>{escape(title)}</h1><table>{rows}</table>"
        "<h2>Evidence</h2><table><thead><tr><th>Captured</th><th>Type</th><th>What ran</th><th>Where</th>"
        "<th>On whose authority</th><th>Requested by</th><th>Approved by</th><th>Result</th>"
        "<th>Hash</th><th>History event</th></tr></thead><tbody>\n"
    )


def html_row(item: dict) -> str:
    s = item["summary"]
    problem = f"<br><span class='problem'>{escape(item['problem'])}</span>" if item.get("problem") else ""
    cells = [
        escape(item["captured_at"]),
        escape(item["evidence_type"]),
        escape(s["what"]),
        escape(s["where"]),
        escape(s["authority"]),
        escape(s["requested_by"]),
        escape(s["approved_by"]),
        escape(s["result"]) + problem,
        f"<code title='{escape(item['hash'])}'>{escape(item['hash'][:16])}…</code>",
        str(item["history_sequence"]),
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>\n"


def html_tail(sections: list[tuple[str, list[str]]]) -> str:
    parts = ["</tbody></table>"]
    for heading, lines in sections:
        parts.append(f"<h2>{escape(heading)}</h2><ul>")
        parts.extend(f"<li>{escape(line)}</li>" for line in lines)
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "".join(parts)


def pdf_lines(item: dict) -> list[str]:
    s = item["summary"]
    lines = [
        f"{item['captured_at'][:19]}  {item['evidence_type']:<18} {s['what']}  @ {s['where']}  -> {s['result']}",
        f"    authority: {s['authority'] or '-'}; requested by {s['requested_by'] or '-'}; "
        f"approved by {s['approved_by'] or '-'}",
        f"    sha256 {item['hash']}  history event #{item['history_sequence']}  item {item['id']}",
    ]
    if item.get("problem"):
        lines.append(f"    PROBLEM: {item['problem']}")
    return lines
