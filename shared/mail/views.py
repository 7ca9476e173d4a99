"""What the attachment endpoints show: the attachments the Mail API kept of a request's mails
(at most 20 a mail), stored apart from the raw messages (shared/mail/store.py)."""

from __future__ import annotations

from collections.abc import Sequence

from shared.mail.mime import media_type
from shared.mail.queries import AttachmentRow
from shared.mail.schemas import AttachmentView


def attachment_url(transid: str, index: int) -> str:
    return f"/v1/mail/{transid}/attachments/{index}"


def attachment_views(rows: Sequence[AttachmentRow]) -> list[AttachmentView]:
    return [AttachmentView(mail=row.transid, index=row.position, filename=row.filename,
                           content_type=media_type(row.content_type), size=row.size,
                           inline=row.inline,
                           url=attachment_url(row.transid, row.position)) for row in rows]
