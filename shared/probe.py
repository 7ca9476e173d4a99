"""Ask the broker how many messages wait, and whether the broker and the database answer.

Read by the worker's metrics exporter at scrape time (``eventdesk_queue_depth``,
``eventdesk_dependency_up``); every look-up has a short timeout, so a dead dependency makes a
scrape a couple of seconds slower, never hang.

- Redis: ``LLEN`` of each queue's list (eventdesk publishes without priorities, so the list
  named after the queue holds every message).
- RabbitMQ: a passive ``queue.declare``, whose answer carries the ready-message count.
- kombu's SQLAlchemy transport (embedded mode): the transport's own count of visible messages.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import suppress

import redis
from kombu import Connection
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

TIMEOUT = 2.0


class Probe:
    def __init__(self, broker_url: str, database_url: str, queues: Iterable[str]) -> None:
        self._broker_url = broker_url
        self._database_url = database_url
        self._queues = tuple(queues)
        self._redis: redis.Redis | None = None
        if broker_url.startswith(("redis://", "rediss://")):
            self._redis = redis.Redis.from_url(
                broker_url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
            )
        connect_args: dict[str, object] = (
            {"timeout": TIMEOUT} if database_url.startswith("sqlite")
            else {"connect_timeout": int(TIMEOUT)}
        )
        # Its own engine without a pool: one short connection per probe, never a worker's.
        self._engine = create_engine(database_url, poolclass=NullPool, connect_args=connect_args)

    def __call__(self) -> tuple[dict[str, int | None], dict[str, bool]]:
        depths: dict[str, int | None]
        try:
            depths = self.queue_depths()
            broker_up = True
        except Exception:  # any transport's failure means "unreachable"
            depths = dict.fromkeys(self._queues)
            broker_up = False
        return depths, {"broker": broker_up, "database": self.database_up()}

    def queue_depths(self) -> dict[str, int | None]:
        if self._redis is not None:
            pipe = self._redis.pipeline(transaction=False)
            for queue in self._queues:
                pipe.llen(queue)
            return dict(zip(self._queues, (int(n) for n in pipe.execute()), strict=True))
        options: dict[str, object] = {}
        if self._broker_url.startswith("sqla+"):
            options["connect_args"] = {"timeout": TIMEOUT}
        with Connection(self._broker_url, connect_timeout=TIMEOUT,
                        transport_options=options) as connection:
            connection.ensure_connection(max_retries=1, timeout=TIMEOUT)
            channel = connection.default_channel
            if self._broker_url.startswith(("amqp", "pyamqp")):
                return {queue: self._amqp_depth(connection, queue) for queue in self._queues}
            return {queue: int(channel._size(queue)) for queue in self._queues}

    @staticmethod
    def _amqp_depth(connection: Connection, queue: str) -> int | None:
        # A passive declare of a queue that does not exist (yet) closes the channel: use one
        # channel per queue so the others can still be asked.
        channel = connection.channel()
        try:
            return int(channel.queue_declare(queue=queue, passive=True).message_count)
        except connection.channel_errors:
            return None
        finally:
            with suppress(Exception):  # the broker may already have closed it
                channel.close()

    def database_up(self) -> bool:
        try:
            with self._engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception:  # any driver's failure means "unreachable"
            return False
        return True
