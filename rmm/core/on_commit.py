"""Background work goes through django-q2, and only after the transaction that caused it commits."""

from django.conf import settings
from django.db import transaction


def enqueue_on_commit(func: str, *args) -> None:
    def send():
        from django_q.tasks import async_task

        async_task(func, *args, sync=settings.RMM_TASKS_SYNC)

    # Robust: the caller's work has committed, and a broker that fails now must not answer it
    # with an error (Django logs the failure). Lost batch waves are made up for by the sweep; a
    # lost webhook or export task is not (docs/security.md, known limits).
    transaction.on_commit(send, robust=True)
