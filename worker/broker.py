"""kombu's Redis transport, made to lose nothing when a worker is killed, and cheaper to run.

**Taking a message is one atomic step.** kombu's stock channel pops with BRPOP and then, with a
second command, records the message as unacknowledged: a worker killed between the two (SIGKILL,
OOM killer, a host crash) loses that message, which is in neither the queue nor the unacked hash
(1 in 6,000 events with one kill, measured). Here a message is taken with BLMOVE (one queue) or
a Lua script (several queues), both of which move it into this consumer's own *in-flight* list
in the same step. kombu's bookkeeping (the unacked hash and index) is then written together with
the removal from the in-flight list, in one MULTI/EXEC. So at every instant a message is in the
queue, in one consumer's in-flight list, or in that consumer's unacked hash.

**A dead consumer's messages come back by themselves.** Each channel that consumes has a name of
its own, set as the Redis client name of all its connections, registered in a set, and kept
alive by a heartbeat key that the consuming event loop renews every few seconds. Any live
consumer checks every few seconds which registered consumers are dead, and
moves their in-flight and unacknowledged messages back to their queues in one transaction. Dead
means no connection under that name (``CLIENT LIST``: a killed process's sockets close at once,
so recovery after a SIGKILL takes seconds) or a heartbeat that lapsed (a channel its worker
dropped after a broker restart, whose pool may still reconnect under the old name). The
unacked hash is per consumer for that reason; kombu's visibility timeout still applies to a live
consumer's own messages. A consumer that only lost its connection for a moment may see its
messages handed out again: they are processed once all the same (idempotent by transid).

The heartbeat is renewed from kombu's periodic restore (``MultiChannelPoller
.maybe_restore_messages``), which serves the first channel of a connection that consumes
ordinary queues: Celery consumes tasks on one channel per connection, so that is the one.

**One client per channel for synchronous commands.** kombu builds a new ``redis.Redis`` client
for every acknowledgement and bookkeeping step; with redis-py 6+ building a client costs more
than the command it sends (bench/README.md has the share of the consumer's CPU). A client is
only a handle on the channel's connection pool and is thread-safe, so one per channel serves
them all.

Limits: message priorities are not used by eventdesk and are off (one list per queue), and
kombu's ``global_keyprefix`` is refused. Selected with Celery's ``broker_transport`` for
``redis://`` brokers (worker/app.py). tests/test_compat.py pins the kombu internals used here.
"""

from __future__ import annotations

import logging
import time
import uuid
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)

CONSUMERS_KEY = "eventdesk:consumers"
UNDELIVERABLE_KEY = "eventdesk:undeliverable"
# How often a live consumer renews its heartbeat and looks for dead ones (seconds), from kombu's
# periodic restore (the first time within this long of its start). A heartbeat lapses after
# three missed renewals.
REAP_INTERVAL = 5.0
HEARTBEAT_TTL = int(3 * REAP_INTERVAL)
# Several queues: wait this long on the first one before asking all of them again.
MULTI_QUEUE_WAIT = 0.1

# KEYS: the queues, in the order to try them, then the in-flight list.
# Returns {queue, message} for the first queue that had one, or nil.
_TAKE = """
local inflight = KEYS[#KEYS]
for i = 1, #KEYS - 1 do
  local message = redis.call('LMOVE', KEYS[i], inflight, 'RIGHT', 'LEFT')
  if message then
    return {KEYS[i], message}
  end
end
return nil
"""


def inflight_key(consumer: str) -> str:
    return f"eventdesk:inflight:{consumer}"


def heartbeat_key(consumer: str) -> str:
    return f"eventdesk:heartbeat:{consumer}"


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    def append(self, message: Any, delivery_tag: str) -> None:
        """kombu's bookkeeping plus the removal from the in-flight list, in one MULTI/EXEC."""
        taken, self.channel.taken = self.channel.taken, None
        delivery = message.delivery_info
        record = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, record)
            if taken is not None:
                pipe.lrem(self.channel.inflight_key, 1, taken)
            pipe.execute()
        # kombu's in-memory record of delivered messages (virtual.QoS), not the Redis one.
        virtual.QoS.append(self, message, delivery_tag)

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        self.channel.reap_dead_consumers()
        super().restore_visible(*args, **kwargs)


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    QoS = QoS
    # eventdesk publishes without priorities: one list per queue, which BLMOVE can wait on.
    priority_steps = [0]  # noqa: RUF012 - kombu's own attribute, read per channel
    _sync_client: Any = None
    # The raw message just taken, until QoS.append has recorded it.
    taken: bytes | None = None
    _taking: str | None = None  # the command whose reply is awaited, while one is
    _wait_next = False
    _reaped_at = float("-inf")
    _registered_consumer = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.consumer = f"eventdesk-consumer-{uuid.uuid4().hex}"
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:
            raise ValueError("eventdesk's Redis transport does not support global_keyprefix")
        # Per consumer, so that a dead consumer's unacknowledged messages can be found.
        self._unacked_base = self.unacked_key, self.unacked_index_key
        self.unacked_key: str = f"{self.unacked_key}:{self.consumer}"
        self.unacked_index_key: str = f"{self.unacked_index_key}:{self.consumer}"
        self.unacked_mutex_key: str = f"{self.unacked_mutex_key}:{self.consumer}"
        self.inflight_key = inflight_key(self.consumer)

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)
        params["client_name"] = self.consumer  # what reap_dead_consumers looks for
        return params

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        # Dropped with the pools, so a reconnected channel never keeps a client on a closed pool.
        if self._sync_client is None or self._sync_client.connection_pool is not self.pool:
            self._sync_client = super()._create_client()
        return self._sync_client

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        # Fanout queues (Celery's remote control) come by pub/sub, never through the take.
        if queue not in self._fanout_queues and not self._registered_consumer:
            # The synchronous client: ``self.client`` owns the connection a BLMOVE may wait on.
            with self._create_client().pipeline() as pipe:
                pipe.set(heartbeat_key(self.consumer), 1, ex=HEARTBEAT_TTL)
                pipe.sadd(CONSUMERS_KEY, self.consumer)
                pipe.execute()
            self._registered_consumer = True
        return super().basic_consume(queue, *args, **kwargs)

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Ask for the next message; the reply is read by :meth:`_brpop_read`.

        One queue: BLMOVE, which waits server-side. Several: the take script, which tries
        every queue at once but cannot wait; when it found nothing, a BLMOVE on the first
        queue waits a little before all are asked again.
        """
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        if len(queues) == 1 or self._wait_next:
            wait = timeout if len(queues) == 1 else min(timeout or MULTI_QUEUE_WAIT,
                                                      MULTI_QUEUE_WAIT)
            command: list[Any] = ["BLMOVE", queues[0], self.inflight_key, "RIGHT", "LEFT",
                                  wait or 0]
            self._taking = queues[0]
        else:
            command = ["EVAL", _TAKE, len(queues) + 1, *queues, self.inflight_key]
            self._taking = "EVAL"
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        self.client.connection.send_command(*command)

    def _brpop_read(self, **options: Any) -> bool:
        taking, self._taking = self._taking, None
        try:
            try:
                reply = self.client.parse_response(
                    self.client.connection, "EVAL" if taking == "EVAL" else "BLMOVE", **options)
            except self.connection_errors:
                # Disconnect so that the next iteration reconnects; whatever the command moved
                # is in this consumer's in-flight list, which is restored once it is dead.
                self.client.connection.disconnect()
                raise
            if taking == "EVAL":
                self._wait_next = reply is None
                if reply is None:
                    raise Empty()
                queue, item = reply[0].decode(), reply[1]
            else:
                self._wait_next = False
                if reply is None:
                    raise Empty()
                queue, item = taking, reply
            self._queue_cycle.rotate(queue)
            self._deliver_taken(item, queue)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _get(self, queue: str) -> Any:
        """A message for ``basic_get`` (polling consumers), taken the same atomic way."""
        reply = self._create_client().eval(_TAKE, 2, queue, self.inflight_key)
        if reply is None:
            raise Empty()
        self.taken = reply[1]
        return loads(reply[1])

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        try:
            return super().basic_get(queue, no_ack=no_ack, **kwargs)
        finally:
            if self.taken is not None:  # no_ack: nothing recorded it, and nothing will ack it
                self._create_client().lrem(self.inflight_key, 1, self.taken)
                self.taken = None

    def _deliver_taken(self, item: bytes, queue: str) -> None:
        """Hand a taken message to kombu, which records it (QoS.append) and calls Celery."""
        self.taken = item
        try:
            self.connection._deliver(loads(item), queue)
        except self.connection_errors:
            raise  # still in flight: restored once this consumer's connections are gone
        except Exception:
            if self.taken is not None:
                # Never recorded (it cannot be decoded): set aside where an operator can see
                # it, rather than handed out again and again.
                log.exception("undeliverable message moved to %s", UNDELIVERABLE_KEY)
                with self._create_client().pipeline() as pipe:
                    pipe.lrem(self.inflight_key, 1, item).lpush(UNDELIVERABLE_KEY, item)
                    pipe.execute()
            raise
        else:
            if self.taken is not None:
                # Not recorded by our QoS: a no_ack consumer, or kombu requeued it through
                # another channel (no consumer for that queue here).
                self._create_client().lrem(self.inflight_key, 1, item)
        finally:
            self.taken = None

    def reap_dead_consumers(self) -> None:
        """Renew this consumer's registration and heartbeat, return what its own in-flight list
        holds while no take is pending, and return the in-flight and unacknowledged messages of
        every dead consumer to their queues. Throttled per channel, a little under
        REAP_INTERVAL so that kombu's timer of that period never skips a renewal."""
        now = time.monotonic()
        if now - self._reaped_at < 0.8 * REAP_INTERVAL:
            return
        self._reaped_at = now
        client = self._create_client()
        if self._registered_consumer:
            # SADD again: a consumer taken for dead (a heartbeat that lapsed while it lived)
            # must be found by the reapers when it really dies.
            with client.pipeline() as pipe:
                pipe.set(heartbeat_key(self.consumer), 1, ex=HEARTBEAT_TTL)
                pipe.sadd(CONSUMERS_KEY, self.consumer)
                pipe.execute()
            if not self._in_poll and self.taken is None:
                # No reply is awaited, so whatever is in flight here was taken by a command
                # whose reply was lost (kombu drops a connection whose BLMOVE went unanswered).
                self._restore_messages(client, self.consumer, unacked=False)
        others = sorted(name.decode() for name in client.smembers(CONSUMERS_KEY)
                        if name.decode() != self.consumer)
        if not others:
            return
        connected = {entry.get("name") for entry in client.client_list(_type="normal")}
        beating = client.mget([heartbeat_key(consumer) for consumer in others])
        for consumer, beat in zip(others, beating, strict=True):
            if consumer not in connected or beat is None:
                self._restore_messages(client, consumer, unacked=True)

    def _restore_messages(self, client: Any, consumer: str, *, unacked: bool) -> None:
        """Back to their queues, in one transaction: ``consumer``'s in-flight messages and, for
        a dead one, its unacknowledged ones (and it is forgotten). An entry that cannot be read
        goes to UNDELIVERABLE_KEY rather than block the rest."""
        inflight = inflight_key(consumer)
        hashes = [f"{base}:{consumer}" for base in self._unacked_base] if unacked else []

        def restore(pipe: Any) -> None:
            taken = pipe.lrange(inflight, 0, -1)
            recorded = pipe.hvals(hashes[0]) if hashes else []
            pipe.multi()
            for raw, kind in [*((raw, "taken") for raw in taken),
                              *((raw, "recorded") for raw in recorded)]:
                try:
                    if kind == "taken":
                        payload = loads(raw)
                        info = payload["properties"]["delivery_info"]
                        exchange, routing_key = info["exchange"], info["routing_key"]
                    else:
                        payload, exchange, routing_key = loads(raw)
                except (ValueError, KeyError, TypeError):
                    log.error("unreadable message of %s moved to %s", consumer, UNDELIVERABLE_KEY)
                    pipe.lpush(UNDELIVERABLE_KEY, raw)
                    continue
                self._do_restore_message(payload, exchange, routing_key, pipe, False)
            pipe.delete(inflight)
            if hashes:
                pipe.delete(*hashes, heartbeat_key(consumer))
                pipe.srem(CONSUMERS_KEY, consumer)

        client.transaction(restore, inflight, *hashes[:1])


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel
