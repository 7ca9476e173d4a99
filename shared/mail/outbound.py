"""The Mail API's one outbound message: the 'Email Rejected' reply, through the configured
SMTP relay (``EVENTDESK_MAIL_RELAY``). Sent after the commit that records the rejection, once,
best effort: a relay that is down loses the reply, never the record of the rejection."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

from shared.logs import get_logger
from shared.mail.mime import ParsedMail

log = get_logger(__name__)
TIMEOUT_SECONDS = 10


def rejection(parsed: ParsedMail, *, to: str, sender: str, account_id: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = f"Email Rejected: {parsed.subject}"[:255]
    # RFC 3834: an automatic reply, which other responders must not answer (no mail loops).
    message["Auto-Submitted"] = "auto-replied"
    if parsed.message_id:
        message["In-Reply-To"] = f"<{parsed.message_id}>"
        message["References"] = f"<{parsed.message_id}>"
    message.set_content(
        f"Your email \"{parsed.subject}\" was not registered: the {account_id} account does not "
        "accept email to create new requests.\n\nPlease contact your service desk by another "
        "channel.\n")
    return message


def send(relay: str, message: EmailMessage) -> None:
    host, _, port = relay.rpartition(":")
    try:
        with smtplib.SMTP(host or relay, int(port or 25), timeout=TIMEOUT_SECONDS) as smtp:
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException, ValueError) as exc:
        log.warning("Email Rejected reply not sent", to=str(message["To"]), error=str(exc)[:200])
