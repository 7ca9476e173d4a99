"""The SMTP listener, or the mail workers, killed (SIGKILL) while mail streams in (issue 12,
DESIGN 6).

Eight senders stream distinct messages over SMTP, as MTAs do: a message that got no 250 (its
connection died with the listener, or the listener was down) is sent again, with the same
Message-ID, until it gets one. The listener is killed several times and started again on the same
port; or two workers share the ``mail`` queue and are killed (a whole worker, or its pool
processes) and started again, mid-run. Every message must become exactly one request: none lost
(a 250 is a stored row), none duplicated (a resent message is the stored one, a run is one
transaction), none stuck (a row stored by a listener that died before its publish is queued
again by the resend; a run that died is rolled back, and the tasks that name its messages are
delivered again).
"""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bench.servers import free_port
from shared.db.engine import session_scope
from shared.db.models import MailMessage, Request
from tests.conftest import REPO, Worker, load_demo, throwaway_database, wait_until
from tests.resilience.harness import WorkerKiller, broker, service_env

pytestmark = [pytest.mark.resilience, pytest.mark.postgres]

MESSAGES = 1200
SENDERS = 8
KILLS = 4
RECIPIENT = "wdc@mail.eventdesk.local"


class Listener:
    """``python -m api.smtp`` on a fixed port, killed and started again."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "EVENTDESK_SMTP_METRICS_PORT": "0",
                    "EVENTDESK_SMTP_PEER_CONNECTIONS": "100",
                    "EVENTDESK_SMTP_PEER_MESSAGES_PER_MINUTE": "1000000"}
        self.log = log.open("a")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api.smtp", "--port", str(self.port)], cwd=REPO,
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(self._answers, 30, 0.05)

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError("smtp did not start")
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=2) as smtp:
                return smtp.noop()[0] == 250
        except OSError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.log.close()


@contextmanager
def running(listener: Listener) -> Iterator[Listener]:
    listener.start()
    try:
        yield listener
    finally:
        listener.stop()


class Senders:
    """Messages sent until each has its 250, counting what had to be sent again."""

    def __init__(self, port: int, pause: float = 0.0) -> None:
        self.port = port
        self.pause = pause  # between a sender's messages: a stream that lasts
        self.run = uuid.uuid4().hex[:8]
        self.accepted = 0
        self.resent = 0
        self._lock = threading.Lock()

    def message(self, number: int) -> bytes:
        mail = EmailMessage()
        mail["From"] = "ellen.brown@widget.com"
        mail["To"] = RECIPIENT
        mail["Subject"] = f"resilience {self.run}-{number}"
        mail["Message-ID"] = f"<{self.run}-{number}@widget.com>"
        mail.set_content(f"Message {number} of run {self.run}.")
        return bytes(mail)

    def send(self, numbers: range) -> None:
        smtp: smtplib.SMTP | None = None
        for number in numbers:
            raw = self.message(number)
            while True:
                try:
                    if smtp is None:
                        smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
                    smtp.sendmail("ellen.brown@widget.com", [RECIPIENT], raw)
                    break
                except (OSError, smtplib.SMTPException):
                    # No 250 (the listener died, or is down): the MTA keeps it and tries again.
                    with self._lock:
                        self.resent += 1
                    if smtp is not None:
                        smtp.close()
                    smtp = None
                    time.sleep(0.05)
            with self._lock:
                self.accepted += 1
            time.sleep(self.pause)
        if smtp is not None:
            smtp.quit()

    def send_all(self) -> None:
        per = -(-MESSAGES // SENDERS)
        with ThreadPoolExecutor(SENDERS) as pool:
            for future in [pool.submit(self.send, range(i * per, min(MESSAGES, (i + 1) * per)))
                           for i in range(SENDERS)]:
                future.result()


def test_mail_answered_250_by_killed_listeners_becomes_one_request_each(tmp_path: Path) -> None:
    with (throwaway_database("eventdesk_smtpkill") as database,
          broker("redis", tmp_path / "broker") as url):
        load_demo(database)
        env = service_env(url, database)
        worker = Worker(env, tmp_path / "worker.log")
        listener = Listener(env, tmp_path / "smtp.log")
        try:
            with running(listener):
                senders = Senders(listener.port)
                killer = threading.Thread(target=kill_while_sending, args=(listener, senders))
                killer.start()
                senders.send_all()
                killer.join()
                tally = wait_until(
                    lambda: settled(database, senders.run, tmp_path / "smtp.log"), 120, 0.5)
        finally:
            worker.stop()

    print(f"\n{KILLS} listeners killed; {senders.resent} sends without a 250 (sent again); "
          f"{tally}")
    assert senders.accepted == MESSAGES
    assert senders.resent > 0, "no kill hit a message: the kills proved nothing"
    assert tally == {"processed": MESSAGES, "requests": MESSAGES, "duplicated": 0}


@pytest.mark.parametrize("what", ["whole worker", "pool processes"])
def test_mail_processed_by_killed_workers_becomes_one_request_each(
    what: str, tmp_path: Path,
) -> None:
    with (throwaway_database("eventdesk_mailworkerkill") as database,
          broker("redis", tmp_path / "broker") as url):
        load_demo(database)
        env = service_env(url, database)
        killer = WorkerKiller(env, tmp_path, "mail", whole=what == "whole worker", every=0.7)
        listener = Listener(env, tmp_path / "smtp.log")
        try:
            with running(listener):
                senders = Senders(listener.port, pause=SENDERS / 150)  # about 150 a second
                killer.start()
                senders.send_all()
                killer.stop()
                tally = wait_until(
                    lambda: settled(database, senders.run, tmp_path / "smtp.log"), 120, 0.5)
        finally:
            killer.close()

    print(f"\n{what} killed {killer.kills} times; {tally}")
    assert killer.kills >= 3, "the stream ended before the kills began"
    assert senders.accepted == MESSAGES
    assert tally == {"processed": MESSAGES, "requests": MESSAGES, "duplicated": 0}


def kill_while_sending(listener: Listener, senders: Senders) -> None:
    """Each time another MESSAGES / (KILLS + 1) have their 250, SIGKILL the listener and start
    it again on the same port."""
    def due(kill: int) -> Callable[[], bool]:
        return lambda: senders.accepted >= kill * MESSAGES // (KILLS + 1)

    for kill in range(1, KILLS + 1):
        wait_until(due(kill), 120, 0.005)
        listener.kill()
        time.sleep(0.2)  # a moment down: senders meet a refused connection too
        listener.start()


def assert_all_queued(log: Path) -> None:
    """The broker is up all along: every stored message's task is queued at once, none left
    for the sweep, which comes only minutes later (the run would never settle in time)."""
    unqueued = [line for line in log.read_text().splitlines() if "not queued" in line]
    assert not unqueued, unqueued[:3]


def settled(database: str, run: str, log: Path) -> dict[str, int] | None:
    """What became of the run's messages, once none is left unprocessed."""
    assert_all_queued(log)
    with session_scope(database) as session:
        statuses = dict(session.execute(
            select(MailMessage.status, func.count()).where(
                MailMessage.message_id.like(f"{run}-%")).group_by(MailMessage.status)).all())
        copies = session.execute(
            select(Request.source_id, func.count()).where(
                Request.source_id.like(f"{run}-%")).group_by(Request.source_id)).all()
    if statuses.get("received", 0) or sum(statuses.values()) < MESSAGES:
        return None
    return {"processed": statuses.get("processed", 0), "requests": len(copies),
            "duplicated": sum(count - 1 for _, count in copies)}
