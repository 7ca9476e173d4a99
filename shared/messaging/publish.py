"""Publishing tasks from the api, cheaply, and the per-key rate limit.

The api publishes Celery protocol-2 messages by task name (it never imports the worker). A default
``apply_async`` costs several times a raw Redis push (DESIGN 2), so messages are built here from a
pre-serialised body, and on Redis the rate-limit check and the push are one Lua call: one round
trip answers "allowed and queued" or "wait this long". Other brokers (RabbitMQ, kombu's SQLAlchemy
transport) go through a pooled kombu producer with publisher confirms where the broker has them;
their rate limit is a separate Redis call, or in-process when there is no Redis at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import redis
from kombu import Connection, Exchange, Queue
from kombu.pools import producers

from shared.messaging import QUEUES

_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_EMBED = '{"callbacks":null,"errbacks":null,"chain":null,"chord":null}'


class PublishError(Exception):
    """The broker did not take the message: nothing was queued."""


@dataclass(frozen=True)
class Limited:
    """The rate limit refused: retry after this many seconds."""

    retry_after: float

    @property
    def header(self) -> str:
        """The ``Retry-After`` header: whole seconds, at least 1."""
        return str(max(1, int(self.retry_after + 0.999)))


@dataclass(frozen=True)
class TaskMessage:
    task: str
    task_id: str
    queue: str
    body: str  # JSON text of [args, kwargs, embed]

    def headers(self) -> dict[str, Any]:
        return {
            "lang": "py", "task": self.task, "id": self.task_id, "shadow": None, "eta": None,
            "expires": None, "group": None, "group_index": None, "retries": 0,
            "timelimit": [None, None], "root_id": self.task_id, "parent_id": None,
            "argsrepr": "", "kwargsrepr": "", "origin": _ORIGIN, "ignore_result": True,
        }


def task_message(task: str, queue: str, args_json: str) -> TaskMessage:
    """A message for ``task`` whose positional arguments are the JSON array ``args_json``."""
    return TaskMessage(task, uuid.uuid4().hex, queue, f"[{args_json},{{}},{_EMBED}]")


class Publisher(Protocol):
    def publish(self, message: TaskMessage, costs: Mapping[str, int]) -> Limited | None:
        """Take each limit key's cost from its bucket, all or none, then queue.

        None means queued; a :class:`Limited` means a bucket refused and nothing was taken or
        queued. Raises PublishError when the broker did not take the message.
        """

    def ping(self) -> None:
        """Raise if the broker is unreachable."""


# KEYS: queue, bucket... ARGV: rate/s, burst, message ('' = check only), cost of each bucket.
# Every bucket is checked before any is charged, so a refusal takes nothing.
_BUCKETS_AND_PUSH = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local left = {}
for i = 2, #KEYS do
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens = tonumber(state[1]) or burst
  local ts = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
  local cost = tonumber(ARGV[i + 2])
  if tokens < cost then
    return tostring((cost - tokens) / rate)
  end
  left[i] = tokens - cost
end
for i = 2, #KEYS do
  redis.call('HSET', KEYS[i], 'tokens', tostring(left[i]), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[i], math.ceil(burst / rate) + 1)
end
if ARGV[3] ~= '' then
  redis.call('LPUSH', KEYS[1], ARGV[3])
end
return '0'
"""


class LuaScript:
    """One Lua script, called with EVALSHA on a Redis connection held only for the call.

    redis-py's ``Redis.execute_command`` (pool checkout, retry and observability wrappers) costs
    several times the round trip itself on the hot path, so a call takes an idle connection of
    this script's own (a lock-free deque) and talks to it directly. Held per call, not per
    thread: callers that come and go (the mail intake's wake-up thread lives for one stream)
    reuse the same few connections, as many as ever called at once. redis-py's pool would count
    every connection a thread kept and never released, and refuse the 101st ("Too many
    connections"): the mail listener then stopped queueing anything. A connection made before a
    fork is never reused by the child. No retry here: a command that may have run is not sent
    twice. What redis-py's pool does on checkout is kept: an idle connection that has something
    to read (the server closed it, say after a Redis restart) is reconnected before the command
    is sent, so that is not an error.
    """

    def __init__(self, url: str, script: str) -> None:
        self._pool = redis.ConnectionPool.from_url(
            url, socket_timeout=5, socket_connect_timeout=2, client_name="eventdesk-api",
        )
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 - Redis's script id
        self._pid = os.getpid()
        self._idle: deque[Any] = deque()

    def _connection(self) -> Any:
        if self._pid != os.getpid():  # a forked child: the parent's sockets are not its own
            self._idle = deque()
            self._pid = os.getpid()
        try:
            connection = self._idle.pop()
        except IndexError:
            return self._pool.connection_class(**self._pool.connection_kwargs)
        if not connection.is_connected:  # ended by an error: it connects on the command
            return connection
        try:
            stale = connection.can_read()  # nothing is owed on an idle connection
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            stale = True
        if stale:
            connection.disconnect()  # connects again on the command
        return connection

    def __call__(self, keys: list[str], args: list[Any]) -> Any:
        connection = self._connection()
        try:
            try:
                connection.send_command("EVALSHA", self._sha, len(keys), *keys, *args)
                return connection.read_response()
            except redis.exceptions.NoScriptError:  # a restarted or flushed Redis: load it again
                connection.send_command("EVAL", self._script, len(keys), *keys, *args)
                return connection.read_response()
        except redis.ResponseError:
            raise
        except BaseException:
            # Whatever happened mid-command, the connection's state is unknown: start afresh.
            connection.disconnect()
            raise
        finally:
            self._idle.append(connection)

    def ping(self) -> None:
        redis.Redis(connection_pool=self._pool).ping()


class RedisLimiter:
    """Token bucket per key, shared by every api process through Redis."""

    def __init__(self, url: str, rate: float, burst: int) -> None:
        self._script = LuaScript(url, _BUCKETS_AND_PUSH)
        self._rate = rate
        self._burst = burst

    def take(
        self, costs: Mapping[str, int], queue: str = "", payload: str = ""
    ) -> Limited | None:
        """Charge every bucket its cost, or none; then push ``payload`` onto ``queue``, if any."""
        keys = [queue or "-", *(f"eventdesk:rl:{key}" for key in costs)]
        # A request larger than the burst could never pass; charge it as a full bucket instead.
        charges = [min(cost, self._burst) for cost in costs.values()]
        wait = float(self._script(keys, [self._rate, self._burst, payload, *charges]))
        return Limited(wait) if wait > 0 else None

    def ping(self) -> None:
        self._script.ping()


class LocalLimiter:
    """The same bucket in process memory, for the embedded mode with no Redis."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, costs: Mapping[str, int]) -> Limited | None:
        now = time.monotonic()
        with self._lock:
            left: dict[str, tuple[float, float]] = {}
            for key, asked in costs.items():
                cost = min(asked, self._burst)
                tokens, ts = self._buckets.get(key, (float(self._burst), now))
                tokens = min(float(self._burst), tokens + (now - ts) * self._rate)
                if tokens < cost:
                    return Limited((cost - tokens) / self._rate)
                left[key] = (tokens - cost, now)
            self._buckets.update(left)
        return None


# Markers in an envelope template; neither can occur in a task or queue name or the origin.
_ID, _BODY = "@ID@", "@BODY@"


@lru_cache(maxsize=16)
def _envelope_template(task: str, queue: str) -> str:
    """kombu's Redis envelope for ``task`` on ``queue``, with markers for the task id and body.

    Only those two change from message to message, and both need no JSON escaping (hex,
    base64), so each message is two replacements instead of serialising the envelope anew.
    """
    return json.dumps({
        "body": _BODY,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": TaskMessage(task, _ID, queue, "").headers(),
        "properties": {
            "correlation_id": _ID, "reply_to": "", "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            # The task id is already unique: it serves as kombu's delivery tag too.
            "priority": 0, "body_encoding": "base64", "delivery_tag": _ID,
        },
    })


class RedisPublisher:
    """Writes kombu's Redis envelope straight onto the queue's list, in the limiter's Lua call."""

    def __init__(self, url: str, rate: float, burst: int) -> None:
        self._limiter = RedisLimiter(url, rate, burst)

    def publish(self, message: TaskMessage, costs: Mapping[str, int]) -> Limited | None:
        body = base64.b64encode(message.body.encode()).decode()
        envelope = _envelope_template(message.task, message.queue).replace(
            _ID, message.task_id).replace(_BODY, body)
        try:
            return self._limiter.take(costs, message.queue, envelope)
        except redis.RedisError as exc:
            raise PublishError(str(exc)) from exc

    def ping(self) -> None:
        self._limiter.ping()


def _broker_queues() -> dict[str, Queue]:
    exchange = Exchange("", type="direct")
    return {name: Queue(name, exchange, routing_key=name, durable=True) for name in QUEUES}


def declare_queues(broker_url: str) -> None:
    """Create every queue on the broker; a queue that exists already is left as it is.

    ``eventdesk run`` does this before it starts its processes: kombu's SQLAlchemy transport
    creates its tables and queue rows on first use, and two processes doing that at the same
    moment (the worker starting, the api's first publish) can make the publish fail.
    """
    with Connection(broker_url, connect_timeout=5) as connection:
        channel = connection.default_channel
        for queue in _broker_queues().values():
            queue(channel).declare()


# How long each step of a publish waits (for a producer; on RabbitMQ, to write the message and
# for its confirm; kombu's Redis and SQLAlchemy transports take no such limit). A RabbitMQ that
# stops answering (a dropped route; a resource alarm blocks publishers) is then an answer in
# seconds (503, the caller tries again) rather than a request held open for as long as it
# lasts. After a write or confirm timed out, the broker may yet take the message when it
# answers again: an event the caller sends again is then processed twice.
PUBLISH_TIMEOUT = 5.0


class KombuPublisher:
    """Any kombu transport through a producer pool; RabbitMQ with publisher confirms."""

    def __init__(self, url: str, limiter: RedisLimiter | LocalLimiter) -> None:
        options: dict[str, Any] = {"max_retries": 1}
        if url.startswith(("amqp", "pyamqp")):
            options["confirm_publish"] = True
        elif url.startswith("sqla+"):
            options["connect_args"] = {"timeout": 30}
        self._connection = Connection(url, transport_options=options, connect_timeout=5)
        self._limiter = limiter
        self._queues = _broker_queues()

    def publish(self, message: TaskMessage, costs: Mapping[str, int]) -> Limited | None:
        try:
            limited = self._limiter.take(costs)
        except redis.RedisError as exc:
            raise PublishError(str(exc)) from exc
        if limited is not None:
            return limited
        queue = self._queues[message.queue]
        try:
            with producers[self._connection].acquire(
                    block=True, timeout=PUBLISH_TIMEOUT) as producer:
                try:
                    producer.publish(
                        message.body.encode(),
                        routing_key=message.queue,
                        exchange="",
                        declare=[queue],
                        content_type="application/json",
                        content_encoding="utf-8",
                        headers=message.headers(),
                        correlation_id=message.task_id,
                        delivery_mode=2,
                        retry=False,
                        timeout=PUBLISH_TIMEOUT,  # the write, and the wait for the confirm
                    )
                except Exception:
                    # Failed part-way, this connection may still owe the message's confirm,
                    # which would be taken for the next message's: the next publish connects
                    # afresh (collect: no closing handshake with a broker that may not answer).
                    producer.connection.collect()
                    raise
        except Exception as exc:  # kombu raises the transport's own errors, whichever broker
            raise PublishError(f"{type(exc).__name__}: {exc}") from exc
        return None

    def ping(self) -> None:
        with self._connection.clone() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)


def make_publisher(broker_url: str, redis_url: str | None, rate: float, burst: int) -> Publisher:
    if broker_url.startswith(("redis://", "rediss://")) and redis_url == broker_url:
        return RedisPublisher(broker_url, rate, burst)
    limiter: RedisLimiter | LocalLimiter = (
        RedisLimiter(redis_url, rate, burst) if redis_url else LocalLimiter(rate, burst)
    )
    return KombuPublisher(broker_url, limiter)
