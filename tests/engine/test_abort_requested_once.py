"""Two stoppers racing over the same running instructions (a person's stop and a kill switch's
scan, or the heartbeat under a switch) record one ``instruction.abort_requested`` each: the
instructions still unmarked are read under their row locks, so the second stopper finds them
marked and records nothing."""

import json
import threading

import pytest
from django.db import connection

from rmm.engine import services as engine
from rmm.engine.models import Instruction
from rmm.history.models import HistoryEvent
from scripting import services as scripting
from tests.engine.test_check_then_queue import just_before, pg_only
from tests.helpers import approved_authority, approved_script, heartbeat, make_agent


@pg_only
@pytest.mark.django_db(transaction=True)
def test_a_stop_racing_another_records_each_abort_request_once(caller, site, flushable_append_only):
    psa, tech, boss = caller("psa", "psa").user, caller("tech", "technician").user, caller("boss", "approver").user
    agents = [make_agent(site, f"race-{n}") for n in range(3)]
    task = approved_authority(site, psa)
    script = approved_script(tech, boss, name="race")
    scripting.create_script_jobs(
        psa, script_id=script.pk, psa_task_id=task.pk, asset_ids=[agent.asset_id for agent, _ in agents]
    )
    for _, auth in agents:
        [leased] = heartbeat(auth)["instructions"]
        assert json.loads(leased["payload"])["instruction_id"]
    running = sorted(str(pk) for pk in Instruction.objects.filter(status="running").values_list("pk", flat=True))
    assert len(running) == 3

    threads = []

    def meanwhile():
        # Another worker stops the same work and commits, unless it has to wait for this one.
        def run():
            try:
                engine.stop_instructions(Instruction.objects.all(), "system", "second stopper")
            finally:
                connection.close()

        thread = threading.Thread(target=run)
        thread.start()
        threads.append(thread)
        thread.join(timeout=3)

    with just_before('UPDATE "engine_instruction" SET "abort_reason"', meanwhile):
        engine.stop_instructions(Instruction.objects.all(), "system", "first stopper")
    for thread in threads:
        thread.join(30)
    requests = HistoryEvent.objects.filter(action="instruction.abort_requested")
    assert sorted(requests.values_list("subject_id", flat=True)) == running
    reasons = {i.abort_reason for i in Instruction.objects.all()}
    assert len(reasons) == 1 and requests.first().payload["reason"] in reasons
