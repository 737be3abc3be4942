"""How the agent's log reads: one line per event whatever the server sent, and a lost server
logged once, not on every retry (heartbeats and result delivery share the one notice)."""

from __future__ import annotations

import logging

log = logging.getLogger("rmm_agent")


def one_line(text: object) -> str:
    """Keep log output one line per event, whatever the server sent."""
    return " ".join(str(text).split())


class Reachability:
    """Whether the server answered the last call, so a connectivity failure is logged once."""

    def __init__(self) -> None:
        self.unreachable = False

    def failed(self, message: str) -> None:
        """Log a connectivity failure once, not on every retry."""
        if not self.unreachable:
            log.warning("server unreachable: %s", one_line(message))
        self.unreachable = True

    def answered(self) -> None:
        if self.unreachable:
            log.info("server reachable again")
        self.unreachable = False
