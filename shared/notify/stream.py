"""Deliveries as a stream: claimed in batches, POSTed concurrently, recorded in batches, without
a pause between batches.

A worker process runs one :class:`Stream` for its life: an event loop in a thread of its own,
one :class:`~shared.notify.http.Sender` (connections kept alive from batch to batch) and one
database thread. :meth:`Stream.submit` hands it the delivery ids of a ``notify.deliver``
message and returns once they are claimed; the POSTs and their records go on in the background
while the process takes its next message, so a slow POST holds nothing but its lane.

- Claims: one :func:`~shared.notify.delivery.claim` a batch of ids (a short transaction).
- Per receiver host, a session: its slots (as many POSTs in flight as it holds), renewed and
  topped up by each later claim of the host, and lanes, each POSTing the host's next claim
  until none is left; a slow or failing host holds its own lanes and no one else's. The
  optional per-host rate spaces the POSTs' starts. When a host's claims run out, the stream
  claims the host's due deliveries that others deferred (another process's claim found no
  free slot: this stream holds them), so no delivery waits for a session to end.
- A claim that would start after its lease can no longer cover its deadline is given back
  unsent (pending again, the attempt not spent): a long queue for a slow host never outlives
  the leases of its deliveries or of its slots.
- Outcomes are recorded every :data:`FLUSH_SECONDS` (a short transaction each), and a host
  whose lanes are all done has its slots freed in the same transaction.
- Deliveries whose host had no free slot are claimed again after a short wait, for up to one
  sweep interval; after that they are the sweeper's.

The transactions run in order in the database thread, so the POSTs in flight go on meanwhile,
and no transaction is open across a POST's wait. A crash anywhere leaves claimed deliveries
``sending`` under a lease, which the sweeper takes back, so they are POSTed again, with the same
webhook-id.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

from shared.db.engine import database_unreachable, session_scope
from shared.logs import get_logger
from shared.notify import rules, signing
from shared.notify.delivery import Batch, Claim, claim, claim_due, give_back, record
from shared.notify.http import AttemptResult, Resolver, Sender, system_resolver
from shared.notify.slots import free_among

# Outcomes wait at most this long to be recorded: each record is one transaction, so batching
# them is what keeps the database's share per delivery small.
FLUSH_SECONDS = 0.05
# The most due deliveries of its hosts a stream claims at once (claim_due).
TOP_UP = 200

log = get_logger("eventdesk.notify")
T = TypeVar("T")


@dataclass
class _Host:
    """A receiver this stream holds slots of, and its claims not yet POSTed."""

    holder: str
    lanes: int
    queue: deque[tuple[Claim, float]] = field(default_factory=deque)  # and its latest start
    busy: set[int] = field(default_factory=set)  # lane numbers running (a connection each)
    topping_up: bool = False
    # No look for the host's deferred deliveries before then: the last one found none.
    quiet_until: float = 0.0

    @property
    def running(self) -> int:
        return len(self.busy)


class Job:
    """Delivery ids handed over together: claimed (they are the stream's), then done (each
    attempted and recorded, or not taken)."""

    def __init__(self, delivery_ids: Collection[int]) -> None:
        self.outstanding = set(delivery_ids)
        self.statuses: dict[int, str | None] = {}
        self.claimed: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.done: concurrent.futures.Future[dict[int, str | None]] = concurrent.futures.Future()
        if not self.outstanding:
            self._finish()

    def settle(self, delivery_id: int, status: str | None, *, attempted: bool = True) -> None:
        if delivery_id in self.outstanding:
            self.outstanding.discard(delivery_id)
            if attempted:
                self.statuses[delivery_id] = status
            if not self.outstanding:
                self._finish()

    def fail(self, exc: BaseException) -> None:
        for future in (self.claimed, self.done):
            if not future.done():
                future.set_exception(exc)

    def _finish(self) -> None:
        if not self.claimed.done():
            self.claimed.set_result(None)
        if not self.done.done():
            self.done.set_result(self.statuses)


class Stream:
    """One worker process's delivery loop (see the module doc)."""

    def __init__(
        self, policy: rules.Policy, *, database_url: str | None = None,
        resolve: Resolver = system_resolver, verify: ssl.SSLContext | None = None,
    ) -> None:
        self._policy = policy
        self._database_url = database_url
        self._sender = Sender(connect_timeout=policy.connect_timeout,
                              read_timeout=policy.read_timeout, allow=policy.allow,
                              resolve=resolve, verify=verify)
        self._hosts: dict[str, _Host] = {}
        self._jobs: dict[int, Job] = {}  # by delivery id
        self._results: list[tuple[Claim, AttemptResult]] = []
        self._unsent: list[Claim] = []
        # Slots of hosts whose sessions ended, to free (host, holder token).
        self._release: list[tuple[str, str]] = []
        self._claiming = 0  # claims under way: no slots are freed meanwhile (see _flush)
        # One claim at a time from its look at the slots held to its distribution: two claims
        # for a host not yet held would each take slots under a token of its own, and the
        # second token's would never be freed.
        self._claim_lock = asyncio.Lock()
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Deliveries deferred for want of a slot, by host: when each is given up on.
        self._waiting: dict[str, dict[int, float]] = {}
        self._poller: asyncio.Task[None] | None = None
        # Per host: when the next POST may start, under the per-host rate.
        self._next_start: dict[str, float] = {}
        self._database = concurrent.futures.ThreadPoolExecutor(1, "notify-db")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="notify-stream",
                                        daemon=True)
        self._thread.start()
        self._flusher = asyncio.run_coroutine_threadsafe(self._flush_every(), self._loop)

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- from other threads

    def submit(self, delivery_ids: Collection[int]) -> Job:
        """Hand over ``delivery_ids``: one attempt of each that is pending and due."""
        job = Job(delivery_ids)
        if delivery_ids:
            self._loop.call_soon_threadsafe(self._start, job, list(delivery_ids))
        return job

    def run(self, delivery_ids: Collection[int]) -> dict[int, str | None]:
        """One attempt of each due delivery among ``delivery_ids``, waited for; their new
        statuses (None: the lease was lost meanwhile). Deliveries not attempted are left out."""
        return self.submit(delivery_ids).done.result()

    def close(self) -> None:
        """Give back what is not yet POSTed, let the POSTs under way finish, record them, and
        free every slot; then stop."""
        asyncio.run_coroutine_threadsafe(self._drain(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._database.shutdown()

    # --- in the loop

    def _start(self, job: Job, delivery_ids: list[int]) -> None:
        fresh = []
        for delivery_id in dict.fromkeys(delivery_ids):
            if delivery_id in self._jobs:  # named by an earlier message and still in hand
                job.settle(delivery_id, None, attempted=False)
            else:
                self._jobs[delivery_id] = job
                fresh.append(delivery_id)
        if not fresh:
            return
        give_up = time.monotonic() + self._policy.sweep_interval
        task = self._spawn(self._take(fresh, give_up, job))
        task.add_done_callback(functools.partial(_answer, job))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self._loop.create_task(work)
        self._tasks.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("notify stream task failed", error=repr(task.exception()))

    async def _in_database(self, work: Callable[..., T], *args: Any) -> T:
        return await self._loop.run_in_executor(self._database, work, *args)

    async def _take(self, delivery_ids: list[int], give_up: float, job: Job | None = None) -> None:
        """Claim ``delivery_ids`` (``job``'s, when they are handed over); those deferred for want
        of a slot wait (_wait_for_slots)."""
        async with self._claim_lock:
            held = {host: state.holder for host, state in self._hosts.items()}
            started = time.monotonic()
            self._claiming += 1
            try:
                batch = await self._in_database(self._claim, delivery_ids, held)
            except BaseException as exc:  # the jobs' callers learn it (a database outage)
                mapped = (self._jobs.pop(i, None) for i in delivery_ids)
                for failed in {found for found in (job, *mapped) if found is not None}:
                    failed.fail(exc)
                return
            finally:
                self._claiming -= 1
            if job is not None and not job.claimed.done():
                job.claimed.set_result(None)
            self._distribute(batch, started)
        taken = {c.delivery_id for c in batch.claims}
        deferred = {i for ids in batch.deferred.values() for i in ids}
        for delivery_id in delivery_ids:
            if delivery_id not in taken and delivery_id not in deferred:
                self._settle(delivery_id, None, attempted=False)
        for host, ids in batch.deferred.items():
            self._waiting.setdefault(host, {}).update(dict.fromkeys(ids, give_up))
        if self._waiting and (self._poller is None or self._poller.done()):
            self._poller = self._spawn(self._wait_for_slots())

    async def _wait_for_slots(self) -> None:
        """Claim deferred deliveries again once their host has a free slot (or this stream holds
        some), until their give-up time; then they are the sweeper's. One look for every host
        waited for, every short wait: a look costs the database far less than a claim."""
        while self._waiting and not self._closing:
            await asyncio.sleep(rules.busy_wait(_draw()))
            now = time.monotonic()
            for host, waiting in list(self._waiting.items()):
                for delivery_id in [i for i, give_up in waiting.items() if give_up < now]:
                    del waiting[delivery_id]
                    self._settle(delivery_id, None, attempted=False)
                if not waiting:
                    del self._waiting[host]
            if not self._waiting:
                return
            try:
                ready = await self._in_database(self._free_among, list(self._waiting))
            except Exception as exc:  # the sweeper queues them later in any case
                log.warning("notify slots not read", error=str(exc))
                continue
            for host in (ready | self._hosts.keys()) & self._waiting.keys():
                waiting = self._waiting.pop(host)
                self._spawn(self._take(list(waiting), max(waiting.values())))

    def _claim(self, delivery_ids: list[int], held: dict[str, str]) -> Batch:
        with session_scope(self._database_url) as session:
            return claim(session, delivery_ids, _now(), self._policy, _draw(), held=held)

    def _free_among(self, hosts: list[str]) -> set[str]:
        with session_scope(self._database_url) as session:
            return free_among(session, hosts, now=_now(), limit=self._policy.host_concurrency)

    def _claim_due(self, host: str, held: dict[str, str]) -> Batch:
        with session_scope(self._database_url) as session:
            return claim_due(session, [host], _now(), self._policy, _draw(), limit=TOP_UP,
                             held=held)

    def _distribute(self, batch: Batch, started: float) -> None:
        """The batch's claims to their hosts' queues, and lanes to POST them. ``started``: a
        monotonic time before the claim set its leases, so a POST's latest start is early
        enough for its lease however long the claim took."""
        latest = started + self._policy.lease - self._policy.deadline
        for taken in batch.claims:
            state = self._hosts.get(taken.host)
            if state is None:
                state = self._hosts[taken.host] = _Host(batch.holders[taken.host], 0)
            state.queue.append((taken, latest))
        for host, lanes in batch.lanes.items():
            state = self._hosts[host]
            state.lanes = lanes
            while state.running < min(lanes, len(state.queue)):
                # A lane number still running is never given out again, even when the host's
                # lanes shrank and grew meanwhile: a lane is a connection of its own.
                lane = min(set(range(lanes)) - state.busy)
                state.busy.add(lane)
                self._spawn(self._lane(host, state, lane))

    async def _lane(self, host: str, state: _Host, lane: int) -> None:
        try:
            while state.queue:
                taken, latest = state.queue.popleft()
                # The rate's wait comes first: a POST must start within its lease, or the
                # sweeper may hand the delivery to another worker while it is under way.
                await self._pace(host)
                if self._closing or time.monotonic() > latest:
                    self._unsent.append(taken)
                    continue
                try:
                    headers = signing.headers(taken.secrets, taken.message_id, int(time.time()),
                                              taken.body, hub=taken.hub_signature)
                    result = await self._sender.post(taken.url, taken.body, headers, lane)
                except Exception as exc:  # a bug: the claim goes back, the lane goes on
                    log.error("notify lane failed", host=host, error=repr(exc))
                    self._unsent.append(taken)
                    continue
                # Only now: the flusher may have swapped the list while the POST was awaited.
                self._results.append((taken, result))
                if not state.queue and not self._closing:
                    await self._top_up(host, state)
        finally:
            state.busy.discard(lane)

    async def _top_up(self, host: str, state: _Host) -> None:
        """The host's due deliveries that other processes deferred (this stream holds its
        slots); one lane asks at a time."""
        if state.topping_up or time.monotonic() < state.quiet_until:
            return
        state.topping_up = True
        try:
            async with self._claim_lock:
                started = time.monotonic()
                self._claiming += 1
                try:
                    batch = await self._in_database(self._claim_due, host, {host: state.holder})
                except Exception as exc:  # the sweeper queues them later in any case
                    log.warning("notify top-up failed", host=host, error=str(exc))
                    return
                finally:
                    self._claiming -= 1
                if not batch.claims:
                    state.quiet_until = time.monotonic() + rules.BUSY_WAIT
                self._distribute(batch, started)
        finally:
            state.topping_up = False

    async def _pace(self, host: str) -> None:
        """Wait for this host's turn under the per-host rate, if there is one."""
        if not self._policy.host_rate:
            return
        now = time.monotonic()
        start = max(now, self._next_start.get(host, now))
        self._next_start[host] = start + 1 / self._policy.host_rate
        if start > now:
            await asyncio.sleep(start - now)

    def _settle(self, delivery_id: int, status: str | None, *, attempted: bool = True) -> None:
        job = self._jobs.pop(delivery_id, None)
        if job is not None:
            job.settle(delivery_id, status, attempted=attempted)

    async def _flush_every(self) -> None:
        """Flush every FLUSH_SECONDS; once closing, until every host's slots are freed."""
        pruned = time.monotonic()
        while not (self._closing and not self._hosts and not self._claiming
                   and not self._release):
            await asyncio.sleep(FLUSH_SECONDS)
            await self._flush()
            if time.monotonic() - pruned > 1.0:
                pruned = time.monotonic()
                await self._sender.prune()
        await self._sender.aclose()

    async def _flush(self) -> None:
        """Record the outcomes that came back, give back what was not sent, and free the slots
        of the hosts whose lanes are all done; unless a claim is under way (it may have renewed
        those slots: they are freed by a later flush if still unused)."""
        results, self._results = self._results, []
        unsent, self._unsent = self._unsent, []
        release, self._release = self._release, []
        if not self._claiming:
            for host, state in list(self._hosts.items()):
                if not state.running and not state.queue:
                    release.append((host, state.holder))
                    del self._hosts[host]
                    # Its turn under the rate, once past, is no longer needed to space POSTs.
                    if self._next_start.get(host, 0.0) <= time.monotonic():
                        self._next_start.pop(host, None)
        if not (results or unsent or release):
            return
        try:
            moved = await self._in_database(self._record, results, unsent, release)
        except BaseException as exc:
            log.warning("notify outcomes not recorded", count=len(results), error=str(exc))
            if not self._closing:
                self._release += release  # by their holder tokens: the next flush frees them
                if database_unreachable(exc):
                    # The next flush tries again: a short outage costs no second POST (a lease
                    # that ran out meanwhile is found lost then).
                    self._results[:0] = results
                    self._unsent[:0] = unsent
                    return
            # Stopping, or not an outage (it would fail again): the deliveries stay ``sending``
            # until their leases run out and the sweeper takes them back.
            for taken in [taken for taken, _ in results] + unsent:
                job = self._jobs.pop(taken.delivery_id, None)
                if job is not None:
                    job.fail(exc)
            return
        for (taken, _), status in zip(results, moved, strict=True):
            self._settle(taken.delivery_id, status)
        for taken in unsent:
            self._settle(taken.delivery_id, None, attempted=False)

    def _record(
        self, results: list[tuple[Claim, AttemptResult]], unsent: list[Claim],
        release: list[tuple[str, str]],
    ) -> list[str | None]:
        with session_scope(self._database_url) as session:
            now = _now()
            give_back(session, unsent, now)
            return record(session, results, now=now, policy=self._policy, draw=_draw,
                          release=release)

    async def _drain(self) -> None:
        self._closing = True
        for waiting in self._waiting.values():
            for delivery_id in waiting:
                self._settle(delivery_id, None, attempted=False)
        self._waiting.clear()
        while not self._flusher.done():
            await asyncio.sleep(FLUSH_SECONDS)


def _answer(job: Job, task: asyncio.Task[None]) -> None:
    """Whatever became of a claim (a bug, a cancellation), the caller waiting for it is told."""
    if task.cancelled():
        job.fail(RuntimeError("the claim was cancelled"))
    elif (exc := task.exception()) is not None:
        job.fail(exc)


def _now() -> datetime:
    return datetime.now(UTC)


def _draw() -> float:
    return random.random()  # noqa: S311 - jitter, not a secret
