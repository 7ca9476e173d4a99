"""The Mail API's pure rules: MIME reading under limits, addresses, parameters, defaults."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import getaddresses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.mail import mime
from shared.mail.mime import MAX_ATTACHMENTS, Limits, Quarantined, html_to_text, parse
from shared.mail.rules import (
    BadRecipient,
    Recipient,
    apply_parameters,
    parse_recipient,
    request_fields,
    split_parameters,
    subject_request_ids,
    within_feedback,
)

SPECIALIST: dict[str, object] = {"wdc": ["specialist"]}
ANALYST: dict[str, object] = {"wdc": ["specialist", "service_desk_analyst"]}


def accounts(name: str) -> bool:
    return name in ("wdc", "other")


def mail(body: str = "Hello", **headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = headers.pop("From", "Howard Tanner <Howard.Tanner@widget.com>")
    message["To"] = "wdc@mail.eventdesk.local"
    message["Subject"] = headers.pop("Subject", "Printer on fire")
    message["Message-ID"] = headers.pop("Message_ID", "<abc.123@widget.com>")
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message


def test_plain_message() -> None:
    parsed = parse(bytes(mail("line one\nline two\n", In_Reply_To="<p1@x>",
                              References="<p0@x> <p1@x>")))
    assert parsed.sender == "howard.tanner@widget.com"
    assert parsed.message_id == "abc.123@widget.com"
    assert parsed.subject == "Printer on fire"
    assert parsed.text.strip() == "line one\nline two"
    assert parsed.thread_ids == ("p1@x", "p0@x")
    assert parsed.attachments == ()


def test_a_nul_in_encoded_headers_and_filenames_is_dropped() -> None:
    # PostgreSQL refuses NUL in text: it would fail the mail and every mail processed with it.
    raw = (b"From: =?utf-8?q?Ho=00ward?= <howard.tanner@widget.com>\r\n"
           b"Subject: =?utf-8?q?Printer=00_on_fire?=\r\nMessage-ID: <a\x00b@widget.com>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
           b"--B\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
           b"--B\r\nContent-Type: text/plain\r\n"
           b"Content-Disposition: attachment; filename*=utf-8''a%00b.txt\r\n\r\nx\r\n--B--\r\n")
    parsed = parse(raw)
    assert (parsed.subject, parsed.sender_name) == ("Printer on fire", "Howard")
    assert parsed.message_id == "ab@widget.com"
    assert [a.filename for a in parsed.attachments] == ["ab.txt"]


def test_display_name_is_never_the_sender() -> None:
    parsed = parse(bytes(mail(From='"howard.tanner@widget.com" <evil@example.org>')))
    assert parsed.sender == "evil@example.org"
    assert parse(bytes(mail(From="a@x.org, b@x.org"))).sender is None


def test_html_only_body_becomes_text() -> None:
    message = mail()
    message.set_content("<p>Hi <b>there</b></p><script>alert(1)</script>", subtype="html")
    assert parse(bytes(message)).text == "Hi there"
    assert html_to_text("<style>x{}</style>a<br>b") == "a\nb"


def test_attachments_at_most_twenty_and_the_rest_counted() -> None:
    message = mail("see attached")
    for number in range(MAX_ATTACHMENTS + 1):
        message.add_attachment(b"x" * number, maintype="application", subtype="octet-stream",
                               filename=f"f{number}.bin")
    parsed = parse(bytes(message))
    assert len(parsed.attachments) == 20
    assert parsed.attachments_omitted == 1
    assert parsed.attachments[3].filename == "f3.bin"
    assert parsed.attachments[3].size == 3
    assert parsed.text.strip() == "see attached"


@pytest.mark.parametrize(("raw", "reason"), [
    (b"x" * 2000, "larger than"),
    # The hostile messages: 10,000 parts, 200-deep nesting, a 1 MB header line.
    (b"Content-Type: multipart/mixed; boundary=b\n\n" + b"--b\nContent-Type: text/plain\n\nx\n"
     * 10_000, "more than 500 MIME parts"),
    (b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i)
              for i in range(200)) + b"Content-Type: text/plain\n\nx", "nested deeper"),
    (b"From: a@b.org\nSubject: " + b"a" * 1_000_000 + b"\n\nbody", "a header longer"),
    (b"Content-Type: multipart/mixed; boundary=b\n\n" + b"--b\nContent-Type: text/plain\n\nx\n"
     * 600, "more than 500 MIME parts"),
    (b"Subject: " + b"a" * 70_000 + b"\n\nbody", "a header longer"),
    (b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i)
              for i in range(30)) + b"Content-Type: text/plain\n\nx", "nested deeper"),
    (b"".join(b"X-H%d: v\n" % i for i in range(2500)) + b"\nbody", "header lines"),
    # Parts need no headers: 2,000 of them behind one Content-Type, its boundary in each of the
    # spellings the parser reads, or the lines broken by bare CRs.
    *[(b"Content-Type: multipart/mixed;" + spelling + b"\n\n" + (b"--" + boundary + b"\n\nx\n")
       * 2_000, "more than 500 MIME parts") for spelling, boundary in [
        (b'\n boundary="b b"', b"b b"), (b" boundary*=''b", b"b"), (b' boundary="b "', b"b"),
        (b' boundary="' + b"q" * 250 + b'"', b"q" * 250), (b" boundary=b; x-boundary=zz", b"b"),
    ]],
    (b"Content-Type: multipart/mixed; boundary=b\r\r" + b"--b\r\rx\r" * 2_000,
     "more than 500 MIME parts"),
    (b"".join(b"X-H%d: v\r" % i for i in range(2500)) + b"\rbody", "header lines"),
    # 1,500 bytes decoded from base64, over a limit of 1,000.
    (b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nsee\n"
     b"--b\nContent-Type: application/octet-stream\nContent-Disposition: attachment; "
     b"filename=big.bin\nContent-Transfer-Encoding: base64\n\n" + b"QUFB" * 500 + b"\n--b--\n",
     "an attachment larger than 1000 bytes decoded"),
])
def test_hostile_messages_are_quarantined_with_a_reason(raw: bytes, reason: str) -> None:
    limits = Limits(max_bytes=1000) if reason == "larger than" else Limits()
    limits = Limits(max_attachment_bytes=1000) if reason.startswith("an attachment") else limits
    with pytest.raises(Quarantined, match=reason):
        parse(raw, limits)


def test_not_mime_at_all_and_broken_encodings_are_read_without_crashing() -> None:
    parsed = parse(b"\x00\xff\xfe just some bytes \x80\n\n")
    assert parsed.sender is None
    broken = (b"From: a@b.org\nSubject: =?x-unknown?q?oops?=\nContent-Type: text/plain; "
              b"charset=x-nonsense\nContent-Transfer-Encoding: base64\n\n!!!notbase64\xff")
    assert parse(broken).sender == "a@b.org"


def test_the_part_limit_counts_the_message_itself() -> None:
    def parts(count: int) -> bytes:  # header-less parts: only the parser's count sees them
        return b"Content-Type: multipart/mixed; boundary=b\n\n" + b"--b\n\nx\n" * count

    assert parse(parts(499)).text == "x"
    with pytest.raises(Quarantined, match="more than 500 MIME parts"):
        parse(parts(500))


def test_a_multipart_of_a_few_parts_is_read_whatever_its_text_says_of_boundaries() -> None:
    text = "boundary=x\n" + "--x\n" * 600  # a body that talks about MIME is not parts
    message = mail(text)
    message.add_attachment(b"data", maintype="application", subtype="octet-stream",
                           filename="a.bin")
    parsed = parse(bytes(message))
    assert parsed.text.startswith("boundary=x")
    assert [a.filename for a in parsed.attachments] == ["a.bin"]


@pytest.mark.parametrize(("charset", "body"), [
    # punycode's decoding takes time that grows with the square of the text: minutes for MBs.
    ("punycode", "\u00e9a".encode("punycode") * 20_000),
    ("unicode_escape", b"caf\\u00e9"),
    ("raw-unicode-escape", b"caf\\u00e9"),
])
def test_a_codec_that_is_no_mail_charset_is_read_as_utf8(charset: str, body: bytes) -> None:
    raw = (b"From: a@b.org\nContent-Type: text/plain; charset=" + charset.encode()
           + b"\nContent-Transfer-Encoding: 8bit\n\n" + body)
    assert parse(raw).text == body.decode()


def test_a_body_that_decodes_to_a_lone_surrogate_is_read_with_a_replacement() -> None:
    raw = b"From: a@b.org\nContent-Type: text/plain; charset=utf-7\n\nbefore +2AA- after\n"
    text = parse(raw).text
    assert text.strip() == "before \ufffd after"
    text.encode()  # the database takes it


@pytest.mark.parametrize("sender", [
    b"=?utf-8?q?new=00person?=@example.com",  # a NUL, in an encoded word
    b"=?utf-8?q?new=01person?=@example.com",  # another control character
    b"a" * 250 + b"@example.com",  # no mailbox is longer than 254 characters
])
def test_a_from_no_mailbox_can_have_is_no_sender(sender: bytes) -> None:
    # Else a person created for it could not be stored, and the mail would fail, not be refused.
    assert parse(b"From: " + sender + b"\nSubject: x\n\nbody\n").sender is None


def test_an_attachment_type_that_is_no_token_is_kept_as_octet_stream() -> None:
    raw = (b"From: a@b.org\nContent-Type: multipart/mixed; boundary=B\n\n--B\n"
           b"Content-Type: text/plain\n\nsee\n--B\nContent-Type: application/x-\xe2\x82\xac\n"
           b"Content-Disposition: attachment; filename=a.bin\n\nx\n--B--\n")
    (attachment,) = parse(raw).attachments
    assert attachment.content_type == "application/octet-stream"


# Messages whose headers take every way through mime's header reading: plain values read as
# they are, encoded words, folding, RFC 2231 parameters, address lists, odd message ids, 8-bit.
REPRESENTATIVE = [
    (b"From: Ellen Brown <ellen.brown@widget.com>\r\nTo: wdc@mail.eventdesk.local\r\n"
     b"Subject: Printer 7 is out of paper\r\nMessage-ID: <r-7@bench.widget.com>\r\n"
     b"Content-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: 7bit\r\n"
     b"MIME-Version: 1.0\r\n\r\nPrinter 7 needs paper.\r\n"),
    (b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <Joerg@Example.de>\r\n"
     b"To: \"Smith, J\" <j@s.com>, Desk <wdc@mail.eventdesk.local>,\r\n b@y.org\r\n"
     b"Subject: =?utf-8?b?R3LDvMOfZSBhdXMgTcO8bmNoZW4=?=\r\n =?utf-8?q?_und_mehr?=\r\n"
     b"Message-ID: <a.b@[10.0.0.1]>\r\nIn-Reply-To: <p1@x>\r\n"
     b"References: <p0@x>\r\n\t<p1@x>\r\nDate: Mon, 4 Mar 2024 10:00:00 +0000\r\n"
     b"Authentication-Results: mx.example; dmarc=pass header.from=example.de\r\n"
     b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
     b"--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
     b"--inner\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
     b"Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=FC=DFe\r\n"
     b"--inner\r\nContent-Type: text/html\r\n\r\n<p>Gr&uuml;&szlig;e</p>\r\n--inner--\r\n"
     b"--outer\r\nContent-Type: application/pdf\r\n"
     b"Content-Disposition: attachment;\r\n filename*=utf-8''Gr%C3%BC%C3%9Fe%20aus.pdf\r\n"
     b"Content-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n"
     b"--outer\r\nContent-Type: image/png\r\nContent-Disposition: inline\r\n"
     b"Content-ID: <logo@x>\r\n\r\npng\r\n--outer--\r\n"),
    (b"From: J. Smith <j@s.com>\r\nSubject: caf\xc3\xa9 8-bit\r\nMessage-ID: <a,b@c>\r\n"
     b"Auto-Submitted: auto-replied\r\nX-4me-From: =?utf-8?q?Boss?= <boss@widget.com>\r\n"
     b"X-4me-Auth: s3cret \r\n\r\nbody\r\n"),
    (b"From: a@x.org, b@x.org\r\nSubject: =?x-unknown?q?oops?=\r\nMessage-ID: <a@b\r\n"
     b"Content-Type: text/plain; name=\"=?utf-8?q?r=C3=A9sum=C3=A9.txt?=\"\r\n"
     b"Content-Disposition: attachment\r\n\r\nx\r\n"),
]


@pytest.mark.parametrize("raw", REPRESENTATIVE)
def test_headers_read_as_policy_default_reads_them(raw: bytes) -> None:
    message = message_from_bytes(raw, policy=mime.POLICY)
    for part in message.walk():
        for name, value in part.raw_items():
            assert mime._HEADERS.text(name, value) == str(
                policy.default.header_fetch_parse(name, value)), (name, value)
    assert mime.message_id_of(raw) == parse(raw).message_id


def test_representative_messages() -> None:
    plain, rich, odd, broken = (parse(raw) for raw in REPRESENTATIVE)
    assert (plain.sender, plain.sender_name, plain.message_id) == (
        "ellen.brown@widget.com", "Ellen Brown", "r-7@bench.widget.com")
    assert (rich.subject, rich.sender, rich.sender_name) == (
        "Grüße aus München und mehr", "joerg@example.de", "Jörg Müller")
    assert (rich.message_id, rich.thread_ids, rich.text) == (
        "a.b@[10.0.0.1]", ("p1@x", "p0@x"), "Grüße")
    assert [(a.filename, a.content_type, a.inline, a.content) for a in rich.attachments] == [
        ("Grüße aus.pdf", "application/pdf", False, b"%PDF"),
        ("logo@x", "image/png", True, b"png")]
    assert rich.dmarc_passes == (("mx.example", "example.de"),)
    assert (odd.subject, odd.sender, odd.sender_name, odd.message_id) == (
        "café 8-bit", "j@s.com", "J. Smith", "<a")
    assert (odd.automatic, odd.override_from, odd.override_auth) == (
        True, "boss@widget.com", "s3cret")
    assert (broken.sender, broken.subject, broken.message_id) == (None, "oops", "a@b")
    assert [a.filename for a in broken.attachments] == ["résumé.txt"]


def test_an_unreadable_header_quarantines_even_when_unused() -> None:
    # Whatever header the stdlib's parser fails on ends the mail, not only the headers read.
    value = "a@b,<"
    try:
        policy.default.header_fetch_parse("To", value)
        unreadable = False
    except Exception:  # the parser's errors are many
        unreadable = True
    raw = f"From: a@b.org\r\nTo: {value}\r\nSubject: s\r\n\r\nbody\r\n".encode()
    if unreadable:
        with pytest.raises(Quarantined, match="unreadable message"):
            parse(raw)
    else:
        assert parse(raw).sender == "a@b.org"


def test_the_header_cache_stays_small_under_many_distinct_headers() -> None:
    cache = mime._HEADERS.recent
    cache.cache_clear()
    # Encoded words are never read as plain values, so every one of these is a header object.
    short = b"".join(b"X-H%d: =?utf-8?q?v%d?=\r\n" % (i, i) for i in range(1500))
    long = b"".join(b"X-L%d: =?utf-8?q?%s?=\r\n" % (i, b"v" * 200) for i in range(100))
    parse(b"From: a@b.org\r\n" + short + long + b"\r\nbody\r\n")
    assert cache.cache_info().currsize == mime.HEADER_CACHE_SIZE
    cache.cache_clear()
    parse(b"From: a@b.org\r\n" + long + b"\r\nbody\r\n")
    assert cache.cache_info().currsize == 0
    # A long name with a short value is as long a header: the object keeps its name.
    with pytest.raises(Quarantined):
        parse(b"From: a@b.org\r\nX-" + b"n" * 100_000 + b": =?\r\n\r\nbody\r\n")
    assert cache.cache_info().currsize == 0


def test_the_message_id_is_read_from_the_header_block_alone() -> None:
    """Intake reads it in the SMTP listener's event loop: the body is not parsed (a line in the
    body that looks like a header is not one)."""
    head = b"From: a@b.org\r\nMessage-ID: <head@b.org>\r\n"
    assert mime.message_id_of(head + b"\r\nMessage-ID: <body@b.org>\r\n" + b"x" * 1000) == \
        "head@b.org"
    assert mime.message_id_of(b"From: a@b.org\nMessage-ID: <lf@b.org>\n\nbody\n") == "lf@b.org"
    assert mime.message_id_of(head) == "head@b.org"  # headers only, no blank line


PLAIN_HEADS = [
    b"From: a@b.org\r\nMessage-ID: <x.y-1@b.org>\r\n\r\n",
    b"message-id:<lf@b.org>\nContent-Type: text/plain; charset=\"utf-8\"\n\n",
    b"Subject: folded\r\n  on two lines\r\nMessage-Id: \t<a@b>\r\n"
    b"Content-Type: multipart/mixed;boundary=\"==1 2:3/4==\"\r\n\r\n",
    b"Message-ID: <first@b>\r\nMessage-ID: <second@b>\r\n",
    b"To: c@d\r\nMessage-ID: <%s@b>\r\n" % (b"n" * 300),
]
NOT_PLAIN_HEADS = [
    b"From someone Mon Nov 30\r\nMessage-ID: <mbox@b>\r\n\r\n",
    b"Message-ID: <a@b>\r\n  <folded@b>\r\n\r\n",
    b"Message-ID: <a@b> \r\n\r\n",
    b"Message-ID: a@b\r\n\r\n",
    b"Message-ID: <a@b\r\n\r\n",
    b"Message-ID: <a,b@c>\r\n\r\n",
    b"Message-ID: <caf\xc3\xa9@b>\r\n\r\n",
    b"Message-ID: <a@b>\rSubject: lone CR\r\n\r\n",
    b"Subject: s\r\nnot a header line\r\nMessage-ID: <body@b>\r\n\r\n",
    b": no name\r\nMessage-ID: <a@b>\r\n\r\n",
    b"  continued first\r\nMessage-ID: <a@b>\r\n\r\n",
    b"Message-ID: <a@b>\r\nContent-Type: text/plain; name*=utf-8''r%C3%A9\r\n\r\n",
    b"Message-ID: <a@b>\r\nContent-Type: (comment) text/plain\r\n\r\n",
    b"Message-ID: <a@b>\r\nContent-Type: text/plain\r\n ;a*\r\n\r\n",
    b"Content-Type: a/b; c=d\n ;a*\nMessage-ID: <a@b>\n",
    b"From: a@b.org\r\nSubject: no id\r\n\r\n",
]


@pytest.mark.parametrize("head", PLAIN_HEADS + NOT_PLAIN_HEADS)
def test_a_plain_header_block_is_read_without_the_parser_to_the_parsers_answer(
        head: bytes) -> None:
    """Intake reads a plain block's Message-ID itself (a fifth of the listener's work with the
    parser); any other block goes to the parser."""
    plain = mime._plain_message_id(head)
    assert (plain is not None) is (head in PLAIN_HEADS)
    if plain is not None:
        assert plain == mime._parsed_message_id(head)
    assert mime.message_id_of(head + b"body\r\n") == mime._parsed_message_id(head)


PLAIN_MESSAGES = [
    REPRESENTATIVE[0],
    bytes(mail("caf\u00e9 \u2603 8-bit")),  # utf-8, 8bit
    b"From: a@b.org\nSubject: no MIME headers\n\nline\r\nnul\x00 and lone\rCR\n",
    b"From: a@b.org\r\nContent-Type: text/plain; charset=us-ascii\r\n"
    b"Content-Transfer-Encoding: 8BIT\r\n\r\ncaf\xc3\xa9 read as ASCII\r\n",
    b"Subject: folded\r\n\ttwice\r\n  over\r\nContent-Type: TEXT/Plain;CHARSET=\"UTF-8\"\r\n"
    b"From: =?utf-8?q?J=C3=B6rg?= <j@b.org>\r\nIn-Reply-To: <p@x>\r\n\r\n",
    b"From: a@b.org\r\nTo: a@b,<\r\n\r\nan unreadable header quarantines\r\n",
    b"From: a@b.org\r\nX-Long: %s\r\n\r\ntoo long a header\r\n" % (b"v" * 70_000),
]
NOT_PLAIN_MESSAGES = [
    *REPRESENTATIVE[1:],
    b"From: a@b.org\r\nSubject: no blank line\r\n",
    b"From: a@b.org\r\nSubject: caf\xc3\xa9\r\n\r\nbody\r\n",
    b"From: a@b.org\r\nSubject: a\x0cform feed\r\n\r\nbody\r\n",
    b"From: a@b.org\r\nContent-Type: text/plain; charset=utf-16\r\n\r\nbody\r\n",
    b"From: a@b.org\r\nContent-Type: text/plain; charset=utf-8; format=flowed\r\n\r\nb\r\n",
    b"From: a@b.org\r\nContent-Type: text/plain\r\nContent-Type: text/html\r\n\r\nb\r\n",
    b"From: a@b.org\r\nContent-Type: text/plain;\r\n charset=utf-8\r\n\r\nbody\r\n",
    b"From: a@b.org\r\nContent-Transfer-Encoding: base64\r\n\r\nYm9keQ==\r\n",
    b"From: a@b.org\r\nContent-Transfer-Encoding: 7bit\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nYm9keQ==\r\n",
    b"From: a@b.org\r\nContent-Disposition: attachment; filename=a.txt\r\n\r\nbody\r\n",
]


def _outcome(read: object, raw: bytes) -> object:
    """What a reading of ``raw`` gives, or the error it raises (its kind and text)."""
    assert callable(read)
    try:
        return read(raw, Limits())
    except Exception as exc:  # the parser's errors are many: each must be the same
        return type(exc), str(exc)


@pytest.mark.parametrize("raw", PLAIN_MESSAGES + NOT_PLAIN_MESSAGES)
def test_a_message_of_one_plain_text_is_read_without_the_parser_to_the_parsers_answer(
        raw: bytes) -> None:
    """A worker reads the most common small mail (one text/plain part, 7bit or 8bit, of plain
    headers) itself: the parser was three quarters of its reading. Any other goes to the
    parser."""
    plain = _outcome(mime._read_plain, raw)
    assert (plain is not None) is (raw in PLAIN_MESSAGES)
    if plain is not None:
        assert plain == _outcome(mime._read_parsed, raw)


_NAMES = ["From", "To", "Subject", "Message-ID", "In-Reply-To", "References", "X-4me-From",
          "Authentication-Results", "Auto-Submitted", "MIME-Version", "content-type",
          "Content-Type", "CONTENT-TRANSFER-ENCODING", "Content-Disposition", "X-Other"]
_VALUES = ["text/plain", 'text/plain; charset="utf-8"', "TEXT/PLAIN; CHARSET=US-ASCII",
           "text/plain;charset=utf-8", 'text/plain; charset="utf-8', "text/plain; charset=latin1",
           "text/html", "multipart/mixed; boundary=b", "7bit", "8Bit", "base64", " 7bit",
           "quoted-printable", "inline", "Ellen Brown <e@b.org>", "a@b, c@d", "<m@x>", "a@b,<",
           "=?utf-8?q?caf=C3=A9?=", "auto-replied", "1.0", ""]
_TEXT = st.text(st.sampled_from("aZ <>@,;:=?\"()\\\t-.\x00\x0c\u00e9"), max_size=12)


@st.composite
def _messages(draw: st.DrawFn) -> bytes:
    eol = draw(st.sampled_from(["\r\n", "\n"]))
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(_NAMES))
        value = draw(st.one_of(st.sampled_from(_VALUES), _TEXT))
        fold = draw(st.sampled_from(["", f"{eol} ", f"{eol}\t", f"{eol}  x"]))
        blanks = draw(st.sampled_from(["", " ", " \t"]))
        lines.append(f"{name}:{blanks}{value}{fold}{eol}")
    body = draw(st.binary(max_size=20) | st.sampled_from([b"line\r\n", "\u00e9\r\n".encode()]))
    blank = draw(st.sampled_from([eol, ""]))
    return "".join(lines).encode("utf-8", "surrogateescape") + blank.encode() + body


@settings(max_examples=600, deadline=None)
@given(_messages())
def test_any_message_read_without_the_parser_reads_as_the_parser_reads_it(raw: bytes) -> None:
    plain = _outcome(mime._read_plain, raw)
    if plain is not None:
        assert plain == _outcome(mime._read_parsed, raw)


@pytest.mark.parametrize("value", [
    "Ellen Brown <ellen.brown@widget.com>", "ellen.brown@widget.com", "O'Brien P=Q <a.b@c>",
    "x!#$%&*+/=?^_`{|}~-y <l!#$%&'*+/=?^_`{|}~-l.2@d-1.e>", "Single <s@t>",
    "J. Smith <j@s.com>", "a@x.org, b@x.org", "Two  Spaces <a@b>", "<a@b>", "a@b (Name)",
    "\"Quoted\" <q@b>", "=?utf-8?q?J=C3=B6rg?= <j@b>", "Name <a@b", "Name<a@b>", "", "@",
])
def test_a_plain_from_is_read_as_getaddresses_reads_it(value: str) -> None:
    assert mime._authors([value]) == getaddresses([value])


def test_recipients() -> None:
    assert parse_recipient("WDC@Mail.EventDesk.local") == Recipient(
        "wdc", None, "mail.eventdesk.local")
    assert parse_recipient("<network.wdc@mail.x>").team_local_part == "network"
    for bad in ("wdc", "@mail.x", "a@b@c", "bad name@mail.x", ".wdc@mail.x"):
        with pytest.raises(BadRecipient):
            parse_recipient(bad)


def test_parameters_end_at_a_blank_line_or_end() -> None:
    text = "#category: rfc\n#high\n#team: Network Operations\n\nThe body\n#not: a param"
    parameters, body = split_parameters(text)
    assert parameters == [("category", "rfc"), ("high", None),
                          ("team", "Network Operations")]
    assert body == "The body\n#not: a param"
    assert split_parameters("#rfc\n#end\nbody") == ([("rfc", None)], "body")
    assert split_parameters("Hello\n#rfc") == ([], "Hello\n#rfc")
    assert split_parameters("#1 problem today") == ([], "#1 problem today")


def test_parameters_need_the_specialist_role() -> None:
    given = apply_parameters([("rfc", None)], {}, "wdc", accounts)
    assert given.fields == {}
    assert "Specialist" in given.ignored["parameters"]


def test_shortcuts_flags_and_checks() -> None:
    given = apply_parameters(
        [("rfc", None), ("high", None), ("completed", None), ("workaround", None),
         ("internal", None), ("impact", "huge"), ("time_spent", "15"),
         ("custom_field_42", "blue"), ("colour", "red"), ("requested_for", "x@y.org")],
        SPECIALIST, "wdc", accounts)
    assert given.fields == {"category": "rfc", "impact": "high", "status": "completed",
                            "completion_reason": "workaround"}
    assert given.internal
    assert given.kept == {"time_spent": "15", "custom_field_42": "blue"}
    assert set(given.ignored) == {"impact", "colour", "requested_for"}
    assert "Service Desk Analyst" in given.ignored["requested_for"]
    assert apply_parameters([("requested_for", "x@y.org")], ANALYST, "wdc",
                            accounts).fields == {"requested_for": "x@y.org"}


def test_account_suffixes_need_a_role_in_that_account() -> None:
    roles: dict[str, object] = {"wdc": ["specialist"], "other": ["specialist"]}
    ok = apply_parameters([("ci", "CMP1@other"), ("member", "a@b.org@other")], roles, "wdc",
                          accounts)
    assert ok.fields == {"ci": "CMP1@other", "member": "a@b.org@other"}
    refused = apply_parameters([("ci", "CMP1@other"), ("member", "a@other")], SPECIALIST,
                               "wdc", accounts)
    assert set(refused.ignored) == {"ci"}  # a@other is an address, not a suffix
    assert refused.fields == {"member": "a@other"}


def test_mail_defaults() -> None:
    parsed = parse(bytes(mail("#rfc\n\nPlease help")))
    parameters, body = split_parameters(parsed.text)
    given = apply_parameters(parameters, SPECIALIST, "wdc", accounts)
    fields = request_fields(parsed, body, given, team_id=102)
    assert fields == {"subject": "Printer on fire", "sourceID": "abc.123@widget.com",
                      "team_id": "102", "category": "rfc", "note": "Please help"}
    given.fields["team"] = "Service Desk"
    assert "team_id" not in request_fields(parsed, body, given, team_id=102)


def test_subject_ids_and_feedback_window() -> None:
    assert subject_request_ids("Re: Request #123456 and 12345 and 1234567") == [123456, 1234567]
    now = datetime(2026, 1, 29, tzinfo=UTC)
    assert within_feedback(now - timedelta(days=28), now, 28)
    assert not within_feedback(now - timedelta(days=28, seconds=1), now, 28)
