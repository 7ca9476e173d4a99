"""``mail.process`` (one stored message, shared/mail/service.py) and ``mail.sweep`` (beat).

Each task takes up to ALONG other stored messages along (shared/mail/service.py's
``process_mail``), so a stream of mail is processed in runs, not one transaction a message. A
database outage is retried with a growing pause; any other error is first assumed to be one of
the messages taken along: the task's own message is processed again alone, and only an error
then ends it ``failed`` with the reason, once (the others are processed by their own tasks). A
message is never requeued forever. The sweep queues again every message
still ``received`` after REQUEUE_AFTER: the ``mail.process`` message of an intake that died
between its commit and its publish, or that the broker refused. Processing is idempotent, so a
message queued twice is processed once.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

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
def process(self: Any, mail_id: int) -> None:
    now = datetime.now(UTC)
    for along in (ALONG, 0):
        try:
            with session_scope() as session:
                process_mail(session, int(mail_id), now, DIRECTORY, CONFIG, along=along)
            return
        except Exception as exc:
            if classify(exc) is Fault.OUTAGE:
                raise self.retry(exc=exc, countdown=min(30, 2 ** self.request.retries)) from exc
            error = exc
    log.error("%s: mail %s failed: %s", MAIL_PROCESS, mail_id, reason(error), exc_info=error)
    with session_scope() as session:
        fail_mail(session, int(mail_id), error, now)


@app.task(name=MAIL_SWEEP)
def sweep() -> int:
    with session_scope() as session:
        stranded = pending(session, datetime.now(UTC) - REQUEUE_AFTER, SWEEP_LIMIT)
    for mail_id in stranded:
        app.send_task(MAIL_PROCESS, args=[mail_id], queue=MAIL_QUEUE)
    return len(stranded)
