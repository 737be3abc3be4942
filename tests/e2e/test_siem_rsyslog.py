"""The SIEM feed's Done-when (issue 19): Debian's rsyslog, started by the test on 127.0.0.1 (imtcp,
its own configuration, pid file and output in a temporary folder), receives a job's history events
as RFC 5424 records with octet-counted framing, in chain order, also across a restart of rsyslog
during which events were appended."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from rmm.history.models import HistoryEvent
from rmm.siem import services as siem
from tests.siem.world import job_world
from tests.support.debian import require

pytestmark = pytest.mark.slow
RSYSLOGD = "/usr/sbin/rsyslogd"

# Each record as rsyslog parsed it (RFC 5424 fields), one per line; the message is the JSON record.
CONFIG = """\
global(workDirectory="{dir}" maxMessageSize="64k")
module(load="imtcp")
template(name="fields" type="string"
  string="%protocol-version%|%timereported:::date-rfc3339%|%hostname%|%app-name%|%msgid%|%structured-data%|%msg%\\n")
ruleset(name="siem") {{
  action(type="omfile" file="{dir}/siem.log" template="fields")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="siem")
"""


class Rsyslog:
    def __init__(self, folder: Path):
        self.folder = folder
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.conf = folder / "rsyslog.conf"
        self.conf.write_text(CONFIG.format(dir=folder, port=self.port))
        self.pidfile = folder / "rsyslogd.pid"
        self.output = folder / "siem.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - a fixed executable and our own file
            [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "rsyslogd.err", "ab"),  # noqa: SIM115 - the child keeps it
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.folder / "rsyslogd.err").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("rsyslogd did not listen")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        self.process = None

    def records(self) -> list[dict]:
        found = []
        if self.output.exists():
            for line in self.output.read_text().splitlines():
                version, stamp, host, app, msgid, structured, msg = line.split("|", 6)
                found.append(
                    {
                        "version": version,
                        "timestamp": stamp,
                        "hostname": host,
                        "app": app,
                        "msgid": msgid,
                        "structured": structured,
                        "record": json.loads(msg),
                    }
                )
        return found

    def wait_for(self, count: int, timeout: float = 20) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.records()
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(f"rsyslog wrote {len(self.records())} records of {count}")


@pytest.fixture
def rsyslog(tmp_path):
    require(RSYSLOGD, "rsyslog")
    daemon = Rsyslog(tmp_path)
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture
def world(caller, site, settings):
    settings.RMM_SIEM_HOSTNAME = "rmm-e2e"
    settings.RMM_SIEM_RETRY_BASE_SECONDS = 0  # a failed batch is due again at once
    built = job_world(caller, site, settings)
    built.admin = caller("root", "admin")
    return built


def after(start: int) -> list[HistoryEvent]:
    return list(HistoryEvent.objects.filter(sequence__gt=start).order_by("sequence"))


def test_a_jobs_history_reaches_rsyslog_as_rfc_5424_records_in_order_across_a_restart(rsyslog, world):
    made = world.admin.post(
        "/api/v1/siem-destinations/", {"kind": "syslog", "address": f"127.0.0.1:{rsyslog.port}"}, format="json"
    )
    assert made.status_code == 201, made.content
    start = made.json()["position"]
    first = world.run_job()
    siem.follow(seconds=0)
    expected = after(start)
    assert any(event.subject_id == str(first.pk) for event in expected)
    records = rsyslog.wait_for(len(expected))
    for record, event in zip(records, expected, strict=True):
        assert record["version"] == "1" and record["hostname"] == "rmm-e2e" and record["app"] == "rmm"
        assert record["msgid"] == event.action
        assert record["structured"] == (
            f'[rmm@32473 sequence="{event.sequence}" hash="{event.hash}" prev_hash="{event.prev_hash}"]'
        )
        assert record["record"]["hash"] == event.hash
    first_records = len(records)

    # rsyslog goes away; a second job runs meanwhile; the feed fails and keeps its place.
    rsyslog.stop()
    second = world.run_job()
    siem.follow(seconds=0)
    assert siem.state(made_destination(made)) == "failing"
    assert len(rsyslog.records()) == first_records

    rsyslog.start()
    siem.follow(seconds=0)
    siem.follow(seconds=0)  # siem.resumed, appended once the first batch after the outage went
    expected = after(start)
    records = rsyslog.wait_for(len(expected))
    # Every event after the destination was made, the second job's too, once each, in chain order
    # (the feed's own siem.failing and siem.resumed among them).
    assert [r["record"]["sequence"] for r in records] == [event.sequence for event in expected]
    assert any(r["record"]["subject_id"] == str(second.pk) for r in records[first_records:])
    assert [r["record"]["prev_hash"] for r in records[1:]] == [r["record"]["hash"] for r in records[:-1]]
    assert siem.state(made_destination(made)) == "delivering"


def made_destination(made):
    from rmm.siem.models import Destination

    return Destination.objects.get(pk=made.json()["id"])
