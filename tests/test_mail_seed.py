"""The 4me Mail API seed's rules over real SMTP: smtplib to a running ``eventdesk smtp``, a real
Celery worker (RabbitMQ + PostgreSQL, configured for mail: a trusted authserv-id, a test relay
for 'Email Rejected' replies, attachments in a directory, no reference cache), read back through
the api as a user would.

Each test uses subjects, sources and senders of its own, so event matching never folds one
test's mail into another's.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from flask.testing import FlaskClient
from sqlalchemy import select

from api import create_app
from shared.db.engine import session_scope
from shared.db.models import Account, MailAttachment, MailMessage, Request
from shared.records.importer import import_records
from tests.conftest import _vhost, wait_until
from tests.test_mail_smtp import Listener, free_port, mail, message_id, processed
from tests.test_worker import Stack, wait_done

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres, pytest.mark.slow]
KEY = {"key": "demo-key"}
AUTHSERV = "mx.widget.com"


class Relay:
    """A test SMTP relay that keeps what it is sent."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.port = free_port()

    async def handle_DATA(self, server: object, session: object,  # noqa: ARG002
                          envelope: Any) -> str:
        self.received.append(envelope.original_content)
        return "250 OK"


@pytest.fixture(scope="module")
def relay() -> Iterator[Relay]:
    started = Relay()
    controller = Controller(started, hostname="127.0.0.1", port=started.port)
    controller.start()
    yield started
    controller.stop()


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          postgres_url: str, relay: Relay) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("mail")
    with contextmanager(_vhost)(request, "mail") as broker:
        started = Stack(broker, postgres_url, folder / "worker.log",
                        mail_authserv_ids=AUTHSERV, mail_relay=f"127.0.0.1:{relay.port}",
                        mail_attachment_dir=str(folder / "attachments"),
                        cache_ttl_seconds="0")
        yield started
        started.worker.stop()


@pytest.fixture(scope="module")
def attachments_dir(stack: Stack) -> Path:
    return Path(stack.worker.log).parent / "attachments"


@pytest.fixture(scope="module")
def listener(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listener]:
    started = Listener(stack, tmp_path_factory.mktemp("smtp") / "smtp.log",
                       mail_max_bytes=str(2_000_000))
    yield started
    started.stop()


@pytest.fixture
def api(stack: Stack, attachments_dir: Path, configure: Callable[..., None]) -> FlaskClient:
    configure(broker_url=stack.broker, database_url=stack.database,
              mail_attachment_dir=str(attachments_dir))
    return create_app().test_client()


@pytest.fixture
def policy(stack: Stack) -> Iterator[Callable[..., None]]:
    """Set wdc's Email Policy for one test; the defaults again afterwards."""

    def apply(**options: object) -> None:
        with session_scope(stack.database) as session:
            account = session.get(Account, "wdc")
            assert account is not None
            account.mail_policy = dict(options)

    yield apply
    apply()


def unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


@dataclass
class Desk:
    """The user's side: a mail client on the listener, and the api to look at the results."""

    listener: Listener
    api: FlaskClient
    database: str

    def send(self, message: EmailMessage) -> dict[str, Any]:
        """Send over SMTP; the transaction once the worker is done with the mail."""
        with self.listener.client() as smtp:
            assert smtp.send_message(message) == {}
        return wait_done(self.api, processed(self.database, message_id(message))["transid"])

    def get(self, path: str) -> Any:
        response = self.api.get(path, headers=KEY)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def request(self, request_id: int) -> dict[str, Any]:
        return self.get(f"/v1/requests/{request_id}")  # type: ignore[no-any-return]

    def notes(self, request_id: int) -> list[dict[str, Any]]:
        return self.get(f"/v1/requests/{request_id}/notes")  # type: ignore[no-any-return]


@pytest.fixture
def desk(listener: Listener, api: FlaskClient, stack: Stack) -> Desk:
    return Desk(listener, api, stack.database)


def attach(message: EmailMessage, *names: str) -> EmailMessage:
    for name in names:
        message.add_attachment(f"content of {name}".encode(), maintype="text",
                               subtype="plain", filename=name)
    return message


NICK, FRANK, ELLEN = "nick.wheeler@widget.com", "frank.lanier@widget.com", "ellen.brown@widget.com"


def old_request(database: str, *, age: timedelta, source_id: str | None = None) -> int:
    """A request of Nick's (wdc), last updated ``age`` ago, with a 9-digit id (the subject
    rule takes 6 digits or more; the database's own ids are small)."""
    request_id = 100_000_000 + uuid.uuid4().int % 800_000_000
    when = datetime.now(UTC) - age
    with session_scope(database) as session:
        session.add(Request(id=request_id, account_id="wdc", subject="Old one", status="assigned",
                            source="nagios" if source_id else "Email", source_id=source_id,
                            requested_for_id=303, created_at=when, updated_at=when))
    return request_id


def test_replies_thread_three_ways(desk: Desk) -> None:
    source_id = f"alert-{uuid.uuid4().hex}"
    first = mail(f"#source: nagios\n#sourceID: {source_id}\n\nDisk 90% full on db1.",
                 subject=unique("Disk full"), sender=NICK)
    created = desk.send(first)
    request_id = created["outcome"]["request_id"]
    assert (desk.request(request_id)["source"], desk.request(request_id)["sourceID"]) == \
        ("nagios", source_id)

    # 1. A mail client's reply: In-Reply-To and References name the first mail.
    reply = mail("Cleaning up.", subject=f"Re: {first['Subject']}", sender=NICK,
                 In_Reply_To=str(first["Message-ID"]), References=str(first["Message-ID"]))
    threaded = desk.send(reply)["outcome"]
    assert (threaded["action"], threaded["request_id"]) == ("updated", request_id)
    assert "In-Reply-To" in threaded["reason"]

    # 2. A new mail (no reply headers) with the request's source and sourceID; its other
    # parameters never change the request.
    update = mail(f"#source: nagios\n#sourceID: {source_id}\n#impact: low\n\n"
                  "Disk 95% full on db1.", subject="Disk still full", sender=NICK)
    by_source = desk.send(update)["outcome"]
    assert (by_source["request_id"], by_source["reason"]) == \
        (request_id, "the request's source and sourceID")
    assert by_source["ignored"] == {"parameters": "parameters never update an existing request"}
    assert desk.request(request_id)["impact"] is None  # as created: no #impact: low

    # 3. The id of a request in the subject.
    numbered = old_request(desk.database, age=timedelta(hours=1))
    by_id = desk.send(mail("Done, 40% now.", subject=f"Re: Request #{numbered}",
                           sender=NICK))["outcome"]
    assert (by_id["request_id"], by_id["reason"]) == (numbered, "request id in the subject")

    assert [note["text"] for note in desk.notes(request_id)] == [
        "Disk 90% full on db1.", "Cleaning up.", "Disk 95% full on db1."]
    assert [note["text"] for note in desk.notes(numbered)] == ["Done, 40% now."]


@pytest.mark.parametrize("way", ["headers", "source", "subject"])
@pytest.mark.parametrize(("age", "threads"), [
    (timedelta(days=28) - timedelta(minutes=5), True),
    (timedelta(days=28) + timedelta(minutes=5), False),
])
def test_the_28_day_feedback_window_on_both_sides(
    desk: Desk, way: str, age: timedelta, threads: bool,
) -> None:
    source_id = f"old-{uuid.uuid4().hex}"
    request_id = old_request(desk.database, age=age, source_id=source_id)
    body, headers, subject = "Any news?", {}, unique("About my old request")
    if way == "headers":
        original = f"<{uuid.uuid4().hex}@widget.com>"
        with session_scope(desk.database) as session:
            session.add(MailMessage(
                transid=uuid.uuid4().hex, account_id="wdc", recipient="wdc@mail.eventdesk.local",
                message_id=original.strip("<>"), raw=b"", received_at=datetime.now(UTC) - age,
                status="processed", request_id=request_id))
        headers = {"In_Reply_To": original}
    elif way == "source":
        body = f"#source: nagios\n#sourceID: {source_id}\n\n{body}"
    else:
        subject = f"Re: Request #{request_id}"
    outcome = desk.send(mail(body, subject=subject, sender=NICK, **headers))["outcome"]
    assert (outcome["request_id"] == request_id) is threads
    assert outcome["action"] == ("updated" if threads else "created")


def test_mail_event_matching_on_the_ci_key(desk: Desk) -> None:
    subject = unique("CPU load")

    def alert(body: str, *files: str, sender: str = NICK, extra: str = "") -> dict[str, Any]:
        message = mail(f"#ci: CMP00023\n{extra}\n{body}", subject=subject, sender=sender)
        return desk.send(attach(message, *files))["outcome"]  # type: ignore[no-any-return]

    request_id = alert("CPU at 95%")["request_id"]
    matched = {"request_id": request_id, "match": "ci", "reason":
               "open request created within 24 h with the same account, source, "
               "requested_for, service instance and CI"}
    assert alert("CPU at 95%") == {"action": "unchanged", **matched}
    # New text: a note; its parameters never change the request.
    assert alert("CPU at 99%", extra="#status: in_progress\n") == {"action": "updated",
                                                                    **matched}
    # The same text again, with an attachment: a note all the same.
    assert alert("CPU at 99%", "top.txt") == {"action": "updated", **matched}
    assert alert("") == {"action": "unchanged", **matched}  # a blank body: nothing
    # Another requested_for (the sender): another request.
    assert alert("CPU at 95%", sender=FRANK)["action"] == "created"
    assert [note["text"] for note in desk.notes(request_id)] == [
        "CPU at 95%", "CPU at 99%",
        "CPU at 99%\n\nAttachments: top.txt (text/plain, 18 bytes)"]
    assert desk.request(request_id)["status"] == "assigned"


def test_mail_event_matching_without_a_ci(desk: Desk) -> None:
    subject = unique("Printer jam")

    def report(body: str, *files: str) -> dict[str, Any]:
        return desk.send(attach(mail(body, subject=subject, sender=ELLEN), *files))["outcome"]  # type: ignore[no-any-return]

    request_id = report("Tray 2 jams.")["request_id"]
    matched = {"request_id": request_id, "match": "subject", "reason":
               "open request created within 24 h with the same account, source, "
               "requested_for, subject and note"}
    assert report("Tray 2 jams.") == {"action": "unchanged", **matched}
    assert report("Tray 2 jams.", "photo.txt") == {"action": "updated", **matched}
    assert report("Tray 2 jams.") == {"action": "unchanged", **matched}
    assert report("Tray 3 jams.")["request_id"] != request_id  # another note: another key
    assert [note["text"] for note in desk.notes(request_id)] == [
        "Tray 2 jams.", "Tray 2 jams.\n\nAttachments: photo.txt (text/plain, 20 bytes)"]


def test_the_parameters_of_a_specialist_set_the_new_request(desk: Desk) -> None:
    body = ("#category: incident\n#impact: high\n#ci: ABC1234\n#team: Database Administration\n"
            "#member: frank.lanier@widget.com\n#status: in_progress\n#markdown\n"
            "#time_spent: 15\n#requested_for: ellen.brown@widget.com\n"
            "#custom_field_reason: disk full\n#custom_field_ticket: INC-7\n\n"
            "**The disk** of the database server is *full*.")
    outcome = desk.send(mail(body, subject=unique("Database disk full"), sender=NICK))["outcome"]
    assert outcome["action"] == "created"
    assert outcome["ignored"] == {
        "requested_for": "the sender does not have the Service Desk Analyst role"}
    made = desk.request(outcome["request_id"])
    assert (made["category"], made["impact"], made["status"], made["ci"]["label"],
            made["service_instance"]["name"], made["team"]["name"], made["member"]["name"],
            made["requested_for"]["name"]) == (
        "incident", "high", "in_progress", "ABC1234", "Expense Reporting Production",
        "Database Administration", "Frank Lanier", "Nick Wheeler")
    assert made["custom_fields"] == [{"id": "reason", "value": "disk full"},
                                     {"id": "ticket", "value": "INC-7"}]
    [note] = desk.notes(outcome["request_id"])
    assert (note["text"], note["markdown"], note["time_spent"], note["internal"]) == (
        "**The disk** of the database server is *full*.", True, 15, False)


def test_parameters_of_an_end_user_are_ignored(desk: Desk) -> None:
    outcome = desk.send(mail("#high\n#custom_field_reason: urgent\n\nPlease hurry.",
                             subject=unique("Help"), sender=ELLEN))["outcome"]
    made = desk.request(outcome["request_id"])
    assert (made["impact"], made["custom_fields"]) == (None, None)
    assert outcome["ignored"] == {"parameters": "the sender does not have the Specialist role"}
    assert [note["markdown"] for note in desk.notes(made["id"])] == [False]


OTHER_RECORDS = {
    "accounts": [{"id": "other", "name": "Other Provider"}],
    "teams": [{"id": 9101, "account": "other", "name": "Other Ops"}],
    "service_instances": [{"id": 9401, "account": "other", "name": "Other Hosting",
                           "first_line_team_id": 9101, "support_team_id": 9101}],
    "configuration_items": [{"id": 9501, "account": "other", "label": "OTH-1",
                             "name": "Other server", "service_instance_ids": [9401]}],
    "people": [
        {"id": 9301, "account": "wdc", "name": "Olivia Both",
         "primary_email": "olivia.both@widget.com",
         "roles": {"wdc": ["specialist", "service_desk_analyst"], "other": ["specialist"]}},
        {"id": 9302, "account": "other", "name": "Oscar Other",
         "primary_email": "oscar@other.example", "team_ids": [9101]},
        {"id": 9303, "account": "wdc", "name": "Paul Wdc", "primary_email": "paul.wdc@widget.com",
         "roles": {"wdc": ["specialist"]}},
    ],
}


def test_records_of_other_accounts_need_the_specialist_role_there(desk: Desk) -> None:
    with session_scope(desk.database) as session:
        import_records(session, OTHER_RECORDS)
    body = ("#requested_for: ellen.brown@widget.com\n#ci: OTH-1@other\n#team: Other Ops@other\n"
            "#member: oscar@other.example@other\n\nPlease look at OTH-1 for Ellen.")
    both = desk.send(mail(body, subject=unique("Other server"), sender="olivia.both@widget.com"))
    made = desk.request(both["outcome"]["request_id"])
    assert (made["requested_for"]["id"], made["ci"]["id"], made["team"]["id"],
            made["member"]["id"]) == (302, 9501, 9101, 9302)
    assert "ignored" not in both["outcome"]

    only_wdc = desk.send(mail(body, subject=unique("Other server"), sender="paul.wdc@widget.com"))
    made = desk.request(only_wdc["outcome"]["request_id"])
    assert (made["requested_for"]["id"], made["ci"], made["member"]) == (9303, None, None)
    assert only_wdc["outcome"]["ignored"] == {
        "requested_for": "the sender does not have the Service Desk Analyst role",
        **dict.fromkeys(("ci", "team", "member"),
                        "the sender does not have the Specialist role of other")}


WEBFORM = {"people": [
    # 399 as in test_mail_processing.py: the two share the session's database.
    {"id": 399, "account": "wdc", "name": "Demo Request Webform",
     "primary_email": "demo-request-webform@example.com"},
    {"id": 9305, "account": "wdc", "name": "Beatrice Baldwin",
     "primary_email": "beatrice.baldwin@example.com"},
]}
DMARC_PASS = f"{AUTHSERV}; dmarc=pass header.from=example.com"


def test_the_from_example_acts_for_someone_else(
    desk: Desk, policy: Callable[..., None],
) -> None:
    with session_scope(desk.database) as session:
        import_records(session, WEBFORM)
    policy(allow_from=True, from_secret="SECRET")

    def webform(body: str, auth: str, **headers: str) -> tuple[dict[str, Any], str]:
        """The web form's mail (a unique subject: event matching would fold them); the
        transaction's outcome and whom the request it made is for."""
        outcome = desk.send(mail(
            body, subject=unique("Request for product demo"),
            sender="demo-request-webform@example.com", X_4me_Auth=auth,
            Authentication_Results=DMARC_PASS, **headers))["outcome"]
        made = desk.request(outcome["request_id"])
        assert made["requested_by"] == made["created_by"] == made["requested_for"]
        return outcome, made["requested_for"]["name"]

    # The seed's example, as written.
    assert webform("I would like to request a demo of your product.", "SECRET",
                   X_4me_From="beatrice.baldwin@example.com")[1] == "Beatrice Baldwin"
    # The same as a #from parameter in the body; the secret still in X-4me-Auth.
    outcome, acts_for = webform("#from: beatrice.baldwin@example.com\n\nA second demo, please.",
                                "SECRET")
    assert acts_for == "Beatrice Baldwin"
    assert [note["text"] for note in desk.notes(outcome["request_id"])] == [
        "A second demo, please."]
    # A wrong secret: the web form itself asks, and the transaction says why.
    outcome, acts_for = webform("#from: beatrice.baldwin@example.com\n\nA third demo.", "GUESS")
    assert acts_for == "Demo Request Webform"
    assert outcome["ignored"] == {"#from": "X-4me-Auth does not match the Email Policy's secret"}


def test_rejected_mail_gets_the_email_rejected_reply_through_the_relay(
    desk: Desk, policy: Callable[..., None], relay: Relay,
) -> None:
    policy(create_requests=False)
    subject = unique("Laptop broken")
    done = desk.send(mail("Help!", subject=subject, sender=ELLEN))
    assert done["status"] == "failed"
    assert "does not allow email to create requests" in done["error"]
    replies = wait_until(lambda: [reply for reply in (
        message_from_bytes(raw, policy=email_policy.default) for raw in relay.received)
        if subject in str(reply["Subject"])], 10)
    assert (replies[0]["To"], replies[0]["Subject"]) == (ELLEN, f"Email Rejected: {subject}")


def test_21_attachments_20_kept_apart_and_the_rest_reported(
    desk: Desk, attachments_dir: Path,
) -> None:
    message = attach(mail("Logs attached.", subject=unique("Logs"), sender=ELLEN),
                     *(f"log{number}.txt" for number in range(21)))
    request_id = desk.send(message)["outcome"]["request_id"]
    [note] = desk.notes(request_id)
    assert "log19.txt (text/plain, 20 bytes)" in note["text"]
    assert "log20.txt" not in note["text"]
    assert note["text"].endswith("1 more attachments not added (at most 20 a message)")
    listed = desk.get(f"/v1/requests/{request_id}/attachments")
    assert [item["filename"] for item in listed] == [f"log{number}.txt" for number in range(20)]
    got = desk.api.get(listed[3]["url"], headers=KEY)
    assert (got.status_code, got.data) == (200, b"content of log3.txt")
    # Kept in the configured directory, by content: not in the database, not re-read from the
    # raw message.
    digest = hashlib.sha256(b"content of log3.txt").hexdigest()
    assert (attachments_dir / digest[:2] / digest).read_bytes() == b"content of log3.txt"
    with session_scope(desk.database) as session:
        assert session.scalars(select(MailAttachment.content).where(
            MailAttachment.request_id == request_id)).all() == [None] * 20
    # A reply's attachments join the request's list.
    reply = attach(mail("One more.", subject=f"Re: {message['Subject']}", sender=ELLEN,
                        In_Reply_To=str(message["Message-ID"])), "late.txt")
    desk.send(reply)
    listed = desk.get(f"/v1/requests/{request_id}/attachments")
    assert [item["filename"] for item in listed][-2:] == ["log19.txt", "late.txt"]


def test_hostile_mail_over_smtp_ends_with_a_reason_and_the_worker_keeps_serving(
    desk: Desk,
) -> None:
    def raw(headers: str, rest: bytes) -> tuple[str, bytes]:
        found = f"hostile-{uuid.uuid4().hex}"
        return found, (f"From: {ELLEN}\r\nMessage-ID: <{found}>\r\n{headers}".encode() + rest)

    cases = {
        "more than 500 MIME parts": raw(
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n",
            b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" * 10_000),
        "a header longer than": raw(
            "Subject: " + "a" * 900 + ("\r\n " + "a" * 900) * 1_200 + "\r\n", b"\r\nbody\r\n"),
    }
    broken_id, broken = raw(
        "Subject: Broken encodings\r\nContent-Type: text/plain; charset=x-no-such-charset\r\n"
        "Content-Transfer-Encoding: base64\r\n", b"\r\n!!!not base64 at all\xff\xfe\r\n")
    with desk.listener.client() as smtp:
        for _, message in (*cases.values(), (broken_id, broken)):
            assert smtp.sendmail(ELLEN, ["wdc@mail.eventdesk.local"], message) == {}
    for reason, (found, _) in cases.items():
        done = processed(desk.database, found)
        assert done["status"] == "quarantined"
        assert reason in wait_done(desk.api, done["transid"])["error"]
    assert processed(desk.database, broken_id)["request_id"] is not None
    fine = desk.send(mail("Still there?", subject=unique("After the storm"), sender=ELLEN))
    assert fine["outcome"]["action"] == "created"
