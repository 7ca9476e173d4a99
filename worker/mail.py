"""``mail.process`` (stored messages, shared/mail/service.py) and ``mail.sweep`` (beat).

A message names the mail that an intake process stored (at once, or what it stored in one
WAKE_INTERVAL while mail streams in: shared/mail/service.py). The task is a celery-batches task
on ``events.process``'s consumer (worker/events.py: the same buffer, flush, acknowledgement and
reconnect handling), with a batch wait of its own (``EVENTDESK_MAIL_BATCH_WAIT_SECONDS``) cut
short QUIET_FLUSH after the last message: the buffered messages go to a pool process as one
job, whose mail is processed in one run with up to ALONG other stored messages taken along
(``process_job``), so a stream of mail costs neither a task nor a transaction a message. A
database outage gives the job's messages back to the queue after a growing pause; any other
error is some message's: the job's own are run again without those taken along, then in
halves until each failing one is alone, and only an error then ends that one ``failed`` with
the reason, once. A message is never requeued forever. The sweep queues again every message
still ``received`` after REQUEUE_AFTER: the ``mail.process`` message of an intake that died
between its commit and its publish, or that the broker refused. Processing is idempotent, so
a message queued twice is processed once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from celery_batches import Batches, SimpleRequest

from shared.batching import runs
from shared.db.engine import session_scope
from shared.mail.queries import pending
from shared.mail.service import WAKE_INTERVAL, MailConfig, process_job
from shared.messaging import MAIL_PROCESS, MAIL_QUEUE, MAIL_SWEEP
from shared.records.directory import Directory
from shared.settings import get_settings
from shared.transactions.failures import Backoff
from worker.app import app
from worker.events import EventBatches

log = logging.getLogger(__name__)
# One per pool process, like events.process's: reference records, reloaded after the cache TTL.
DIRECTORY = Directory(get_settings().cache_ttl_seconds)
CONFIG = MailConfig.from_settings(get_settings())
# One per pool process too: how long the database has been found unreachable.
BACKOFF = Backoff()
# Longer than a mail waits in a healthy queue, so the sweep rarely queues one twice.
REQUEUE_AFTER = timedelta(minutes=5)
SWEEP_LIMIT = 1000
# Other stored messages a job takes along: enough to make a run of a burst, few enough that a
# run stays a short transaction.
ALONG = 50
# Mail ids in one job at most (a message naming more is a job alone).
JOB_IDS = 500
# A buffer that no new message joins for this long goes at once, without the rest of the batch
# wait: the last mail of a stream, or one alone, waits this long. Longer than intake's
# WAKE_INTERVAL, so a stream (a message every WAKE_INTERVAL) still goes in batch-wait jobs.
QUIET_FLUSH = 2.5 * WAKE_INTERVAL


def ids_in(request: Any) -> list[int]:
    """The mail ids a ``mail.process`` message names: a list, or one id alone (a task queued
    before intake's group commit, during a rolling upgrade); none for a message not ours."""
    try:
        named = request.args[0]
        return [named] if isinstance(named, int) else [int(mail_id) for mail_id in named]
    except (TypeError, ValueError, IndexError):
        return []


class MailBatches(EventBatches):
    """``events.process``'s consumer (its flush, acknowledgement and reconnects), cutting the
    buffered messages into jobs of at most JOB_IDS mail ids, with the mail's own batch wait,
    and a flush QUIET_FLUSH after the last message that came."""

    flush_interval = get_settings().mail_batch_wait_seconds
    _quiet: Any = None  # the quiet flush's timer entry

    def Strategy(self, task: Batches, app: Any, consumer: Any) -> Any:  # noqa: N802 - Celery's name
        handler = super().Strategy(task, app, consumer)

        def on_message(*args: Any, **kwargs: Any) -> None:
            handler(*args, **kwargs)
            self.quiet(consumer.timer)

        return on_message

    def quiet(self, timer: Any) -> None:
        """Flush QUIET_FLUSH from now, unless another message comes first (then from then)."""
        if self._quiet is not None:
            self._quiet.cancel()
        self._quiet = timer.call_after(QUIET_FLUSH, self._flush_quiet)

    def _flush_quiet(self) -> None:
        """Flush, and stop the batch wait's timer once nothing is left: the next stream's first
        message starts it again (celery-batches arms it while ``_tref`` is None), so its first
        job gathers a whole batch wait, not what is left of this one's."""
        self._do_flush()
        if not self._holding():
            self._stop_timer()

    def flush(self, requests: Sequence[Any]) -> None:
        for job in runs(requests, lambda request: max(1, len(ids_in(request))), JOB_IDS):
            self._apply(job)


@app.task(name=MAIL_PROCESS, base=MailBatches, acks_late=True)
def process(requests: list[SimpleRequest]) -> bool:
    """True: every message is done (acknowledge them); False: put them back on the queue."""
    ids: list[int] = []
    for request in requests:
        named = ids_in(request)
        if not named:  # nothing in it can be processed or recorded: dropped, loudly
            log.error("%s: unreadable message %s dropped", MAIL_PROCESS, request.id)
        ids += named
    return process_job(ids, DIRECTORY, CONFIG, BACKOFF, along=ALONG) if ids else True


@app.task(name=MAIL_SWEEP)
def sweep() -> int:
    with session_scope() as session:
        stranded = pending(session, datetime.now(UTC) - REQUEUE_AFTER, SWEEP_LIMIT)
    for part in runs(stranded, lambda _: 1, ALONG):
        app.send_task(MAIL_PROCESS, args=[part], queue=MAIL_QUEUE)
    return len(stranded)
