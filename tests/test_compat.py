"""Contracts with the private parts of celery-batches, Celery, kombu, redis-py and psycopg that
worker/events.py, worker/broker.py and shared/ rely on.

Each test names what an upgrade removed or changed, so the failure says where to look instead
of a batch that silently stops flushing.
"""

from __future__ import annotations

import base64
import inspect
import json
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery.concurrency.asynpool import AsynPool
from celery_batches import Batches
from kombu.asynchronous.timer import Timer
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from shared.db import dialect
from tests.conftest import wait_until
from tests.resilience.harness import private_redis
from worker.events import EventBatches, process
from worker.mail import QUIET_FLUSH, MailBatches


class Pool:
    """Records the jobs handed to it; none is ever accepted by a process."""

    def __init__(self) -> None:
        self.jobs: list[Any] = []

    def apply_async(self, *args: Any, **_options: Any) -> SimpleNamespace:
        self.jobs.append(args[1][1][0])  # the SimpleRequests of the job
        return SimpleNamespace(accepted=lambda: False)


def test_batches_keeps_the_attributes_eventbatches_overrides() -> None:
    task = Batches()
    for name in ("_buffer", "_pending", "_tref", "_pool"):
        assert hasattr(task, name), f"celery_batches.Batches has no {name} any more"
    assert list(inspect.signature(Batches._do_flush).parameters) == ["self"], "Batches._do_flush"
    assert list(inspect.signature(Batches.Strategy).parameters) == [
        "self", "task", "app", "consumer"], "Batches.Strategy"


def test_batches_arms_its_timer_only_while_tref_is_none() -> None:
    """If a release re-arms the timer itself (celery-batches #108), EventBatches.Strategy's
    re-arm may be dropped."""
    assert "if self._tref is None" in inspect.getsource(Batches.Strategy), "Batches.Strategy"


def test_prefork_pool_drops_unaccepted_jobs_on_reconnect() -> None:
    """EventBatches.Strategy gives such jobs back to the buffer, asking ``accepted()``."""
    assert "not job._accepted" in inspect.getsource(AsynPool.flush), "AsynPool.flush"


def _consumer(pool: Pool) -> SimpleNamespace:
    return SimpleNamespace(pool=pool, hostname="test@host", connection_errors=(),
                           event_dispatcher=None, timer=Timer())


def _request(number: int) -> SimpleNamespace:
    """What ``_do_flush`` and ``SimpleRequest.from_request`` read of a Celery request."""
    return SimpleNamespace(
        eta=None, args=({"events": [{}]},), _payload=(({"events": [{}]},), {}, {}),
        id=f"request-{number}", name="events.process", delivery_info={}, hostname="test@host",
        reply_to=None, correlation_id=None, request_dict={})


def _run_due(timer: Timer) -> bool:
    """One turn of the event loop's timer: run the entries that are due."""
    entries = iter(timer)
    while (entry := next(entries)[1]) is not None:
        timer.apply_entry(entry)
    return True


def test_reconnect_rearms_the_flush_timer_and_gives_back_dropped_jobs() -> None:
    pool = Pool()
    task = EventBatches()
    consumer = _consumer(pool)
    task.Strategy(task, process.app, consumer)
    task.flush([_request(1)])  # handed to the pool; no process takes it before the reconnect
    task._buffer.put(_request(2))
    task._tref = consumer.timer.call_repeatedly(task.flush_interval, task._do_flush)
    consumer.timer.clear()  # Celery's asynloop, on a connection error

    task.Strategy(task, process.app, consumer)  # Celery's consumer restart
    started = time.monotonic()
    wait_until(lambda: _run_due(consumer.timer) and len(pool.jobs) == 2, 5, 0.01)

    assert time.monotonic() - started < task.flush_interval + 0.5
    assert sorted(request.id for request in pool.jobs[1]) == ["request-1", "request-2"]


def test_a_mail_buffer_goes_soon_after_its_last_message_not_at_the_batch_wait() -> None:
    pool = Pool()
    task = MailBatches()
    task.flush_interval = 60  # the batch wait: never reached here
    consumer = _consumer(pool)
    task.Strategy(task, process.app, consumer)
    # The batch wait's timer, as celery-batches arms it at a stream's first message.
    task._tref = consumer.timer.call_repeatedly(task.flush_interval, task._do_flush)
    started = time.monotonic()
    for number in range(3):  # a short stream: each message moves the flush on
        task._buffer.put(_mail_request(number))
        task.quiet(consumer.timer)
    assert [entry for _, _, entry in consumer.timer.queue
            if not entry.canceled and entry is not task._tref] == [task._quiet]
    wait_until(lambda: _run_due(consumer.timer) and pool.jobs, 5, 0.01)

    assert time.monotonic() - started >= QUIET_FLUSH
    assert [request.id for request in pool.jobs[0]] == ["request-0", "request-1", "request-2"]
    assert task._tref is None  # the next stream's first message starts a whole batch wait


def _mail_request(number: int) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(_request(number)), "args": ([number],),
                              "_payload": (([number],), {}, {}), "name": "mail.process"})


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_kombu_redis_channel_keeps_what_the_atomic_take_overrides() -> None:
    """worker/broker.py replaces the BRPOP of these methods with BLMOVE or the take script."""
    channel = kombu_redis.Channel
    expected = {
        "_brpop_start": ["self", "timeout"], "_brpop_read": ["self", "options"],
        "_get": ["self", "queue"], "_connparams": ["self", "asynchronous"],
        "_create_client": ["self", "asynchronous"], "basic_consume": ["self", "queue", "args",
                                                                      "kwargs"],
        "_do_restore_message": ["self", "payload", "exchange", "routing_key", "pipe",
                                "leftmost"],
        "_flush_brpop_reauth": ["self"], "_disconnect_pools": ["self"],
    }
    for name, parameters in expected.items():
        assert _parameters(getattr(channel, name)) == parameters, f"kombu Redis Channel.{name}"
    for name in ("_queue_cycle", "_in_poll", "_brpop_sent_at", "unacked_key",
                 "unacked_index_key", "unacked_mutex_key", "priority_steps", "global_keyprefix",
                 "brpop_timeout", "connection_errors"):
        assert name in dir(channel) or name in inspect.getsource(channel.__init__), (
            f"kombu Redis Channel.{name}")
    # The poller sends the next command when none is pending, and reads replies by this name.
    assert "channel._brpop_start()" in inspect.getsource(kombu_redis.MultiChannelPoller)
    assert "'BRPOP': self._brpop_read" in inspect.getsource(channel.__init__)


def test_kombu_records_a_delivered_message_before_celery_sees_it() -> None:
    """QoS.append must run inside ``_deliver`` (it removes the message from the in-flight list
    in the same MULTI as kombu's bookkeeping), and kombu's QoS.append must still be this."""
    assert "self.qos.append(message, message.delivery_tag)" in inspect.getsource(
        virtual.Channel.basic_consume), "virtual.Channel.basic_consume"
    assert _parameters(kombu_redis.QoS.append) == ["self", "message", "delivery_tag"]
    assert _parameters(virtual.QoS.append) == ["self", "message", "delivery_tag"]
    source = inspect.getsource(kombu_redis.QoS.append)
    for step in ("self.unacked_index_key", "self.unacked_key", "message._raw"):
        assert step in source, f"kombu Redis QoS.append no longer writes {step}"
    assert "restore_visible" in inspect.getsource(kombu_redis.MultiChannelPoller.on_poll_init)


# What may differ between a message Celery sends and one shared/messaging/publish.py writes: ids,
# who sent it, the reprs Celery adds for its monitors, and the reply queue of a result we never
# read.
VARYING = {"id", "root_id", "correlation_id", "delivery_tag", "reply_to", "origin", "argsrepr",
           "kwargsrepr", "ignore_result"}


@pytest.mark.redis
def test_the_hand_built_envelope_is_what_celery_sends(
    tmp_path: Path, configure: Callable[..., None]
) -> None:
    """shared/messaging/publish.py writes kombu's Redis envelope by hand: it must stay, field for
    field, what Celery's own producer sends for the same task, or the worker cannot read it."""
    from shared.messaging.publish import RedisPublisher, task_message
    from worker.app import make_celery

    args = [{"events": [{"transid": "t1"}]}]
    with private_redis(tmp_path, aof=False) as server:
        configure(broker_url=server.url)
        make_celery().send_task("events.process", args=args, queue="events")
        RedisPublisher(server.url, 100, 100).publish(
            task_message("events.process", "events", json.dumps(args)), {})
        client = redis.Redis.from_url(server.url)
        celery_sent, ours = (json.loads(raw) for raw in reversed(client.lrange("events", 0, -1)))
    assert set(ours) == set(celery_sent), "envelope keys"
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(
        base64.b64decode(celery_sent["body"])), "body: [args, kwargs, embed]"
    for part in ("headers", "properties"):
        # Celery's stamping headers are optional for the worker that reads the message.
        missing = set(celery_sent[part]) - set(ours[part]) - {
            "stamps", "stamped_headers", "replaced_task_nesting"}
        assert not missing, f"{part} the envelope lacks"
        assert not set(ours[part]) - set(celery_sent[part]), f"{part} Celery does not send"
        for name in set(ours[part]) - VARYING:
            assert ours[part][name] == celery_sent[part][name], f"{part}.{name}"
    for name in set(ours) - {"body", "headers", "properties"}:
        assert ours[name] == celery_sent[name], name


def test_redis_py_connection_keeps_what_the_lua_publish_calls() -> None:
    """shared/messaging/publish.LuaScript makes redis-py Connections as the pool would, and talks
    to them directly, skipping the client."""
    connection = redis.Connection
    for name in ("send_command", "read_response", "can_read", "disconnect"):
        assert callable(getattr(connection, name, None)), f"redis.Connection.{name}"
    assert isinstance(getattr(connection, "is_connected", None), property), (
        "redis.Connection.is_connected")
    pool = redis.ConnectionPool.from_url("redis://127.0.0.1:1/0", client_name="x")
    assert issubclass(pool.connection_class, redis.Connection), "ConnectionPool.connection_class"
    assert pool.connection_kwargs["client_name"] == "x", "ConnectionPool.connection_kwargs"
    assert issubclass(redis.exceptions.NoScriptError, redis.ResponseError), "NoScriptError"


def test_kombu_sqlalchemy_transport_polls_by_its_class_attribute() -> None:
    """worker/app.py sets ``Transport.polling_interval`` on kombu's SQLAlchemy transport (its
    options all go to create_engine)."""
    from kombu.transport import sqlalchemy

    assert isinstance(sqlalchemy.Transport.polling_interval, int | float), (
        "kombu.transport.sqlalchemy.Transport.polling_interval")


def test_psycopg_keeps_the_conversion_of_insert_fews_statements() -> None:
    """dialect.insert_few gives psycopg at most FEW_PARAMETERS values: a query of more, or a
    longer one, is converted anew at every execution (psycopg's own limits), costing what
    insert_few saves. Its longest statement: every column of the mail table, as many rows as
    fit."""
    from psycopg import _queries

    from shared.db.models import MailMessage

    assert dialect.FEW_PARAMETERS <= _queries.MAX_CACHED_STATEMENT_PARAMS, (
        "psycopg._queries.MAX_CACHED_STATEMENT_PARAMS")
    names = tuple(MailMessage.__table__.c.keys())
    longest = dialect._values_insert(MailMessage, names, dialect.FEW_PARAMETERS // len(names),
                                     ("transid", "id"), ("account_id", "message_id"))
    assert len(longest) <= _queries.MAX_CACHED_STATEMENT_LENGTH, (
        "psycopg._queries.MAX_CACHED_STATEMENT_LENGTH")


@pytest.mark.parametrize("kind", ["Connection", "AsyncConnection"])
def test_psycopg_keeps_the_wait_that_the_deadline_connections_override(kind: str) -> None:
    """shared/db/engine.py's _DeadlineConnection and _DeadlineAsyncConnection give psycopg's
    ``wait`` a timeout of their own and catch its private ``_WaitTimeout``: without them a
    black-holed database holds a worker, an api request or an SMTP session forever."""
    import psycopg

    assert issubclass(psycopg.errors._WaitTimeout, Exception), "psycopg.errors._WaitTimeout"
    parameters = list(inspect.signature(getattr(psycopg, kind).wait).parameters)
    assert parameters[:4] == ["self", "gen", "interval", "timeout"], f"psycopg.{kind}.wait"
