"""Results that arrive together are taken in together.

Each worker's event loop keeps one collector. A result call hands its checked body to it and
waits; the collector takes in, in one transaction, every result that arrived while it was busy
with the ones before (:func:`rmm.engine.services.results.ingest_results`). With one result in
flight it is taken in at once, as before; under a burst (a batch's ring finishing) the cost of a
transaction, the history's lock and each table's insert is shared by all that came meanwhile.
Each call still gets its own answer only once its result has committed.
"""

from __future__ import annotations

import asyncio
import weakref

from rmm.engine.services import results

_collectors: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _Collector:
    __slots__ = ("pending", "busy")

    def __init__(self) -> None:
        self.pending: list[tuple[object, dict, asyncio.Future]] = []
        self.busy = False


async def take_in(agent, body: dict, run_sync) -> tuple[int, dict]:
    """The (http status, answer) of one result, taken in with those that arrive meanwhile;
    ``run_sync`` runs the database work off the event loop (the agent tier's threads)."""
    loop = asyncio.get_running_loop()
    collector = _collectors.get(loop)
    if collector is None:
        collector = _collectors[loop] = _Collector()
    answer = loop.create_future()
    collector.pending.append((agent, body, answer))
    if not collector.busy:
        collector.busy = True
        loop.create_task(_drain(collector, run_sync))
    return await answer


async def _drain(collector: _Collector, run_sync) -> None:
    try:
        while collector.pending:
            batch, collector.pending = collector.pending, []
            try:
                answers = await run_sync(results.ingest_results, [(agent, body) for agent, body, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every waiting call fails with it
                answers = [exc] * len(batch)
            for (_, _, future), answer in zip(batch, answers, strict=True):
                if future.done():  # the caller went away
                    continue
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)
    finally:
        collector.busy = False
