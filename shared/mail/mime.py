"""Reading a raw message (RFC 5322 / MIME) safely: what the Mail API needs from it, or a reason
to quarantine it.

The stdlib parser with ``policy.default`` builds the whole tree in memory, so the limits are
checked on the raw bytes before it runs (size, estimates of the parts and headers it could
build), while it runs (the parts it makes: the message itself and each message enclosed count
too) and on the tree after (nesting depth, header length). Any error of the parser or of a part's
decoding that is not a plain unknown charset ends the message as :class:`Quarantined` with its
reason; nothing in a message is executed or fetched.

Headers cost most of the CPU: policy.default builds a header object (a parse with its
``_header_value_parser``) at every read, and a part's Content-Type alone is read about eight
times (get_body, get_content, the attachments). So :data:`POLICY` is policy.default with the
same header classes and two savings, neither of which changes a result:

* header objects are immutable, so the most recent ones with short values are reused
  (:class:`_HeaderFactory`): a part's repeated reads, and the values every message repeats
  (``text/plain; charset="utf-8"``, ``7bit``, ``1.0``, a regular sender's From);
* a plain value is read as it is (:meth:`_HeaderFactory.text`): ASCII, no encoded word, and of
  a form whose header object's text is exactly the value and whose parse cannot fail (any
  unstructured header, a Message-ID ``<dot-atom@dot-atom>``, a list of ``addr-spec`` or
  ``Some Name <addr-spec>`` joined by ``", "``). Everything else is still built by the header
  class, so an unreadable header still quarantines the message whether it is used or not.

The message's own header texts are made once, when their lengths are checked, and looked up by
name after. Three forms are read without the parser, each held to the parser's answer by a
test: the most common small mail, one text/plain part of plain headers (:func:`_read_plain`:
the parser was three quarters of reading it); a plain header block's Message-ID at intake
(:func:`message_id_of`); and a From of one plain mailbox (:func:`_authors`, ``getaddresses``
otherwise). Each header value is still read as the parser path reads it
(:class:`_HeaderFactory`), and the limits are checked alike.

Reading the address headers' raw values with ``email.utils.getaddresses`` was not taken: it
disagrees with the policy's parser on unusual values (an encoded word in a local part, an
unterminated angle address), and the sender decides who acts. Nor was compat32 for
:func:`message_id_of`: it reads ``<a@b`` as ``<a@b`` where the policy reads ``a@b``, and it
skips the Content-Type read the parser makes at the end, whose failure gives None.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.headerregistry import (
    AddressHeader,
    BaseHeader,
    HeaderRegistry,
    MessageIDHeader,
    UnstructuredHeader,
)
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from email.policy import Policy
from email.utils import getaddresses
from functools import lru_cache
from html.parser import HTMLParser

MAX_ATTACHMENTS = 20
# A part's header texts by lower-case name, in the order of the message.
Headers = dict[str, list[str]]
_MESSAGE_ID = re.compile(r"<([^<>\s]{1,250})>")
_MAX_THREAD_IDS = 50
MAX_ADDRESS = 254
# RFC 2045's token characters, either side of the slash.
_TOKEN_TYPE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,127}/[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,127}")
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_PART_HEADER = re.compile(rb"^content-type\s*:", re.IGNORECASE | re.MULTILINE)
_HEADER_LINE = re.compile(rb"^[!-9;-~]+\s*:", re.MULTILINE)

# The forms read without the header classes (see the module docstring): atext as the parser's
# get_atext takes it, restricted to ASCII; single spaces, since the parser collapses runs.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*"
_MAILBOX = rf"(?:{_ATOM}(?: {_ATOM})* <{_ADDR_SPEC}>|{_ADDR_SPEC})"
_ANYTHING = re.compile(r".*", re.DOTALL)
_PLAIN_ADDRESSES = re.compile(rf"{_MAILBOX}(?:, {_MAILBOX})*")
_PLAIN_MESSAGE_ID = re.compile(rf"<{_ADDR_SPEC}>")
_PLAIN_AUTHOR = re.compile(
    rf"(?P<name>{_ATOM}(?: {_ATOM})*) <(?P<address>{_ADDR_SPEC})>|(?P<bare>{_ADDR_SPEC})")
# A plain header block (:func:`_plain_headers`): lines of printable ASCII and tabs, a header
# line the parser's headerRE with a name, its value after the blanks the policy strips.
_PLAIN_BLOCK = re.compile(rb"[\t\n\r -~]*")
_PLAIN_HEADER = re.compile(r"(?P<name>[!-9;-~]+):[ \t]*(?P<value>.*)", re.DOTALL)
# A Content-Type of tokens (:func:`_plain_message_id`); one of a text read as it is
# (:func:`_read_plain`), whose charset decodes it as the parser's content manager does.
_WORD = r"[A-Za-z0-9._+-]+"
_PLAIN_CONTENT_TYPE = re.compile(
    rf"{_WORD}/{_WORD}(?:; ?{_WORD}=(?:{_WORD}|\"[A-Za-z0-9 ._+=:/-]*\"))*")
_PLAIN_TEXT_TYPE = re.compile(
    r'text/plain(?:; ?charset=(?P<quote>"?)(?P<charset>us-ascii|utf-8)(?P=quote))?',
    re.IGNORECASE)
_PLAIN_ENCODING = re.compile(r"7bit|8bit", re.IGNORECASE)
HEADER_CACHE_SIZE = 64
HEADER_CACHE_VALUE_MAX = 128


def _plain_form(kind: type) -> re.Pattern[str] | None:
    if issubclass(kind, UnstructuredHeader):
        return _ANYTHING
    if issubclass(kind, AddressHeader):
        return _PLAIN_ADDRESSES
    return _PLAIN_MESSAGE_ID if issubclass(kind, MessageIDHeader) else None


class _HeaderFactory(HeaderRegistry):
    """policy.default's header factory, cheaper.

    The header objects of the last :data:`HEADER_CACHE_SIZE` headers of up to
    :data:`HEADER_CACHE_VALUE_MAX` characters, name and value together (a header object keeps
    its name too, and a name may be as long as the message), are kept for reuse. Only short
    ones and only a few: a header object holds its parse tree, up to ~2.5 KB a character of
    value (an address list of backslashes), so hostile values fill it with at most ~64 x 128 x
    2.5 KB = 20 MB, ordinary ones (Content-Types of ~70 characters) with about 2 MB. The class
    of a header is made once per kind (HeaderRegistry makes a new type at every call)."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[type, type[BaseHeader]] = {}
        self._plain_forms = {kind: _plain_form(kind)
                             for kind in (*self.registry.values(), self.default_class)}
        self.recent = lru_cache(maxsize=HEADER_CACHE_SIZE)(self._build)

    def __getitem__(self, name: str) -> type[BaseHeader]:
        kind = self.registry.get(name.lower(), self.default_class)
        if kind not in self._classes:
            self._classes[kind] = super().__getitem__(name)
        return self._classes[kind]

    def _build(self, name: str, value: str) -> BaseHeader:
        return self[name](name, value)

    def __call__(self, name: str, value: str) -> BaseHeader:
        if len(name) + len(value) > HEADER_CACHE_VALUE_MAX:
            return self._build(name, value)
        return self.recent(name, value)

    def text(self, name: str, raw: str) -> str:
        """The text of the header object policy.default makes of a raw value (it raises as that
        does); a plain value is that text already."""
        value = raw.replace("\r", "").replace("\n", "")  # what header_fetch_parse passes on
        form = self._plain_forms.get(self.registry.get(name.lower(), self.default_class))
        if form is not None and value.isascii() and "=?" not in value and form.fullmatch(value):
            return value
        return str(self(name, value))


_HEADERS = _HeaderFactory()
# The blank line that ends a message's headers.
_HEADER_END = re.compile(rb"\r?\n\r?\n")
POLICY = policy.default.clone(header_factory=_HEADERS)


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 10 * 1024 * 1024
    max_parts: int = 500
    max_depth: int = 10
    max_headers: int = 2000
    max_header_bytes: int = 64 * 1024
    # One attachment's decoded content. Decoding never makes a part larger than its raw text,
    # so memory is bounded by max_bytes anyway: this is the deployment's limit on what it keeps.
    max_attachment_bytes: int = 10 * 1024 * 1024


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    size: int
    inline: bool
    content: bytes = field(default=b"", repr=False)  # decoded


@dataclass(frozen=True)
class ParsedMail:
    message_id: str | None
    subject: str
    sender: str | None  # the From address (addr-spec); who it is is never its display name
    thread_ids: tuple[str, ...]  # In-Reply-To then References, newest reference first
    text: str
    attachments: tuple[Attachment, ...]  # at most MAX_ATTACHMENTS
    attachments_omitted: int
    override_from: str | None = None  # X-4me-From
    override_auth: str | None = None  # X-4me-Auth
    # (authserv-id, header.from domain or "") of each Authentication-Results with dmarc=pass
    dmarc_passes: tuple[tuple[str, str], ...] = ()
    # An automatic message (RFC 3834, or a list's): never answered, so no mail loop.
    automatic: bool = False
    sender_name: str = ""  # the From display name: only to name a person created for it


class Quarantined(ValueError):
    """The message is refused as malformed or hostile; the text says why."""


def _check_raw(raw: bytes, limits: Limits) -> None:
    if len(raw) > limits.max_bytes:
        raise Quarantined(f"larger than {limits.max_bytes} bytes")
    # Estimates, before the parser builds anything: a part with headers has a Content-Type
    # line (one without is counted as the parser makes it: _counting). The parser breaks
    # lines at a bare CR too, and so do the counts.
    lines = raw if raw.count(b"\r") == raw.count(b"\r\n") else \
        raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if len(_PART_HEADER.findall(lines)) > limits.max_parts:
        raise Quarantined(f"more than {limits.max_parts} MIME parts")
    if len(_HEADER_LINE.findall(lines)) > limits.max_headers:
        raise Quarantined(f"more than {limits.max_headers} header lines")


def _counting(limit: int) -> Callable[..., EmailMessage]:
    """The parser's message factory, refusing to make more than ``limit`` parts: exact where
    the estimates of :func:`_check_raw` are not (a part needs no header of its own, and a
    boundary has several spellings: a million header-less parts passed them)."""
    made = -1  # the parser calls its factory once first, to learn how to call it

    def factory(policy: Policy = POLICY) -> EmailMessage:
        nonlocal made
        made += 1
        if made > limit:
            raise Quarantined(f"more than {limit} MIME parts")
        return EmailMessage(policy=policy)

    return factory


def _texts(items: Iterable[tuple[str, str]], limits: Limits) -> Headers:
    """The texts of a part's headers (name, raw value), each read (it may be too long, or
    unreadable) as policy.default reads it."""
    texts: Headers = {}
    for name, raw in items:
        text = _HEADERS.text(name, raw)
        if len(name) + len(text) > limits.max_header_bytes:
            raise Quarantined(f"a header longer than {limits.max_header_bytes} bytes")
        texts.setdefault(name.lower(), []).append(text)
    return texts


def _walk(message: Message, limits: Limits) -> tuple[list[Message], Headers]:
    """Every leaf part, depth first, bounded in depth (iterative: no recursion to exhaust);
    and the message's own header texts, read once (every header is read for its length)."""
    leaves: list[Message] = []
    top: Headers = {}
    stack: list[tuple[Message, int]] = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        if depth > limits.max_depth:
            raise Quarantined(f"MIME parts nested deeper than {limits.max_depth}")
        headers = _texts(part.raw_items(), limits)
        if part is message:
            top = headers
        children = part.get_payload() if part.is_multipart() else None
        if isinstance(children, list):
            stack.extend((child, depth + 1) for child in reversed(children)
                         if isinstance(child, Message))
        else:
            leaves.append(part)
    return leaves, top


class _Text(HTMLParser):
    """The text of an HTML body; scripts and styles dropped, nothing fetched."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:  # noqa: ARG002
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("br", "p", "div", "li", "tr"):
            self.chunks.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.chunks.append(data)


def html_to_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    parser.close()
    lines = (line.strip() for line in "".join(parser.chunks).splitlines())
    return "\n".join(lines).strip()


# Python codecs that decode bytes to text but are no mail charset: punycode takes time that
# grows with the square of the text (minutes for a few MB), the others are Python's own.
_NOT_CHARSETS = frozenset({"punycode", "idna", "unicode-escape", "raw-unicode-escape"})


def _decoded(part: Message) -> str:
    """A text part's content; an unknown or lying charset, or a codec that is no mail charset,
    is read as UTF-8 with replacements."""
    charset = part.get_content_charset()
    try:
        usable = charset is None or codecs.lookup(charset).name not in _NOT_CHARSETS
        content = part.get_content() if usable else None  # type: ignore[attr-defined]
        if isinstance(content, str):
            return content
    except (LookupError, UnicodeError, AssertionError, ValueError):
        pass
    payload = part.get_payload(decode=True)
    return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""


def _body_text(message: EmailMessage) -> tuple[str, Message | None]:
    body = message.get_body(preferencelist=("plain", "html"))
    if body is None:
        return "", None
    text = _decoded(body)
    if body.get_content_type() == "text/html":
        text = html_to_text(text)
    return _clean(text), body


def _clean(text: str) -> str:
    """A body's text with LF line breaks, without NUL (PostgreSQL refuses it in text), and a
    lone surrogate (UTF-7 can decode to one; no UTF-8 text can hold it) replaced."""
    text = text.replace("\r\n", "\n").replace("\x00", "")
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def _attachment(part: Message, limits: Limits) -> Attachment | None:
    disposition = part.get_content_disposition()
    filename = part.get_filename()
    inline_image = disposition == "inline" and part.get_content_maintype() == "image"
    if disposition != "attachment" and not filename and not inline_image:
        return None
    payload = part.get_payload(decode=True)
    content = payload if isinstance(payload, bytes) else b""
    if len(content) > limits.max_attachment_bytes:
        raise Quarantined(f"an attachment larger than {limits.max_attachment_bytes} bytes "
                          "decoded")
    return Attachment(
        filename=(_plain(filename) or _plain(part.get("Content-ID")) or "unnamed"
                  ).strip("<> ")[:255],
        content_type=media_type(part.get_content_type()), size=len(content),
        inline=disposition == "inline", content=content,
    )


def media_type(text: str) -> str:
    """``text`` if it is a ``type/subtype`` of RFC 2045 tokens, else application/octet-stream:
    an attachment's type goes back out in an HTTP header of its download."""
    return text if _TOKEN_TYPE.fullmatch(text) else "application/octet-stream"


def _attachments(leaves: list[Message], body: Message | None, limits: Limits
                 ) -> list[Attachment]:
    found = []
    for part in leaves:
        item = _attachment(part, limits) if part is not body else None
        if item is not None:
            found.append(item)
    return found


def _plain(value: object) -> str:
    """A header's (or a filename's) text without NUL: an encoded word can carry one, and
    PostgreSQL refuses it in text, which would fail every mail of the run."""
    return str(value or "").replace("\x00", "")


def _message_id(value: object) -> str | None:
    found = _MESSAGE_ID.search(_plain(value))
    if found:
        return found.group(1)
    text = _plain(value).strip()
    return text[:250] or None


def _first(headers: Headers, name: str) -> str | None:
    """The text of the first ``name`` header (lower case), as ``get`` would give it."""
    found = headers.get(name)
    return found[0] if found else None


def _dmarc_passes(headers: Headers) -> tuple[tuple[str, str], ...]:
    """RFC 8601 results: the authserv-id, then ``method=result`` clauses and their properties."""
    passes = []
    for header in headers.get("authentication-results", []):
        authserv, *clauses = header.split(";")
        authserv_id = authserv.strip().split(" ")[0].lower()
        for clause in clauses:
            words = clause.split()
            if words and words[0].lower() == "dmarc=pass":
                domain = next((word.partition("=")[2].lower() for word in words[1:]
                               if word.lower().startswith("header.from=")), "")
                passes.append((authserv_id, domain))
    return tuple(passes)


def _automatic(headers: Headers) -> bool:
    submitted = (_first(headers, "auto-submitted") or "no").strip().lower()
    precedence = (_first(headers, "precedence") or "").strip().lower()
    return submitted != "no" or precedence in ("bulk", "junk", "list")


def single_address(*values: object) -> str | None:
    """The one address (addr-spec, lower case) the header values name; None for none or many:
    a list of authors names no one sender to act for."""
    return _single(getaddresses([str(value) for value in values]))


def _authors(values: list[str]) -> list[tuple[str, str]]:
    """``getaddresses(values)``; one plain mailbox (``Some Name <addr-spec>`` or the addr-spec
    alone, :data:`_PLAIN_AUTHOR`) is read by the pattern, to the same answer
    (tests/test_mail_rules.py)."""
    found = _PLAIN_AUTHOR.fullmatch(values[0]) if len(values) == 1 else None
    if found is None:
        return getaddresses(values)
    return [(found["name"] or "", found["address"] or found["bare"])]


def _single(named: list[tuple[str, str]]) -> str | None:
    """The one address of a From (None for none, several, or one no mailbox can have: longer
    than RFC 5321's 254 characters, or with a control character, which an encoded word can
    carry: a person made for it could not be stored)."""
    addresses = [address for _, address in named if address]
    if len(addresses) != 1 or addresses[0].count("@") != 1:
        return None
    address = addresses[0].strip().lower()
    if len(address) > MAX_ADDRESS or _CONTROL.search(address):
        return None
    return address


def _display_name(named: list[tuple[str, str]]) -> str:
    names = [_plain(name) for name, _ in named]
    return " ".join(names[0].split())[:255] if len(names) == 1 else ""


def message_id_of(raw: bytes) -> str | None:
    """The Message-ID, from the headers alone (intake's duplicate check); None if unreadable.
    Only the header block is read: intake runs this in the SMTP listener's event loop, where a
    large body would hold every session. A plain header block is read without the parser
    (:func:`_plain_message_id`), to the same answer."""
    end = _HEADER_END.search(raw)
    head = raw[:end.end()] if end else raw
    plain = _plain_message_id(head)
    return plain if plain is not None else _parsed_message_id(head)


def _parsed_message_id(head: bytes) -> str | None:
    try:
        parsed = BytesHeaderParser(policy=POLICY).parsebytes(head)
        return _message_id(next((_HEADERS.text(key, raw) for key, raw in parsed.raw_items()
                                 if key.lower() == "message-id"), None))
    except Exception:  # an unreadable header is the worker's to quarantine, not intake's
        return None


def _plain_headers(head: bytes) -> tuple[list[tuple[str, str]], int | None] | None:
    """The raw items (name, value) the parser makes of a plain header block, and where the
    blank line that ends it ends (None without one); None when the block is not plain.

    Plain: printable ASCII and tabs, each line break CRLF or LF, every line a header (``name:``,
    the parser's name characters) or the continuation of one. The parser splits such a block
    into the same lines, and its policy makes each value of them so (``header_source_parse``):
    the first line's after the blanks, the continuations as they are, the line break at the
    end taken off."""
    if head.count(b"\r") != head.count(b"\r\n") or not _PLAIN_BLOCK.fullmatch(head):
        return None
    items: list[tuple[str, str]] = []
    end: int | None = None
    read = 0
    for line in head.decode().splitlines(keepends=True):
        read += len(line)
        if line in ("\r\n", "\n"):
            end = read
            break
        if line[0] in " \t":
            if not items:
                return None
            name, value = items[-1]
            items[-1] = (name, value + line)
            continue
        header = _PLAIN_HEADER.match(line)
        if header is None:
            return None
        items.append((header["name"], header["value"]))
    return [(name, value.rstrip("\r\n")) for name, value in items], end


def _plain_message_id(head: bytes) -> str | None:
    """:func:`_parsed_message_id` of a plain header block (:func:`_plain_headers`), without the
    parser; None when the block is not plain, or has no Message-ID, or its first one is not one
    line of the form ``<addr-spec>``, or a Content-Type (which the parser reads at the end, and
    may fail on) is not one line of a simple form: the parser answers then.
    tests/test_mail_rules.py holds the two to the same answers."""
    plain = _plain_headers(head)
    if plain is None:
        return None
    found: str | None = None
    for name, value in plain[0]:
        lower = name.lower()
        if lower == "message-id" and found is None:
            if not _PLAIN_MESSAGE_ID.fullmatch(value):
                return None
            found = _message_id(value)
        elif lower == "content-type" and not _PLAIN_CONTENT_TYPE.fullmatch(value):
            return None
    return found


Read = tuple[Headers, str, list[Attachment]]  # the message's header texts, text, attachments


def _read_plain(raw: bytes, limits: Limits) -> Read | None:
    """:func:`_read_parsed` of a message of one text/plain part whose content is read as it is,
    without the parser; None for any other message (the parser reads it).

    Such a message: a plain header block (:func:`_plain_headers`) and its blank line; at most
    one Content-Type, ``text/plain`` with at most a charset, ``us-ascii`` or ``utf-8``; at most
    one Content-Transfer-Encoding, ``7bit`` or ``8bit``; no Content-Disposition. Its text is
    the bytes after the blank line, decoded with the charset (ASCII without one) as the
    content manager decodes them. tests/test_mail_rules.py holds the two to the same answers,
    and to the same quarantines."""
    head = _HEADER_END.search(raw)
    plain = _plain_headers(raw[:head.end()]) if head is not None else None
    if plain is None or plain[1] is None:
        return None
    items, end = plain
    headers = {name.lower(): value for name, value in items}
    named = [name.lower() for name, _ in items]
    if "content-disposition" in headers or named.count("content-type") > 1 \
            or named.count("content-transfer-encoding") > 1:
        return None
    kind = _PLAIN_TEXT_TYPE.fullmatch(headers.get("content-type", "text/plain"))
    encoding = headers.get("content-transfer-encoding", "7bit")
    if kind is None or not _PLAIN_ENCODING.fullmatch(encoding):
        return None
    text = raw[end:].decode(kind["charset"] or "ascii", "replace")
    return _texts(items, limits), _clean(text), []


def _read_parsed(raw: bytes, limits: Limits) -> Read:
    """The message's header texts, text and attachments, by the parser."""
    message = message_from_bytes(raw, _class=_counting(limits.max_parts), policy=POLICY)
    assert isinstance(message, EmailMessage)
    leaves, headers = _walk(message, limits)
    text, body = _body_text(message)
    return headers, text, _attachments(leaves, body, limits)


def parse(raw: bytes, limits: Limits | None = None) -> ParsedMail:
    """The message's fields; raises Quarantined with the reason when it cannot be read safely."""
    limits = limits or Limits()
    _check_raw(raw, limits)
    try:
        headers, text, attachments = _read_plain(raw, limits) or _read_parsed(raw, limits)
        subject = _plain(_first(headers, "subject"))
        thread = [*_MESSAGE_ID.findall(_plain(_first(headers, "in-reply-to"))),
                  *reversed(_MESSAGE_ID.findall(_plain(_first(headers, "references"))))]
        message_id = _message_id(_first(headers, "message-id"))
        authors = _authors(headers.get("from", []))
        sender = _single(authors)
        override = _first(headers, "x-4me-from")
        override_auth = _first(headers, "x-4me-auth")
        dmarc_passes = _dmarc_passes(headers)
        automatic = _automatic(headers)
        sender_name = _display_name(authors)
    except Quarantined:
        raise
    except Exception as exc:  # the parser's and decoders' errors are many; each one is this mail's
        raise Quarantined(f"unreadable message: {type(exc).__name__}") from exc
    return ParsedMail(
        message_id=message_id, subject=" ".join(subject.split()), sender=sender,
        thread_ids=tuple(dict.fromkeys(thread))[:_MAX_THREAD_IDS], text=text,
        attachments=tuple(attachments[:MAX_ATTACHMENTS]),
        attachments_omitted=max(0, len(attachments) - MAX_ATTACHMENTS),
        override_from=single_address(override) if override is not None else None,
        override_auth=override_auth.strip() if override_auth is not None else None,
        dmarc_passes=dmarc_passes, automatic=automatic, sender_name=sender_name,
    )
