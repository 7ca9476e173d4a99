"""kombu's Redis transport, with one client per channel for its synchronous commands.

kombu's Redis channel builds a new ``redis.Redis`` client for every acknowledgement, every
``unacked`` bookkeeping step and every publish (``Channel.conn_or_acquire``). With redis-py 6+
building a client costs more than the command it sends: profiled on the events worker, a fifth
of the consumer's CPU went into ``Redis.__init__``. A client is only a handle on the channel's
connection pool and is thread-safe, so one per channel serves them all. Everything else, the
BRPOP loop included, is kombu's own.

Selected with Celery's ``broker_transport`` for ``redis://`` brokers (worker/app.py).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        # Dropped with the pools, so a reconnected channel never keeps a client on a closed pool.
        if self._sync_client is None or self._sync_client.connection_pool is not self.pool:
            self._sync_client = super()._create_client()
        return self._sync_client


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel
