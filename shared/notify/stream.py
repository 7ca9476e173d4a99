"""Deliveries as a stream: a batch claimed at once, POSTed concurrently, recorded in batches.

A worker process runs one :class:`Stream` for its life: one event loop and one
:class:`~shared.notify.http.Sender`, whose connections to each receiver are kept alive from batch
to batch. :meth:`Stream.run` takes the delivery ids of one ``notify.deliver`` message:

- one :func:`~shared.notify.delivery.claim` for all of them (a short transaction);
- per receiver host, as many lanes as host slots were taken, each lane POSTing the host's next
  claim until none are left, so a slow or failing host holds its own lanes and no one else's;
  the optional per-host rate spaces the POSTs' starts;
- the outcomes are recorded every :data:`FLUSH_SECONDS` (a short transaction each), so a fast
  host's deliveries are stored while a slow host's are still in flight; a host's slots are freed
  with its last outcome;
- deliveries whose host had no free slot (other workers hold them) are claimed again after a
  short wait, for up to one sweep interval; after that they are the sweeper's.

The transactions run in a thread of their own, so the POSTs in flight go on meanwhile; none
waits for a POST: no transaction is open across a POST's wait. A crash anywhere leaves claimed
deliveries ``sending`` under a lease, which the sweeper takes back, so they are POSTed again,
with the same webhook-id.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from types import TracebackType

from shared.db.engine import session_scope
from shared.notify import rules, signing
from shared.notify.delivery import Batch, Claim, claim, record
from shared.notify.http import AttemptResult, Resolver, Sender, system_resolver

# Outcomes wait at most this long to be recorded: each record is one transaction, so batching
# them is what keeps the database's share per delivery small.
FLUSH_SECONDS = 0.05


class _Outcomes:
    """Outcomes not yet recorded, and the hosts whose slots go with them."""

    def __init__(self) -> None:
        self.results: list[tuple[Claim, AttemptResult]] = []
        self.release: list[tuple[str, str]] = []

    def take(self) -> tuple[list[tuple[Claim, AttemptResult]], list[tuple[str, str]]]:
        taken = self.results, self.release
        self.results, self.release = [], []
        return taken


class Stream:
    """One worker process's delivery loop (see the module doc)."""

    def __init__(
        self, policy: rules.Policy, *, database_url: str | None = None,
        resolve: Resolver = system_resolver, verify: ssl.SSLContext | None = None,
    ) -> None:
        self._policy = policy
        self._database_url = database_url
        self._loop = asyncio.new_event_loop()
        self._sender = Sender(connect_timeout=policy.connect_timeout,
                              read_timeout=policy.read_timeout, allow=policy.allow,
                              resolve=resolve, verify=verify)
        # Per host: when the next POST may start, under the per-host rate.
        self._next_start: dict[str, float] = {}

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._loop.run_until_complete(self._sender.aclose())
        self._loop.close()

    def run(self, delivery_ids: list[int]) -> dict[int, str | None]:
        """One attempt of each due delivery among ``delivery_ids``; their new statuses (None: the
        lease was lost meanwhile). Deliveries not attempted are left out."""
        return self._loop.run_until_complete(self.deliver(delivery_ids))

    async def deliver(self, delivery_ids: list[int]) -> dict[int, str | None]:
        await self._sender.prune()
        statuses: dict[int, str | None] = {}
        outcomes = _Outcomes()
        hosts: list[asyncio.Task[None]] = []
        done = asyncio.Event()
        flusher = asyncio.create_task(self._flush_every(outcomes, statuses, done))
        try:
            waiting, give_up = delivery_ids, time.monotonic() + self._policy.sweep_interval
            while waiting:
                batch = await asyncio.to_thread(self._claim, waiting)
                for host, lanes in batch.lanes.items():
                    claims = [c for c in batch.claims if c.host == host]
                    hosts.append(asyncio.create_task(self._host(host, lanes, claims, outcomes)))
                waiting = batch.deferred
                if waiting and time.monotonic() < give_up:
                    await asyncio.sleep(rules.busy_wait(_draw()))
                else:
                    break
            await asyncio.gather(*hosts)
        finally:
            # No host's task may outlive this call (a claim that raised, a host that did): the
            # others finish their POSTs, and the last flush records them and frees the slots.
            await asyncio.gather(*hosts, return_exceptions=True)
            done.set()
            await flusher
        return statuses

    def _claim(self, delivery_ids: list[int]) -> Batch:
        with session_scope(self._database_url) as session:
            return claim(session, delivery_ids, _now(), self._policy, _draw())

    async def _host(self, host: str, lanes: int, claims: list[Claim], outcomes: _Outcomes) -> None:
        queue = iter(claims)  # shared by the lanes: each takes the next claim when it is free
        try:
            await asyncio.gather(
                *(self._lane(host, lane, queue, outcomes) for lane in range(lanes)))
        finally:
            outcomes.release.append((host, claims[0].token))  # the host's slots, whatever happened

    async def _lane(
        self, host: str, lane: int, queue: Iterator[Claim], outcomes: _Outcomes
    ) -> None:
        for taken in queue:
            await self._pace(host)
            headers = signing.headers(taken.secrets, taken.message_id, int(time.time()),
                                      taken.body, hub=taken.hub_signature)
            result = await self._sender.post(taken.url, taken.body, headers, lane)
            # Only now: the flusher may have swapped the list while the POST was awaited.
            outcomes.results.append((taken, result))

    async def _pace(self, host: str) -> None:
        """Wait for this host's turn under the per-host rate, if there is one."""
        if not self._policy.host_rate:
            return
        now = time.monotonic()
        start = max(now, self._next_start.get(host, now))
        self._next_start[host] = start + 1 / self._policy.host_rate
        if start > now:
            await asyncio.sleep(start - now)

    async def _flush_every(
        self, outcomes: _Outcomes, statuses: dict[int, str | None], done: asyncio.Event
    ) -> None:
        """Record what came back every FLUSH_SECONDS, and once more when ``done``. The database
        work runs in a thread, so the POSTs go on meanwhile (none of them is waited for in it)."""
        while True:
            finished = done.is_set()
            if not finished:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), FLUSH_SECONDS)
            results, release = outcomes.take()
            if results or release:
                moved = await asyncio.to_thread(self._record, results, release)
                statuses.update(zip((c.delivery_id for c, _ in results), moved, strict=True))
            if finished:
                return

    def _record(
        self, results: list[tuple[Claim, AttemptResult]], release: list[tuple[str, str]]
    ) -> list[str | None]:
        with session_scope(self._database_url) as session:
            return record(session, results, now=_now(), policy=self._policy, draw=_draw,
                          release=release)


def _now() -> datetime:
    return datetime.now(UTC)


def _draw() -> float:
    return random.random()  # noqa: S311 - jitter, not a secret
