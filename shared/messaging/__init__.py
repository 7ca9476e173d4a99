"""Every queue and task name, and which queue each task goes to: the one place senders (api,
smtp, worker, beat) and the worker's routes read them from, so a typo cannot route work nowhere.

Task arguments are JSON values and ids only. Publishing itself is ``publish.py`` beside this
module; the api's group commit is ``queueing.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.batching import runs

EVENTS_QUEUE = "events"
MAIL_QUEUE = "mail"
NOTIFY_QUEUE = "notify"
QUEUES = (EVENTS_QUEUE, MAIL_QUEUE, NOTIFY_QUEUE)

# One or more event batches (shared/transactions/schemas.EventBatch) a message.
EVENTS_PROCESS = "events.process"
# The id of a ``mail_messages`` row.
MAIL_PROCESS = "mail.process"
# Beat's: queue again the mail whose ``mail.process`` message never arrived.
MAIL_SWEEP = "mail.sweep"
# Delivery ids, up to NOTIFY_BATCH a message: one message is one claim statement, and that many
# POSTs under way together (shared/notify/stream.py).
NOTIFY_DELIVER = "notify.deliver"
NOTIFY_BATCH = 200
# Beat's: deliveries due again, and leases that ran out (worker/sweeper.py).
NOTIFY_SWEEP = "notify.sweep"
# Beat's: retention (worker/retention.py). Housekeeping, on the notify queue with the sweeper,
# never on events, whose consumer batches its messages.
RETENTION_PURGE = "retention.purge"

ROUTES = {
    EVENTS_PROCESS: EVENTS_QUEUE,
    MAIL_PROCESS: MAIL_QUEUE, MAIL_SWEEP: MAIL_QUEUE,
    NOTIFY_DELIVER: NOTIFY_QUEUE, NOTIFY_SWEEP: NOTIFY_QUEUE, RETENTION_PURGE: NOTIFY_QUEUE,
}
def notify_batches(delivery_ids: Sequence[int]) -> list[list[int]]:
    """The arguments of the ``notify.deliver`` messages that queue ``delivery_ids``."""
    return runs(delivery_ids, lambda _: 1, NOTIFY_BATCH)
