"""``mail.process`` (stored messages, shared/mail/service.py) and ``mail.sweep`` (beat).

A task names the messages that intake stored in one transaction (its group commit), and takes
up to ALONG other stored messages along (shared/mail/service.py's ``process_mail``), so a
stream of mail is processed in runs, not one transaction a message. A database outage is
retried with a growing pause; any other error is first assumed to be one message's: each of
the task's own messages is processed again alone, and only an error then ends that one
``failed`` with the reason, once (those taken along are processed by the tasks naming them). A
message is never requeued forever. The sweep queues again every message
still ``received`` after REQUEUE_AFTER: the ``mail.process`` message of an intake that died
between its commit and its publish, or that the broker refused. Processing is idempotent, so a
message queued twice is processed once.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.batching import runs
from shared.db.engine import session_scope
from shared.mail.queries import pending
from shared.mail.service import MailConfig, fail_mail, process_mail
from shared.messaging import MAIL_PROCESS, MAIL_QUEUE, MAIL_SWEEP
from shared.records.directory import Directory
from shared.settings import get_settings
from shared.transactions.failures import Fault, classify, reason
from worker.app import app

log = logging.getLogger(__name__)
# One per pool process, like events.process's: reference records, reloaded after the cache TTL.
DIRECTORY = Directory(get_settings().cache_ttl_seconds)
CONFIG = MailConfig.from_settings(get_settings())
# Longer than a mail waits in a healthy queue, so the sweep rarely queues one twice.
REQUEUE_AFTER = timedelta(minutes=5)
SWEEP_LIMIT = 1000
# Other stored messages a task takes along: enough to make a run of a burst, few enough that a
# run stays a short transaction.
ALONG = 50


@app.task(name=MAIL_PROCESS, bind=True, acks_late=True, max_retries=None)
def process(self: Any, mail_ids: list[int] | int) -> None:
    # One id alone: a task queued before intake's group commit (a rolling upgrade).
    ids = [mail_ids] if isinstance(mail_ids, int) else [int(mail_id) for mail_id in mail_ids]
    now = datetime.now(UTC)
    try:
        _run(ids, now, along=ALONG)
        return
    except Exception as exc:
        if classify(exc) is Fault.OUTAGE:
            raise self.retry(exc=exc, countdown=min(30, 2 ** self.request.retries)) from exc
    for mail_id in ids:
        try:
            _run([mail_id], now, along=0)
        except Exception as exc:
            if classify(exc) is Fault.OUTAGE:
                raise self.retry(exc=exc, countdown=min(30, 2 ** self.request.retries)) from exc
            log.error("%s: mail %s failed: %s", MAIL_PROCESS, mail_id, reason(exc),
                      exc_info=exc)
            with session_scope() as session:
                fail_mail(session, mail_id, exc, now)


def _run(mail_ids: list[int], now: datetime, *, along: int) -> None:
    with session_scope() as session:
        process_mail(session, mail_ids, now, DIRECTORY, CONFIG, along=along)


@app.task(name=MAIL_SWEEP)
def sweep() -> int:
    with session_scope() as session:
        stranded = pending(session, datetime.now(UTC) - REQUEUE_AFTER, SWEEP_LIMIT)
    for part in runs(stranded, lambda _: 1, ALONG):
        app.send_task(MAIL_PROCESS, args=[part], queue=MAIL_QUEUE)
    return len(stranded)
