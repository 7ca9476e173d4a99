"""What the attachment endpoints show: the attachments the Mail API kept (at most 20 a mail), read
again from the stored raw messages (nothing is stored twice)."""

from __future__ import annotations

from collections.abc import Sequence

from shared.mail.mime import Limits, Quarantined, parse
from shared.mail.schemas import AttachmentView


def attachment_url(transid: str, index: int) -> str:
    return f"/v1/mail/{transid}/attachments/{index}"


def attachment_views(mails: Sequence[tuple[str, bytes]], limits: Limits | None = None
                     ) -> list[AttachmentView]:
    views = []
    for transid, raw in mails:
        try:
            parsed = parse(raw, limits)
        except Quarantined:  # processed mail was readable; a stricter limit since: nothing shown
            continue
        views += [AttachmentView(mail=transid, index=index, filename=item.filename,
                                 content_type=item.content_type, size=item.size,
                                 inline=item.inline, url=attachment_url(transid, index))
                  for index, item in enumerate(parsed.attachments)]
    return views
