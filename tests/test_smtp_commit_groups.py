"""The SMTP listener's group commit (api/smtp.py's CommitGroups): the DATA of sessions that
arrive while a commit runs go together as the next group, each session learns its own outcome,
and a session that went away does not stop the others. The database side (MailIntake.commit)
is covered over real SMTP and PostgreSQL by test_mail_smtp.py and test_mail_processing.py."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

from api.smtp import CommitGroups
from shared.mail.queries import Destination
from shared.mail.service import Accepting
from shared.mail.store import NewMail


def entry(number: int) -> Accepting:
    return Accepting(NewMail(transid=f"t{number}", destination=Destination("wdc", None, "wdc@x"),
                             message_id=f"m{number}", raw=b"Subject: x\r\n\r\nx", peer="smtp",
                             now=datetime.now(UTC)))


class HeldIntake:
    """Commits in a thread as MailIntake does on SQLite; the first commit waits for
    ``release``."""

    def __init__(self, fail: bool = False) -> None:
        self.groups: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self._fail = fail

    async def commit_async(self, group: list[Accepting]) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.commit, group)

    def commit(self, group: list[Accepting]) -> None:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(10)
        self.groups.append([item.transid for item in group])
        if self._fail:
            raise RuntimeError("bug")
        for item in group:
            item.mail_id = int(item.transid[1:])


async def crowd(intake: HeldIntake, cancel_one: bool = False) -> list[Accepting]:
    """Sessions of one message each, but the last one's, for two recipients."""
    groups = CommitGroups(intake)  # type: ignore[arg-type]
    entries = [entry(number) for number in range(6)]
    first = asyncio.create_task(groups.commit(entries[:1]))
    await asyncio.get_running_loop().run_in_executor(None, intake.entered.wait, 10)
    others = [asyncio.create_task(groups.commit(message))
              for message in ([item] for item in entries[1:4])] + [
        asyncio.create_task(groups.commit(entries[4:]))]
    await asyncio.sleep(0)  # let each of them reach its wait
    if cancel_one:
        others[-1].cancel()  # its connection dropped while it waited (two recipients)
    intake.release.set()
    await asyncio.wait_for(asyncio.gather(first, *others, return_exceptions=True), 10)
    return entries


def test_sessions_arriving_during_a_commit_are_the_next_group() -> None:
    intake = HeldIntake()
    entries = asyncio.run(crowd(intake))
    assert intake.groups == [["t0"], ["t1", "t2", "t3", "t4", "t5"]]
    assert [item.mail_id for item in entries] == [0, 1, 2, 3, 4, 5]
    assert all(item.error is None for item in entries)


def test_a_session_gone_while_it_waited_does_not_stop_its_group() -> None:
    intake = HeldIntake()
    entries = asyncio.run(crowd(intake, cancel_one=True))
    # Committed all the same, both recipients' (the sender will send it again and find it
    # stored), and the others with it.
    assert intake.groups == [["t0"], ["t1", "t2", "t3", "t4", "t5"]]
    assert [item.mail_id for item in entries] == [0, 1, 2, 3, 4, 5]


def test_an_unexpected_error_of_a_commit_is_every_session_s_error_of_its_group() -> None:
    entries = asyncio.run(crowd(HeldIntake(fail=True)))
    assert [str(item.error) for item in entries] == ["bug"] * 6
