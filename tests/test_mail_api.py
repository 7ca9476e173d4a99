"""``POST /v1/mail``: the raw message is stored before the 202, then queued on ``mail``."""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest
import redis
from flask.testing import FlaskClient

from shared.db.engine import session_scope
from shared.db.models import Account, MailAttachment, MailMessage
from shared.mail.service import process_mail
from shared.records.directory import Directory
from tests.conftest import wait_until

RAW = (b"From: howard.tanner@widget.com\r\nTo: wdc@mail.eventdesk.local\r\n"
       b"Subject: Through the gateway\r\nMessage-ID: <gw-%s@widget.com>\r\n\r\nBody\r\n")
RFC822 = "message/rfc822"
RECIPIENT = {"recipient": "wdc@mail.eventdesk.local"}

pytestmark = pytest.mark.redis


def post(client: FlaskClient, raw: bytes, *, key: str = "demo-key",
         query: dict[str, str] | None = None, headers: dict[str, str] | None = None,
         content_type: str = RFC822) -> tuple[int, dict[str, object]]:
    response = client.post("/v1/mail", data=raw, content_type=content_type,
                           query_string=RECIPIENT if query is None else query,
                           headers={"key": key, **(headers or {})})
    return response.status_code, response.get_json()


def mail_queue(broker: str) -> list[list[int]]:
    """The ids each queued ``mail.process`` message names."""
    found = []
    for raw in redis.Redis.from_url(broker).lrange("mail", 0, -1):
        envelope = json.loads(raw)
        assert envelope["headers"]["task"] == "mail.process"
        found.append(json.loads(base64.b64decode(envelope["body"]))[0][0])
    return found


def test_accepted_stored_then_queued(client: FlaskClient, broker: str, sqlite_url: str) -> None:
    status, body = post(client, RAW % b"1")
    assert status == 202
    transid = str(body["transid"])
    with session_scope(sqlite_url) as session:
        row = session.query(MailMessage).filter_by(transid=transid).one()
        assert (row.account_id, row.status, row.raw) == ("wdc", "received", RAW % b"1")
        assert row.message_id == "gw-1@widget.com"
        mail_id = row.id
    assert mail_queue(broker) == [[mail_id]]
    view = client.get(f"/v1/transactions/{transid}", headers={"key": "demo-key"}).get_json()
    assert view["status"] == "queued"
    # The gateway sends it again (it missed our answer): the same transaction, nothing stored
    # anew; queued again while no worker has processed it (the first intake may have died
    # between its commit and its publish), and not once it is processed. (Within 20 ms of the
    # first, the second task waits for the interval's end: mail.process goes one an interval.)
    assert post(client, RAW % b"1") == (202, body)
    wait_until(lambda: mail_queue(broker) == [[mail_id], [mail_id]], 5, 0.01)
    with session_scope(sqlite_url) as session:
        process_mail(session, [mail_id], datetime.now(UTC), Directory(0))
    assert post(client, RAW % b"1") == (202, body)
    assert mail_queue(broker) == [[mail_id], [mail_id]]


def test_team_address_in_a_header(client: FlaskClient, sqlite_url: str) -> None:
    status, body = post(client, RAW % b"2", query={},
                        headers={"X-4me-Recipient": "network.wdc@mail.eventdesk.local"})
    assert status == 202
    with session_scope(sqlite_url) as session:
        assert session.query(MailMessage).filter_by(transid=body["transid"]).one().team_id == 102


@pytest.mark.parametrize(("case", "kwargs", "status", "message"), [
    ("no key", {"key": "wrong"}, 401, "authentication failed"),
    ("not rfc822", {"content_type": "text/plain"}, 415, "message/rfc822"),
    ("no recipient", {"query": {}}, 400, "recipient"),
    ("unknown account", {"query": {"recipient": "nobody@mail.eventdesk.local"}}, 422,
     "nobody@mail.eventdesk.local is not an address of wdc"),
    ("unknown domain", {"query": {"recipient": "wdc@elsewhere.org"}}, 422, "no account"),
    ("unknown team", {"query": {"recipient": "sales.wdc@mail.eventdesk.local"}}, 422,
     "no team of wdc"),
    ("not an address", {"query": {"recipient": "wdc"}}, 422, "not an address"),
])
def test_refusals(client: FlaskClient, case: str, kwargs: dict[str, object], status: int,
                  message: str) -> None:
    del case
    got, body = post(client, RAW % b"3", **kwargs)  # type: ignore[arg-type]
    assert got == status
    assert message in str(body["message"])


@pytest.mark.parametrize("raw", [b"", b"\r\n \r\n"])
def test_an_empty_message_is_400_and_nothing_stored(
    client: FlaskClient, sqlite_url: str, raw: bytes,
) -> None:
    with session_scope(sqlite_url) as session:
        before = session.query(MailMessage).count()
    got, body = post(client, raw)
    assert (got, "empty" in str(body["message"])) == (400, True)
    with session_scope(sqlite_url) as session:
        assert session.query(MailMessage).count() == before


def test_oversize_is_413(make_client: Callable[..., FlaskClient], broker: str) -> None:
    client = make_client(mail_max_bytes=2048)
    status, body = post(client, RAW % b"4" + b"x" * 3000)
    assert status == 413
    assert "2048" in str(body["message"])
    # No Content-Length, as gunicorn gives a chunked body: the limit is found by reading.
    chunked = client.post("/v1/mail", input_stream=io.BytesIO(RAW % b"4" + b"x" * 3000),
                          query_string=RECIPIENT, environ_overrides={
                              "CONTENT_LENGTH": "", "wsgi.input_terminated": True},
                          headers={"key": "demo-key", "Content-Type": RFC822,
                                   "Transfer-Encoding": "chunked"})
    assert chunked.status_code == 413
    assert "2048 bytes" in chunked.get_json()["message"]
    assert mail_queue(broker) == []


def test_a_directory_account_receives_no_mail(client: FlaskClient, sqlite_url: str) -> None:
    with session_scope(sqlite_url) as session:
        account = session.get(Account, "widget")
        assert account is not None
        account.mail_domain = "mail.eventdesk.local"
    try:
        intake = client.application.extensions["eventdesk.mail"]
        with pytest.raises(ValueError, match="directory account"):
            intake.destination("widget@mail.eventdesk.local")
    finally:
        with session_scope(sqlite_url) as session:
            account = session.get(Account, "widget")
            assert account is not None
            account.mail_domain = None


def test_attachments_listed_and_downloaded(client: FlaskClient, sqlite_url: str) -> None:
    message = EmailMessage()
    message["From"] = "howard.tanner@widget.com"
    message["Subject"] = f"Logs {uuid.uuid4().hex}"
    message["Message-ID"] = f"<{uuid.uuid4().hex}@widget.com>"
    message.set_content("Logs attached.")
    for number in range(21):
        message.add_attachment(f"log {number}".encode(), maintype="text", subtype="plain",
                               filename=f"log{number}.txt")
    status, body = post(client, bytes(message))
    assert status == 202
    with session_scope(sqlite_url) as session:
        mail_id = session.query(MailMessage).filter_by(transid=body["transid"]).one().id
    with session_scope(sqlite_url) as session:
        process_mail(session, [mail_id], datetime.now(UTC), Directory(0))
    view = client.get(f"/v1/transactions/{body['transid']}", headers={"key": "demo-key"})
    request_id = view.get_json()["outcome"]["request_id"]
    notes = client.get(f"/v1/requests/{request_id}/notes", headers={"key": "demo-key"})
    text = notes.get_json()[0]["text"]
    assert "log19.txt (text/plain, 6 bytes)" in text
    assert "1 more attachments not added (at most 20 a message)" in text
    listed = client.get(f"/v1/requests/{request_id}/attachments",
                        headers={"key": "demo-key"}).get_json()
    assert [item["filename"] for item in listed] == [f"log{n}.txt" for n in range(20)]
    got = client.get(listed[3]["url"], headers={"key": "demo-key"})
    assert got.status_code == 200
    assert got.data == b"log 3"
    assert got.headers["Content-Type"] == "application/octet-stream"
    assert got.headers["Content-Disposition"] == "attachment; filename*=UTF-8''log3.txt"
    assert got.headers["X-Attachment-Content-Type"] == "text/plain"
    with session_scope(sqlite_url) as session:  # a type no header may carry, stored earlier
        session.query(MailAttachment).filter_by(filename="log3.txt").update(
            {"content_type": "application/x-\u20ac"})
    got = client.get(listed[3]["url"], headers={"key": "demo-key"})
    assert got.headers["X-Attachment-Content-Type"] == "application/octet-stream"
    relisted = client.get(f"/v1/requests/{request_id}/attachments",
                          headers={"key": "demo-key"}).get_json()
    assert relisted[3]["content_type"] == "application/octet-stream"
    assert client.get(f"/v1/mail/{body['transid']}/attachments/20",
                      headers={"key": "demo-key"}).status_code == 404
    assert client.get(f"/v1/requests/{request_id + 10**6}/attachments",
                      headers={"key": "demo-key"}).status_code == 404


def test_openapi_documents_the_mail_paths(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    assert {"/v1/mail", "/v1/requests/{id}/attachments",
            "/v1/mail/{transid}/attachments/{index}"} <= set(paths)
