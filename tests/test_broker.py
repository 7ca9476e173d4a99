"""eventdesk's Redis transport (worker/broker.py): a message is always in its queue, in one
consumer's in-flight list or in that consumer's unacked hash, and a dead consumer's messages
go back to their queue. Real kombu channels on a private redis-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue

from tests.resilience.harness import RedisServer, private_redis
from worker.broker import CONSUMERS_KEY, UNDELIVERABLE_KEY, Channel, inflight_key

pytestmark = pytest.mark.redis
TRANSPORT = "worker.broker:Transport"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with private_redis(tmp_path, aof=False) as server:
        yield server


def connect(url: str) -> Any:
    return Connection(url, transport=TRANSPORT)


def publish(url: str, *bodies: str, queue: str = "events") -> None:
    with connect(url) as connection:
        producer = connection.Producer()
        for body in bodies:
            producer.publish(body, routing_key=queue, exchange=Exchange(""),
                             declare=[Queue(queue, routing_key=queue)])


def consumer_channel(connection: Any) -> Channel:
    channel: Channel = connection.channel()
    channel.basic_consume("events", False, lambda _: None, "tag")
    return channel


def vanish(channel: Channel) -> None:
    """What a SIGKILL does to a consumer: its sockets close, nothing else runs."""
    channel._disconnect_pools()
    channel._close_clients()


def test_a_taken_message_is_recorded_and_leaves_the_in_flight_list(server: RedisServer) -> None:
    publish(server.url, "one")
    client = redis.Redis.from_url(server.url)
    with connect(server.url) as connection:
        channel = consumer_channel(connection)
        message = channel.basic_get("events")
        assert message.body == b"one"
        assert client.llen("events") == 0
        assert client.llen(inflight_key(channel.consumer)) == 0
        assert client.hlen(channel.unacked_key) == 1
        message.ack()
        assert client.hlen(channel.unacked_key) == 0


def test_a_dead_consumers_messages_return_to_the_queue(server: RedisServer) -> None:
    publish(server.url, "recorded", "taken")
    client = redis.Redis.from_url(server.url)
    dead = connect(server.url)
    channel = consumer_channel(dead)
    # One message recorded as unacknowledged, one moved into the in-flight list and not yet
    # recorded: the two states a kill can leave a message in.
    assert channel.basic_get("events").body == b"recorded"
    client.lmove("events", inflight_key(channel.consumer), "RIGHT", "LEFT")
    assert client.llen("events") == 0
    vanish(channel)

    with connect(server.url) as connection:
        survivor = consumer_channel(connection)
        survivor.reap_dead_consumers()
        assert client.llen("events") == 2
        bodies = {survivor.basic_get("events").body for _ in range(2)}
    assert bodies == {b"recorded", b"taken"}
    assert client.exists(inflight_key(channel.consumer), channel.unacked_key) == 0
    assert channel.consumer.encode() not in client.smembers(CONSUMERS_KEY)
    dead.release()


def test_a_live_consumers_messages_stay_where_they_are(server: RedisServer) -> None:
    publish(server.url, "mine")
    client = redis.Redis.from_url(server.url)
    with connect(server.url) as first, connect(server.url) as second:
        owner = consumer_channel(first)
        owner.basic_get("events")
        consumer_channel(second).reap_dead_consumers()
        assert client.hlen(owner.unacked_key) == 1
        assert client.llen("events") == 0


def test_a_message_taken_without_acknowledgement_leaves_nothing_in_flight(
    server: RedisServer,
) -> None:
    publish(server.url, "once")
    client = redis.Redis.from_url(server.url)
    with connect(server.url) as connection:
        channel = consumer_channel(connection)
        assert channel.basic_get("events", no_ack=True).body == b"once"
        assert client.llen(inflight_key(channel.consumer)) == 0
        assert client.hlen(channel.unacked_key) == 0


@pytest.mark.parametrize("queues", [["events"], ["events", "mail", "notify"]])
def test_an_event_loop_consumer_takes_every_message_and_acknowledges_it(
    server: RedisServer, queues: list[str]
) -> None:
    """One queue: BLMOVE waits on it. Several: the take script asks them all."""
    for queue in queues:
        publish(server.url, f"to {queue}", f"again to {queue}", queue=queue)
    client = redis.Redis.from_url(server.url)
    received: list[str] = []

    def on_message(body: str, message: Any) -> None:
        received.append(body)
        message.ack()

    with connect(server.url) as connection, connection.Consumer(
        [Queue(queue, routing_key=queue) for queue in queues], callbacks=[on_message],
    ) as consumer:
        while len(received) < 2 * len(queues):
            connection.drain_events(timeout=5)
        channel = consumer.channel
        assert client.llen(inflight_key(channel.consumer)) == 0
        assert client.hlen(channel.unacked_key) == 0
    assert sorted(received) == sorted(
        f"{prefix} {queue}" for queue in queues for prefix in ("to", "again to"))


def test_a_live_consumer_returns_what_a_lost_reply_left_in_its_own_list(
    server: RedisServer,
) -> None:
    """kombu drops a connection whose BLMOVE went unanswered; what the server had moved is
    this consumer's to give back, since it will never read that reply."""
    publish(server.url, "orphan")
    client = redis.Redis.from_url(server.url)
    with connect(server.url) as connection:
        channel = consumer_channel(connection)
        client.lmove("events", inflight_key(channel.consumer), "RIGHT", "LEFT")
        channel.reap_dead_consumers()
        assert client.llen(inflight_key(channel.consumer)) == 0
        assert channel.basic_get("events").body == b"orphan"


def test_a_consumer_taken_for_dead_registers_again(server: RedisServer) -> None:
    client = redis.Redis.from_url(server.url)
    with connect(server.url) as connection:
        channel = consumer_channel(connection)
        client.srem(CONSUMERS_KEY, channel.consumer)
        channel.reap_dead_consumers()
        assert channel.consumer.encode() in client.smembers(CONSUMERS_KEY)


def test_an_unreadable_entry_does_not_hold_back_a_dead_consumers_messages(
    server: RedisServer,
) -> None:
    publish(server.url, "good")
    client = redis.Redis.from_url(server.url)
    dead = connect(server.url)
    channel = consumer_channel(dead)
    client.lmove("events", inflight_key(channel.consumer), "RIGHT", "LEFT")
    client.lpush(inflight_key(channel.consumer), b"not json")
    vanish(channel)
    with connect(server.url) as connection:
        consumer_channel(connection).reap_dead_consumers()
    assert client.lrange("events", 0, -1) != []
    assert client.lrange(UNDELIVERABLE_KEY, 0, -1) == [b"not json"]
    dead.release()
