"""Queueing accepted events for ``events.process``, with group commit.

Every front door queues through one :class:`EventQueue` per api process. A broker message costs
the worker far more than the events in it (its consumer handles each message apart, and a plain
Celery worker drains far fewer messages than the intake takes: bench/README.md), so batches that
threads of one process queue at the same moment go out as one message: the first thread to arrive
publishes what is waiting, and those that arrive meanwhile wait for its push to finish, then the
next of them publishes everything that gathered. No thread waits for a timer, so a lone request
pays nothing, and under load the groups grow by themselves.

Durability is unchanged: each caller returns (and its events are answered "queued") only after
the broker has taken the message that holds its batch. The message's task arguments are the
batches, one each (``events.process`` takes any number).

The rate limit stays per key and per request: a group is charged all its keys at once, all or
nothing; when a bucket refuses, the group is split and each batch is published alone, so the
refusal reaches only the requests over their limit.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.batching import GroupRunner, runs
from shared.logs import get_logger
from shared.messaging import EVENTS_PROCESS, EVENTS_QUEUE
from shared.messaging.publish import Limited, Publisher, PublishError, task_message
from shared.transactions.schemas import EventBatch

# Events in one message at most (a larger request is a message alone), bounding its size
# whatever the thread count and the bodies.
MAX_GROUP_EVENTS = 1000

log = get_logger(__name__)


class _Entry:
    __slots__ = ("batch", "error", "limited")

    def __init__(self, batch: EventBatch) -> None:
        self.batch = batch
        self.limited: Limited | None = None
        self.error: PublishError | None = None


def _events_of(entry: _Entry) -> int:
    return len(entry.batch.events)


class EventQueue:
    """Batches of threads publishing at once go out together (module docstring), through a
    :class:`~shared.batching.GroupRunner`."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._runner = GroupRunner(self._publish_group)

    def publish(self, batch: EventBatch) -> Limited | None:
        """Queue ``batch``, charged to its key's rate limit (a token an event).

        None means queued; a :class:`Limited` means refused by the rate limit, nothing queued.
        Raises PublishError when the broker did not take it.
        """
        entry = _Entry(batch)
        self._runner.submit(entry)
        if entry.error is not None:
            raise entry.error
        return entry.limited

    def _publish_group(self, group: list[_Entry]) -> None:
        for part in runs(group, _events_of, MAX_GROUP_EVENTS):
            self._send(part)

    def _send(self, group: Sequence[_Entry]) -> None:
        """Publish ``group`` as one message, or each entry alone if a bucket refused it; every
        entry ends queued, limited or with the error (an unforeseen one as a PublishError)."""
        try:
            limited = self._publish([entry.batch for entry in group])
        except Exception as exc:  # PublishError, or anything unforeseen: not queued either way
            error = exc if isinstance(exc, PublishError) else PublishError(repr(exc))
            log.warning("not queued", batches=len(group), error=str(error))
            for entry in group:
                entry.error = error
            return
        if limited is not None and len(group) > 1:
            for entry in group:
                self._send([entry])
            return
        for entry in group:
            entry.limited = limited

    def _publish(self, batches: Sequence[EventBatch]) -> Limited | None:
        args = ",".join(batch.model_dump_json() for batch in batches)
        costs: dict[str, int] = {}
        for batch in batches:
            key = f"key:{batch.key_id}"
            costs[key] = costs.get(key, 0) + len(batch.events)
        message = task_message(EVENTS_PROCESS, EVENTS_QUEUE, f"[{args}]")
        return self._publisher.publish(message, costs)
