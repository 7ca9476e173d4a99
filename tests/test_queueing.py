"""Group commit in the api (shared/messaging/queueing.py): what each caller is told, and when.

The publisher here is a stand-in whose first push can be held open, so the test decides which
requests arrive while a push is under way; the real brokers are covered by test_worker.py and
test_webex_api.py.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import pytest

from shared.batching import GroupRunner
from shared.messaging.publish import Limited, PublishError, TaskMessage
from shared.messaging.queueing import MAX_GROUP_EVENTS, EventQueue
from shared.transactions.schemas import EventBatch, QueuedEvent
from tests.conftest import wait_until


def batch(key_id: int, events: int = 1) -> EventBatch:
    return EventBatch(
        channel="webex", account_id="wdc", key_id=key_id, received_at=datetime.now(UTC),
        events=[QueuedEvent(transid=uuid.uuid4().hex, evtid="server-down", parameters={})
                for _ in range(events)],
    )


class HeldPublisher:
    """Records each message's batches; the first push waits until ``release`` is set."""

    def __init__(self, refuse: Callable[[Mapping[str, int]], Limited | None] = lambda _: None,
                 fail: bool = False) -> None:
        self.pushed: list[list[str]] = []  # the transids of each message
        self.charged: list[dict[str, int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self._refuse = refuse
        self._fail = fail

    def publish(self, message: TaskMessage, costs: Mapping[str, int]) -> Limited | None:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(10)
        if self._fail:
            raise PublishError("broker down")
        limited = self._refuse(costs)
        if limited is None:
            args = json.loads(message.body)[0]
            self.pushed.append([event["transid"] for arg in args for event in arg["events"]])
            self.charged.append(dict(costs))
        return limited

    def ping(self) -> None:
        pass


def publish_at_once(queue: EventQueue, publisher: HeldPublisher, first: EventBatch,
                    others: list[EventBatch]) -> dict[str, object]:
    """``first`` holds the broker; ``others`` arrive meanwhile; then the push completes."""
    results: dict[str, object] = {}

    def call(item: EventBatch) -> None:
        try:
            results[item.events[0].transid] = queue.publish(item)
        except PublishError as exc:
            results[item.events[0].transid] = exc

    threads = [threading.Thread(target=call, args=(first,))]
    threads[0].start()
    assert publisher.entered.wait(10)
    for item in others:
        thread = threading.Thread(target=call, args=(item,))
        thread.start()
        threads.append(thread)
    wait_until(lambda: len(queue._runner._waiting) == len(others), 10, 0.01)
    publisher.release.set()
    for thread in threads:
        thread.join(10)
    return results


def test_a_lone_request_is_one_message_of_its_own() -> None:
    publisher = HeldPublisher()
    publisher.entered.set()
    queue = EventQueue(publisher)
    item = batch(1, events=3)
    assert queue.publish(item) is None
    assert publisher.pushed == [[event.transid for event in item.events]]
    assert publisher.charged == [{"key:1": 3}]


def test_requests_arriving_during_a_push_share_the_next_message() -> None:
    publisher = HeldPublisher()
    queue = EventQueue(publisher)
    first, others = batch(1), [batch(1, events=2), batch(2), batch(1)]
    results = publish_at_once(queue, publisher, first, others)
    assert list(results.values()) == [None] * 4
    assert publisher.pushed == [
        [first.events[0].transid],
        [event.transid for item in others for event in item.events],
    ]
    # One charge a key for the group: the sum of its requests' events.
    assert publisher.charged == [{"key:1": 1}, {"key:1": 3, "key:2": 1}]


def test_a_key_over_its_limit_is_refused_alone() -> None:
    def refuse_key_2(costs: Mapping[str, int]) -> Limited | None:
        return Limited(2.5) if "key:2" in costs else None

    publisher = HeldPublisher(refuse=refuse_key_2)
    queue = EventQueue(publisher)
    first, over, fine = batch(1), batch(2), batch(3)
    results = publish_at_once(queue, publisher, first, [over, fine])
    assert results[over.events[0].transid] == Limited(2.5)
    assert results[fine.events[0].transid] is None
    assert results[first.events[0].transid] is None
    queued = {transid for message in publisher.pushed for transid in message}
    assert over.events[0].transid not in queued
    assert fine.events[0].transid in queued


def test_a_broker_failure_reaches_every_request_of_the_group() -> None:
    publisher = HeldPublisher(fail=True)
    queue = EventQueue(publisher)
    results = publish_at_once(queue, publisher, batch(1), [batch(1), batch(2)])
    assert len(results) == 3
    assert all(isinstance(result, PublishError) for result in results.values())
    assert publisher.pushed == []


def test_an_unexpected_error_is_a_publish_error_not_a_false_queued() -> None:
    class Broken(HeldPublisher):
        def publish(self, _message: TaskMessage, _costs: Mapping[str, int]) -> Limited | None:
            raise RuntimeError("bug")

    queue = EventQueue(Broken())
    with pytest.raises(PublishError):
        queue.publish(batch(1))
    assert not queue._runner._busy  # the next request is not stuck behind it


def test_a_large_crowd_is_cut_into_messages_of_at_most_max_group_events() -> None:
    publisher = HeldPublisher()
    queue = EventQueue(publisher)
    per_batch = MAX_GROUP_EVENTS // 4
    others = [batch(1, events=per_batch) for _ in range(6)] + [batch(1, MAX_GROUP_EVENTS + 1)]
    results = publish_at_once(queue, publisher, batch(1), others)
    assert list(results.values()) == [None] * 8
    # The first of the crowd waited for the lone first push; then four batches fill a message,
    # the other two the next, and a request over the limit goes alone.
    assert [len(message) for message in publisher.pushed] == [
        1, 4 * per_batch, 2 * per_batch, MAX_GROUP_EVENTS + 1]


def test_a_group_whose_work_raises_raises_in_each_of_its_callers_and_the_next_group_runs() -> None:
    """The group runner under the queue (shared/batching.py), as the Mail API's intake uses it:
    an error of one run reaches every caller of that run, and no later caller waits on it."""
    entered, release = threading.Event(), threading.Event()
    runs_seen: list[list[int]] = []

    def work(group: list[int]) -> None:
        if not entered.is_set():
            entered.set()
            assert release.wait(10)
        runs_seen.append(group)
        if 0 in group:
            raise RuntimeError("database down")

    runner = GroupRunner(work)
    outcomes: dict[int, str] = {}

    def call(item: int) -> None:
        try:
            runner.submit(item)
            outcomes[item] = "done"
        except RuntimeError as exc:
            outcomes[item] = str(exc)

    first = threading.Thread(target=call, args=(5,))
    first.start()
    assert entered.wait(10)
    crowd = [threading.Thread(target=call, args=(item,)) for item in (0, 1, 2)]
    for thread in crowd:
        thread.start()
    wait_until(lambda: len(runner._waiting) == 3, 10, 0.01)
    release.set()
    for thread in [first, *crowd]:
        thread.join(10)
    call(7)
    assert runs_seen == [[5], [0, 1, 2], [7]]
    assert outcomes == {5: "done", 0: "database down", 1: "database down", 2: "database down",
                        7: "done"}
