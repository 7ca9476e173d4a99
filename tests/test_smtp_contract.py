"""The contract with aiosmtpd's private ``SMTP._getaddr`` that api/smtp.py's listener overrides
to read the addresses of MAIL and RCPT for less: aiosmtpd must still read them through it, and
the override must answer every path as aiosmtpd's own does.

Each test names what an upgrade removed or changed.
"""

from __future__ import annotations

import inspect
import random
from collections import Counter
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from api.smtp import PeerLimitedSMTP

PATHS = [
    "<ellen.brown@widget.com>", "<wdc@mail.eventdesk.local> SIZE=500",
    "<a@b>   SIZE=5  BODY=8BITMIME", "<a@b>\tSIZE=5", "<a@b>SIZE=5", "<A.B@Ex-ample.COM>",
    "<a@b> ", "<a@b> SIZE=1 ", "<x+tag!#$%&'*/=?^_`{|}~-@host-1.example>", "<a@-b>",
    "<a..b@c>", "<.a@b>", "<a@b.>", "<a@.b>", '<"quoted local"@b>', "<a@[192.0.2.1]>",
    "<a(comment)@b>", "< a@b >", "<a@b> (comment) SIZE=1", "<é@b>", "<a@é.example>", "a@b",
    "a@b SIZE=1", "<>", "<a@b>\x00", "<a@b>\nX", "<a@b> \x1c", "<a@b@c>", "<a@b", "a@b>", "",
    "<" + "x" * 65 + "@b>", "<a_b@c_d>",
]


def listener() -> PeerLimitedSMTP:
    return PeerLimitedSMTP(object(), connections=Counter(), limit=1)  # type: ignore[arg-type]


def test_aiosmtpd_reads_mail_and_rcpt_addresses_through_getaddr() -> None:
    for command in (SMTP.smtp_MAIL, SMTP.smtp_RCPT):
        assert "self._getaddr(" in inspect.getsource(command), \
            f"aiosmtpd's {command.__name__} no longer calls SMTP._getaddr"
    assert list(inspect.signature(SMTP._getaddr).parameters) == ["self", "arg"], \
        "SMTP._getaddr(self, arg) changed its signature"


def fuzzed(count: int) -> list[str]:
    """Paths built from the characters where the two readings could part."""
    pieces = ["<", ">", "@", ".", "a", "Z", "0", "-", "_", "+", " ", "\t", "(", ")", '"', "[",
              "]", "\\", "é", "SIZE=1", "x.y", "@b.c>", "<a@b>"]
    chooser = random.Random(20261130)
    return ["".join(chooser.choice(pieces) for _ in range(chooser.randint(1, 12)))
            for _ in range(count)]


def reading(session: SMTP, path: str) -> object:
    """What ``_getaddr`` answers, or the kind of error it raises (aiosmtpd's parse raises on a
    few malformed paths, and its session answers those with a 500)."""
    try:
        return session._getaddr(path)
    except Exception as exc:  # the kind is the answer here
        return type(exc)


@pytest.mark.parametrize("local_part_limit", [0, 64])
def test_the_listener_reads_every_path_as_aiosmtpd_does(local_part_limit: int) -> None:
    ours, theirs = listener(), SMTP(object())
    ours.local_part_limit = theirs.local_part_limit = local_part_limit
    for path in PATHS + fuzzed(5000):
        assert reading(ours, path) == reading(theirs, path), repr(path)


def test_a_plain_path_is_read_without_aiosmtpd(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the override: the form MTAs write costs no header parse."""
    def refuse(*_: Any) -> None:
        raise AssertionError("aiosmtpd's parse was used")

    monkeypatch.setattr(SMTP, "_getaddr", refuse)
    assert listener()._getaddr("<ellen.brown@widget.com> SIZE=500") == (
        "ellen.brown@widget.com", "SIZE=500")
