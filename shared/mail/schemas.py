"""What crosses HTTP and the broker for the Mail API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MailQueued(BaseModel):
    """``202 Accepted`` of ``POST /v1/mail``: the raw message is stored; its state is at the
    ``Location``."""

    transid: str
    status: Literal["queued"] = "queued"


class EmailPolicy(BaseModel):
    """An account's Email Policy (``accounts.mail_policy``, imported and exported with the
    account records); an option left out has the default shown."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # 'Allow inbound email to generate new requests': else an 'Email Rejected' reply.
    create_requests: bool = True
    # 'Allow replies to be added as notes': else a reply is a new request.
    replies_as_notes: bool = True
    # 'Allow email parameter #from': X-4me-From with X-4me-Auth equal to from_secret, and a DMARC
    # pass recorded by a trusted receiving MTA, acts for another person.
    allow_from: bool = False
    from_secret: str | None = None
    # A sender no person has the address of becomes a new person of the account (no roles),
    # instead of being rejected.
    auto_create_people: bool = False
    # The feedback window of replies ('Provide feedback' of the Self Service Settings), in days.
    feedback_days: int = Field(default=28, ge=0, le=3650)


class AttachmentView(BaseModel):
    """An attachment (or inline image) of a mail that became a request or a note."""

    mail: str = Field(description="The transid of the mail that carried it.")
    index: int
    filename: str
    content_type: str
    size: int = Field(description="Decoded size in bytes.")
    inline: bool
    url: str = Field(description="Where to download it: GET with the same key.")
