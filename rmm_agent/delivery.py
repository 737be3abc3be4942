"""Result delivery: the spool-and-resend rules of docs/agent.md "Spool and resend".

A result is spooled before anything else happens to it, and leaves the spool only once the
server has it or has said it never will, so a crash, an outage or a throttled server never
loses one.
"""

from __future__ import annotations

import logging
import time

from .client import Client, TransportError, Unauthorized
from .logs import Reachability, one_line
from .results import truncated_for_delivery
from .state import StateDir

log = logging.getLogger("rmm_agent")


class Delivery:
    """One agent's spooled results and their delivery to its server."""

    def __init__(self, state: StateDir, client: Client, reach: Reachability) -> None:
        self.state = state
        self.client = client
        self.reach = reach
        self.blocked_until = 0.0  # monotonic: the server asked for no results before then

    def spool(self, result: dict) -> None:
        """Persist a result before anything else happens to it."""
        self.state.spool_result(result)
        instruction_id, outcome = result["instruction_id"], result["outcome"]
        if outcome == "completed" and result["exit_code"] == 0:
            log.info("ran %s exit=0", instruction_id)
        elif outcome == "completed":
            log.warning("ran %s exit=%s", instruction_id, result["exit_code"])
        else:
            log.warning("%s %s: %s", outcome, instruction_id, one_line(result["reason"] or ""))

    def flush_spool(self, timeout: float | None = None) -> bool:
        """Send spooled results; True when nothing is left waiting.

        Results leave the spool only once the server has them (200, 201) or has said it never
        will (404: not this agent's; 409: it holds another result). A result it refuses (400,
        413, any other 4xx) is replaced in the spool by a smaller one and sent again
        (:func:`truncated_for_delivery`). Raises :class:`Unauthorized` on 401.
        """
        if time.monotonic() < self.blocked_until:
            return not self.state.spooled_results()
        left = False
        for result in self.state.spooled_results():
            delivered = self._deliver(result, timeout)
            if delivered is None:
                return False
            left = left or not delivered
        return not left

    def _deliver(self, result: dict, timeout: float | None) -> bool | None:
        """Send one spooled result, smaller each time the server refuses it. True: it left the
        spool; False: it stays; None: stop this pass (unreachable, throttled, server error)."""
        instruction_id = result["instruction_id"]
        while True:
            try:
                answer = self.client.post_result(result, timeout=timeout)
            except TransportError as exc:
                self.reach.failed(str(exc))
                return None
            self.reach.answered()
            status = answer.status
            if status in (200, 201, 404, 409):
                if status >= 400:
                    log.error("server refused result %s (HTTP %s): %s", instruction_id, status, one_line(answer.detail))
                elif isinstance(answer.body, dict) and answer.body.get("status") == "accepted_late":
                    log.warning("result %s delivered late: %s", instruction_id, one_line(answer.detail))
                self.state.discard_spooled(instruction_id)
                return True
            if status == 401:
                raise Unauthorized(answer.detail)
            if status in (429, 503):  # slow down, or the server cannot store it now
                self.blocked_until = time.monotonic() + answer.retry_after()
                if status == 503:
                    log.warning("result %s kept in spool: %s (HTTP 503)", instruction_id, one_line(answer.detail))
                return None
            if status >= 500:
                log.warning("result %s not accepted (HTTP %s), kept in spool", instruction_id, status)
                return None
            smaller = truncated_for_delivery(result) if 400 <= status < 500 else None
            if smaller is None:
                log.error(
                    "result %s not accepted (HTTP %s): %s; kept in spool",
                    instruction_id,
                    status,
                    one_line(answer.detail),
                )
                return False
            log.error(
                "server refused result %s (HTTP %s): %s; resending it truncated",
                instruction_id,
                status,
                one_line(answer.detail),
            )
            self.state.spool_result(smaller)  # replaces it: a crash now resends the smaller one
            result = smaller
