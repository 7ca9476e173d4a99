"""What crosses HTTP and the broker for the Mail API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

# ``mail.process`` takes one argument: the id of a ``mail_messages`` row.
PROCESS_TASK = "mail.process"
# Beat's: queue again the mail whose ``mail.process`` message never arrived.
SWEEP_TASK = "mail.sweep"


class MailQueued(BaseModel):
    """``202 Accepted`` of ``POST /v1/mail``: the raw message is stored; its state is at the
    ``Location``."""

    transid: str
    status: Literal["queued"] = "queued"
