"""The engine's services, one module per arrow of the data flow (docs/architecture.md):

- creating (:mod:`.creating`): a job request becomes job rows, under every law that guards them;
- deciding (:mod:`.deciding`): the caller's role, four eyes, a job's approval, rejection, expiry;
- issuing (:mod:`.issuing`): a queued job's instructions signed and stored, at once or in waves;
- leasing (:mod:`.leasing`): the agent's heartbeat, its lease, what it must kill;
- results (:mod:`.results`): an agent's result taken in, the job's next step or end, its evidence;
- stopping (:mod:`.stopping`): work ended without a report (kill switch, revocation, withdrawn
  authority) and the minute's sweep.

Beside them: :mod:`.transitions` (the one path that writes a status), :mod:`.batches`,
:mod:`.steps`, :mod:`.kill_switches`, :mod:`.throttles`, :mod:`.cases`. The engine knows job
kinds only through :mod:`rmm.engine.registry`.

Callers outside the engine use the names below as ``engine.<name>``; the engine's modules
import each other directly, and a test that replaces a function patches the module it lives in.
"""

from rmm.engine.services.creating import create_job as create_job
from rmm.engine.services.creating import create_jobs as create_jobs
from rmm.engine.services.deciding import approve_job as approve_job
from rmm.engine.services.deciding import check_four_eyes as check_four_eyes
from rmm.engine.services.deciding import expire_approvals as expire_approvals
from rmm.engine.services.deciding import reject_job as reject_job
from rmm.engine.services.deciding import require_role as require_role
from rmm.engine.services.issuing import CLOCK_SLACK as CLOCK_SLACK
from rmm.engine.services.issuing import issue_instructions as issue_instructions
from rmm.engine.services.issuing import issue_later_waves as issue_later_waves
from rmm.engine.services.issuing import job_instructions as job_instructions
from rmm.engine.services.leasing import came_back as came_back
from rmm.engine.services.leasing import check_in as check_in
from rmm.engine.services.leasing import envelope as envelope
from rmm.engine.services.leasing import lease as lease
from rmm.engine.services.leasing import look_for_work as look_for_work
from rmm.engine.services.leasing import to_abort as to_abort
from rmm.engine.services.results import ingest_result as ingest_result
from rmm.engine.services.results import ingest_results as ingest_results
from rmm.engine.services.stopping import abort_agent_work as abort_agent_work
from rmm.engine.services.stopping import end_instruction as end_instruction
from rmm.engine.services.stopping import register_withdrawal_hook as register_withdrawal_hook
from rmm.engine.services.stopping import stop_instructions as stop_instructions
from rmm.engine.services.stopping import sweep as sweep
from rmm.engine.services.stopping import withdraw_authority as withdraw_authority
from rmm.engine.services.transitions import transition_job as transition_job
