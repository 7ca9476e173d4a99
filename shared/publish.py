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
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from kombu import Connection, Exchange, Queue
from kombu.pools import producers

EVENTS_QUEUE = "events"
NOTIFY_QUEUE = "notify"
MAIL_QUEUE = "mail"
QUEUES = (EVENTS_QUEUE, MAIL_QUEUE, NOTIFY_QUEUE)

_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_EMBED = '{"callbacks":null,"errbacks":null,"chain":null,"chord":null}'


class PublishError(Exception):
    """The broker did not take the message: nothing was queued."""


@dataclass(frozen=True)
class Limited:
    """The rate limit refused: retry after this many seconds."""

    retry_after: float


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
    def publish(self, message: TaskMessage, limit_key: str, cost: int) -> Limited | None:
        """Rate-limit ``cost`` units on ``limit_key``, then queue. None means queued."""

    def ping(self) -> None:
        """Raise if the broker is unreachable."""


# KEYS: bucket, queue. ARGV: rate/s, burst, cost, message ('' = check only).
_BUCKET_AND_PUSH = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
if tokens < cost then
  return tostring((cost - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - cost), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
if ARGV[4] ~= '' then
  redis.call('LPUSH', KEYS[2], ARGV[4])
end
return '0'
"""


class RedisLimiter:
    """Token bucket per key, shared by every api process through Redis."""

    def __init__(self, client: redis.Redis, rate: float, burst: int) -> None:
        self._client = client
        self._script = client.register_script(_BUCKET_AND_PUSH)
        self._rate = rate
        self._burst = burst

    def take(self, limit_key: str, cost: int, queue: str = "", payload: str = "") -> Limited | None:
        # A request larger than the burst could never pass; charge it as a full bucket instead.
        cost = min(cost, self._burst)
        wait = float(self._script(
            keys=[f"eventdesk:rl:{limit_key}", queue or "-"],
            args=[self._rate, self._burst, cost, payload],
        ))
        return Limited(wait) if wait > 0 else None


class LocalLimiter:
    """The same bucket in process memory, for the embedded mode with no Redis."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, limit_key: str, cost: int) -> Limited | None:
        cost = min(cost, self._burst)
        now = time.monotonic()
        with self._lock:
            tokens, ts = self._buckets.get(limit_key, (float(self._burst), now))
            tokens = min(float(self._burst), tokens + (now - ts) * self._rate)
            if tokens < cost:
                return Limited((cost - tokens) / self._rate)
            self._buckets[limit_key] = (tokens - cost, now)
        return None


class RedisPublisher:
    """Writes kombu's Redis envelope straight onto the queue's list, in the limiter's Lua call."""

    def __init__(self, url: str, rate: float, burst: int) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self._limiter = RedisLimiter(self._client, rate, burst)

    def publish(self, message: TaskMessage, limit_key: str, cost: int) -> Limited | None:
        envelope = json.dumps({
            "body": base64.b64encode(message.body.encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": message.headers(),
            "properties": {
                "correlation_id": message.task_id, "reply_to": "", "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": message.queue},
                "priority": 0, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
            },
        })
        try:
            return self._limiter.take(limit_key, cost, message.queue, envelope)
        except redis.RedisError as exc:
            raise PublishError(str(exc)) from exc

    def ping(self) -> None:
        self._client.ping()


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
        exchange = Exchange("", type="direct")
        self._queues = {
            name: Queue(name, exchange, routing_key=name, durable=True) for name in QUEUES
        }

    def publish(self, message: TaskMessage, limit_key: str, cost: int) -> Limited | None:
        try:
            limited = self._limiter.take(limit_key, cost)
        except redis.RedisError as exc:
            raise PublishError(str(exc)) from exc
        if limited is not None:
            return limited
        queue = self._queues[message.queue]
        try:
            with producers[self._connection].acquire(block=True, timeout=5) as producer:
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
                )
        except Exception as exc:  # kombu raises the transport's own errors, whichever broker
            raise PublishError(f"{type(exc).__name__}: {exc}") from exc
        return None

    def ping(self) -> None:
        with self._connection.clone() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)


def make_publisher(broker_url: str, redis_url: str | None, rate: float, burst: int) -> Publisher:
    if broker_url.startswith(("redis://", "rediss://")) and redis_url == broker_url:
        return RedisPublisher(broker_url, rate, burst)
    limiter: RedisLimiter | LocalLimiter
    if redis_url:
        limiter = RedisLimiter(redis.Redis.from_url(redis_url, socket_timeout=5), rate, burst)
    else:
        limiter = LocalLimiter(rate, burst)
    return KombuPublisher(broker_url, limiter)
