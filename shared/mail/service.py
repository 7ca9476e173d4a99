"""The Mail API: accepting a raw message durably, then turning it into a request or a note.

Intake (``eventdesk smtp`` and ``POST /v1/mail``) stores the raw message in the database and
only then answers (250 / 202); the ``mail.process`` message that follows (at once, or under a
stream of mail with those of the next WAKE_INTERVAL) is a wake-up call. If the broker does not
take it, or the process dies between the commit and the publish, a worker's next run takes the
message along, or the beat's ``mail.sweep`` queues it again, so the database row alone is the
promise.

A worker processes each message once: the row is locked and its state checked and changed in
the same database transaction (and a new request goes through the events' own processing,
``process_held``: the row lock, on SQLite the write lock of the take, is what keeps a
message's transaction its run's). In order:

1. read the MIME under limits; a malformed or hostile message ends ``quarantined`` with the
   reason (transaction ``failed``);
2. the sender: a person of the account or its directory account by the From address (primary
   emails first, then other emails), never by display name, or by ``X-4me-From`` where the
   account's Email Policy allows it (shared/mail/rules.py); an unknown sender ends ``rejected``,
   or becomes a new person of the account (no roles) when the Email Policy says so;
3. a reply becomes a note on the request it answers, when the Email Policy allows replies as
   notes: by In-Reply-To/References (to a message that created or added a note to the
   request), then by the ``#source``/``#sourceID`` parameters (a Specialist's; the source is
   ``Email`` when only the sourceID is given), then by a 6+ digit request id in the subject;
   the request must have been updated within the feedback window (28 days by default) and be
   the sender's (created, requested by or for them) or the sender a Specialist of the
   account. The note takes the ``#internal``, ``#markdown`` and ``#time_spent`` of a
   Specialist; no other parameter changes the request;
4. when the Email Policy does not allow mail to create requests: ``rejected``, and an 'Email
   Rejected' reply through the relay (shared/mail/outbound.py);
5. anything else is a new request with the Mail API defaults and the sender's parameters
   (shared/mail/rules.py), through the events' processing: resolution, templates and defaults
   are the 4me Events API's, event matching its Mail API variant (shared/requests/matching.py:
   an open request of the last 24 hours gets the mail's note instead).
"""

from __future__ import annotations

import asyncio
import atexit
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy.orm import Session

from shared import metrics, observe
from shared.batching import Coalescer, GroupRunner, runs
from shared.cache import TTLCache
from shared.db.engine import HeldConnection, LoopConnection, session_scope
from shared.ids import make_transid
from shared.logs import get_logger
from shared.mail import outbound, queries, store
from shared.mail.mime import Limits, ParsedMail, Quarantined, message_id_of, parse
from shared.mail.queries import Destination
from shared.mail.rules import (
    BadRecipient,
    MailParameters,
    Recipient,
    UnknownRecipient,
    acting_sender,
    apply_parameters,
    may_access,
    note_text,
    parse_recipient,
    request_fields,
    split_from,
    split_parameters,
    subject_request_ids,
    within_feedback,
)
from shared.mail.schemas import EmailPolicy
from shared.messaging import MAIL_PROCESS, MAIL_QUEUE
from shared.messaging.publish import Publisher, PublishError, task_message
from shared.records.directory import Directory, PersonRef, Scope
from shared.requests.defaults import DEFAULT_SOURCE
from shared.settings import Settings
from shared.transactions.failures import Backoff, Fault, classify, isolating
from shared.transactions.failures import reason as fault_reason
from shared.transactions.schemas import EventBatch, MailFacts, QueuedEvent
from shared.transactions.service import process_held, record_failure

log = get_logger(__name__)
THREAD_REASON = "reply to a message of the request (In-Reply-To/References)"
SOURCE_REASON = "the request's source and sourceID"
SUBJECT_REASON = "request id in the subject"
NEVER_UPDATES = "parameters never update an existing request"
# Raw bytes stored in one transaction at most: bounds a statement whatever the concurrency.
MAX_GROUP_BYTES = 16 * 1024 * 1024
# A stream of mail is queued in one mail.process task an interval (shared/batching.Coalescer),
# not one a group commit: a worker's cost is mostly per task (a message to consume, buffer and
# acknowledge), and its runs take along what is stored meanwhile anyway. Short against the
# worker's batch wait, so the wake-up adds nothing a worker would notice.
WAKE_INTERVAL = 0.02
# Intake's groups are committed one after the other (the HTTP intake's group runner; the SMTP
# listener's CommitGroups): one connection of the process, held between them, serves them all;
# on an event loop (the listener's, on PostgreSQL), the loop's own.
_STORE = HeldConnection()
atexit.register(_STORE.close)
_LOOP_STORE = LoopConnection()
atexit.register(_LOOP_STORE.close)


class TooLarge(ValueError):
    """Over the Mail API's size limit (SMTP 552, HTTP 413)."""


class EmptyMessage(ValueError):
    """No message at all, only blanks: nothing a worker could read (SMTP 554, HTTP 400)."""


class MailRejected(ValueError):
    """The message cannot become a request or note (its sender is unknown, say)."""


@dataclass(frozen=True)
class MailConfig:
    """The deployment's settings for processing (the Email Policy is per account)."""

    limits: Limits = field(default_factory=Limits)
    relay: str | None = None
    reply_from: str | None = None
    authserv_ids: frozenset[str] = frozenset()
    attachment_dir: Path | None = None  # none: attachments are kept in the database

    @classmethod
    def from_settings(cls, settings: Settings) -> MailConfig:
        return cls(
            limits=Limits(max_bytes=settings.mail_max_bytes,
                          max_attachment_bytes=settings.mail_max_attachment_bytes),
            relay=settings.mail_relay or None,
            reply_from=settings.mail_reply_from or None,
            attachment_dir=settings.mail_attachment_dir,
            authserv_ids=frozenset(item.strip().lower() for item in
                                   settings.mail_authserv_ids.split(",") if item.strip()))


def queue(publisher: Publisher, mail_ids: list[int]) -> None:
    """Ask a worker to process the stored messages (one task for them all). A broker that
    refuses is logged only: the messages are stored, and the sweep queues them later."""
    try:
        publisher.publish(task_message(MAIL_PROCESS, MAIL_QUEUE, json.dumps([mail_ids])), {})
    except PublishError as exc:
        log.warning("mail stored but not queued; the sweep will queue it", mail_ids=mail_ids,
                    error=str(exc))


class Accepting:
    """A message on its way into the database, and what became of it."""

    __slots__ = ("error", "mail", "mail_id", "transid")

    def __init__(self, mail: store.NewMail) -> None:
        self.mail = mail
        self.transid = mail.transid
        self.mail_id: int | None = None
        self.error: BaseException | None = None


class MailIntake:
    """Shared by the SMTP listener and ``POST /v1/mail``."""

    def __init__(self, publisher: Publisher, secret: bytes, max_bytes: int,
                 cache_ttl: float = 0.0) -> None:
        self._queue: Callable[[list[int]], None] = lambda ids: queue(publisher, ids)
        self._wake: Coalescer[int] = Coalescer(self._queue, WAKE_INTERVAL)
        self._secret = secret
        self.max_bytes = max_bytes
        # What an address is, refusals included: RCPT of every message asks, and a flood of
        # mail for unknown addresses must not become a flood of queries.
        self._destinations: TTLCache[Recipient, Destination | tuple[type[BadRecipient], str]] \
            = TTLCache(self._look_up, cache_ttl)
        self._group = GroupRunner(self.commit)

    def check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise TooLarge(f"the message is larger than {self.max_bytes} bytes")

    def destination(self, address: str, account_id: str | None = None) -> Destination:
        """The account (and team) of ``address``, which must be ``account_id``'s when given;
        raises BadRecipient, or the database's error."""
        recipient = parse_recipient(address)
        if account_id is not None and recipient.account_id != account_id:
            raise UnknownRecipient(f"{address[:100]} is not an address of {account_id}")
        return _destination_or_refusal(self._destinations.get(recipient))

    def known_destination(self, address: str) -> Destination | None:
        """:meth:`destination` from memory alone: None when the database must be asked."""
        found = self._destinations.peek(parse_recipient(address))
        return None if found is None else _destination_or_refusal(found)

    @staticmethod
    def _look_up(recipient: Recipient) -> Destination | tuple[type[BadRecipient], str]:
        with session_scope() as session:
            try:
                return queries.destination(session, recipient)
            except BadRecipient as exc:  # kept as its kind and text: raised anew each time
                return type(exc), str(exc)

    def prepare(self, raw: bytes, destinations: Sequence[Destination], peer: str,
                now: datetime) -> list[Accepting]:
        """The message, once for each of its destinations, as :meth:`commit` takes it (its
        headers read once); raises TooLarge or EmptyMessage."""
        self.check_size(len(raw))
        if not raw or raw.isspace():  # no copy of a large message, as strip() would make
            raise EmptyMessage("the message is empty")
        message_id = message_id_of(raw)
        return [Accepting(store.NewMail(
            transid=make_transid(self._secret, destination.account_id), destination=destination,
            message_id=message_id, raw=raw, peer=peer, now=now)) for destination in destinations]

    def accept(self, raw: bytes, destination: Destination, peer: str, now: datetime) -> str:
        """Store ``raw`` for ``destination``, then queue it; returns its transid.

        Returns only once the message is committed; raises TooLarge, EmptyMessage, or the
        database's error (then nothing was stored, and the sender should try again). Messages
        that threads hand in at the same moment are stored together (:meth:`commit`, through a
        group runner: shared/batching.py).
        """
        [entry] = self.prepare(raw, [destination], peer, now)
        self._group.submit(entry)
        if entry.error is not None:
            raise entry.error
        return entry.transid

    def commit(self, group: list[Accepting]) -> None:
        """Store the messages in one transaction, then queue them: a group commit, so that a
        message's share of a commit shrinks as the traffic grows (a group of more than
        MAX_GROUP_BYTES is cut into transactions of at most that, a larger message alone).
        Each entry ends with its transid (and its id), or the error that kept it out of the
        database: the database's, or its own (:func:`_parts`).

        The ids go in a ``mail.process`` task at once when none was queued within
        WAKE_INTERVAL, or else in the one that follows at its end, with those of the groups
        committed meanwhile. Either way the stored row is the promise: a process that dies
        before the task is queued leaves its messages to the next run of a worker, which takes
        along what is stored, or to the sweep."""
        for part in _parts(group):
            try:
                with _STORE() as connection:
                    _stored(part, store.save(connection, [entry.mail for entry in part]))
            except Exception as exc:
                _failed(part, exc)
        self._wake.add([entry.mail_id for entry in group if entry.mail_id is not None])

    async def commit_async(self, group: list[Accepting]) -> None:
        """:meth:`commit` from an event loop (the SMTP listener's): on PostgreSQL the loop
        waits for the database itself (shared/db/engine.LoopConnection), elsewhere the commit
        runs in the loop's thread pool."""
        if not _LOOP_STORE.serves():
            await asyncio.get_running_loop().run_in_executor(None, self.commit, group)
            return
        for part in _parts(group):
            try:
                async with _LOOP_STORE() as connection:
                    _stored(part, await store.save_async(connection,
                                                         [entry.mail for entry in part]))
            except Exception as exc:
                _failed(part, exc)
        lot = self._wake.gather([entry.mail_id for entry in group if entry.mail_id is not None])
        if lot is not None:
            # Queued before the group's 250s, as commit does (a listener killed after its 250
            # has queued the message), from the thread pool: a broker slow to answer holds
            # this group's sessions, never the loop.
            await asyncio.get_running_loop().run_in_executor(None, self._queue, lot)


def _parts(group: list[Accepting]) -> Iterator[list[Accepting]]:
    """The transactions that store ``group``, in turn: each run of at most MAX_GROUP_BYTES,
    whole; then, where a run failed on one of its messages (not the database's outage), each
    of its messages alone, so that one message refuses no other. The caller sets each
    entry's error (:func:`_failed`) or its id (:func:`_stored`) before it asks for the next;
    an outage meanwhile ends the run's messages that are left with its error."""
    for run in runs(group, lambda entry: len(entry.mail.raw), MAX_GROUP_BYTES):
        yield run
        failed = run[0].error
        if failed is None or len(run) == 1 or classify(failed) is Fault.OUTAGE:
            continue
        for entry in run:
            entry.error = None
        for number, entry in enumerate(run):
            yield [entry]
            if entry.error is not None and classify(entry.error) is Fault.OUTAGE:
                for rest in run[number + 1:]:  # the database went away meanwhile
                    rest.error = entry.error
                break


def _stored(part: list[Accepting], saved: list[tuple[int | None, str]]) -> None:
    for entry, (mail_id, transid) in zip(part, saved, strict=True):
        entry.mail_id, entry.transid = mail_id, transid


def _failed(part: list[Accepting], exc: Exception) -> None:
    for entry in part:
        entry.error = exc


def _destination_or_refusal(found: Destination | tuple[type[BadRecipient], str]) -> Destination:
    if isinstance(found, Destination):
        return found
    refusal, reason = found
    raise refusal(reason)


def _finish(session: Session, row: store.Taken, status: str,
            request_id: int | None = None) -> None:
    store.finish(session, row, status, request_id)
    observe.after_commit(session, metrics.mail_processed.labels(result=status).inc)


def _policy(session: Session, account_id: str) -> EmailPolicy:
    try:
        return queries.email_policy(session, account_id)
    except ValidationError as exc:
        raise MailRejected(f"the Email Policy of {account_id} is invalid: "
                           f"{exc.errors()[0]['msg']}") from exc


def _sender(session: Session, directory: Directory, account_id: str, *, address: str | None,
            name: str, create: bool) -> PersonRef:
    if address is None:
        raise MailRejected("the message has no single From address")
    person: PersonRef | None = Scope(session, directory, account_id).person(address)
    if person is None and create:
        person_id = store.create_person(session, account_id=account_id, email=address,
                                        name=name)
        directory.forget(account_id)
        person = Scope(session, directory, account_id).by_id("people", person_id)
    if person is None:
        raise MailRejected(f"no person of {account_id} (or its directory account) "
                           f"has the address {address}")
    return person


def _may_reply(parsed: ParsedMail, given: MailParameters) -> bool:
    return bool(parsed.thread_ids or given.fields.get("sourceID")
                or subject_request_ids(parsed.subject))


def _reply_target(session: Session, account_id: str, parsed: ParsedMail, *,
                  given: MailParameters, sender: PersonRef, now: datetime,
                  feedback_days: int) -> tuple[int, str] | None:
    """The request this mail is a reply to, and why; None when it is none's."""
    if not _may_reply(parsed, given):
        return None
    candidates: list[tuple[int, str]] = []
    threaded = queries.threaded_request(session, account_id, parsed.thread_ids)
    if threaded is not None:
        candidates.append((threaded, THREAD_REASON))
    source_id = given.fields.get("sourceID")
    if source_id:
        source = given.fields.get("source") or DEFAULT_SOURCE["mail"]
        candidates += [(found, SOURCE_REASON) for found in
                       queries.requests_by_source(session, account_id, source, source_id)]
    candidates += [(found, SUBJECT_REASON) for found in subject_request_ids(parsed.subject)]
    if not candidates:
        return None
    facts = {fact.id: fact for fact in queries.requests_of(
        session, account_id, [request_id for request_id, _ in candidates])}
    for request_id, reason in candidates:
        fact = facts.get(request_id)
        if fact is not None and within_feedback(fact.updated_at, now, feedback_days) \
                and may_access(sender.id, sender.roles, account_id, fact.people):
            return request_id, reason
    return None


def _add_reply(session: Session, row: store.Taken, *, parsed: ParsedMail, body: str,
               given: MailParameters, target: tuple[int, str], ignored: dict[str, str],
               attachment_dir: Path | None, now: datetime) -> None:
    request_id, reason = target
    text = note_text(parsed, body)
    if text:
        store.add_note(session, request_id=request_id, text=text, internal=given.internal,
                       markdown=given.markdown, time_spent=given.time_spent,
                       transid=row.transid, now=now)
        store.save_attachments(session, row, request_id, parsed.attachments, attachment_dir)
    outcome: dict[str, object] = {"action": "updated" if text else "unchanged",
                                  "request_id": request_id, "reason": reason}
    ignored = {**ignored, **given.ignored}
    if given.fields or given.custom_fields:
        ignored["parameters"] = NEVER_UPDATES
    if ignored:
        outcome["ignored"] = ignored
    store.record_completed(session, row, {}, outcome, now)
    _finish(session, row, "processed", request_id)
    observe.processed(session, "mail", row.received_at,
                      [(row.transid, "completed", outcome)])


@dataclass(frozen=True)
class _NewRequest:
    """A mail that becomes a new request (or a note through event matching)."""

    row: store.Taken
    parsed: ParsedMail
    body: str
    given: MailParameters
    sender: PersonRef
    ignored: dict[str, str]

    @cached_property
    def fields(self) -> dict[str, str | None]:
        return request_fields(self.parsed, self.body, self.given, self.row.team_id)

    def batch(self) -> EventBatch:
        return EventBatch(
            channel="mail", account_id=self.row.account_id, received_at=self.row.received_at,
            sender_id=self.sender.id, events=[QueuedEvent(
                transid=self.row.transid, parameters={**self.fields, **self.given.kept},
                mail=MailFacts(body=self.body, attachments=bool(self.parsed.attachments)))])

    def answered_by(self) -> list[tuple[str, ...]]:
        """What a later mail of the same run names when it may reply to this one's request
        (:func:`_reply_keys`): this message's Message-ID, or the request's source and sourceID.
        (A request id in a subject is one its sender has seen: a request that exists before
        the run.)"""
        threads = [] if self.row.message_id is None else [("thread", self.row.message_id)]
        return threads + _source_key(self.fields)


def _reply_keys(parsed: ParsedMail, given: MailParameters) -> list[tuple[str, ...]]:
    """What this mail names that a request of its own run may answer to
    (:meth:`_NewRequest.answered_by`): the messages it threads to, its source and sourceID."""
    return [("thread", message_id) for message_id in parsed.thread_ids] + _source_key(
        given.fields)


def _source_key(fields: Mapping[str, str | None]) -> list[tuple[str, ...]]:
    """The source and sourceID these fields name (the source ``Email`` when only the sourceID
    is given), as a key of :func:`_reply_keys`; none without a sourceID."""
    source_id = fields.get("sourceID")
    return [("source", fields.get("source") or DEFAULT_SOURCE["mail"], source_id)] \
        if source_id else []


def _new_requests(session: Session, items: list[_NewRequest], now: datetime,
                  directory: Directory, attachment_dir: Path | None) -> None:
    """Through the events' processing, all in one run (its set-based statements once for all:
    a mail's own share is its parsing and its rows)."""
    outcomes = process_held(session, [item.batch() for item in items], now, directory)
    done: list[tuple[store.Taken, int | None]] = []
    for item in items:
        row, given = item.row, item.given
        outcome = outcomes.get(row.transid)
        request_id = outcome.get("request_id") if outcome else None
        done.append((row, request_id))
        if not outcome or request_id is None:
            continue
        if item.ignored or given.ignored:
            store.set_outcome(session, row.transid,
                              {**outcome, "ignored": {**item.ignored, **given.ignored}})
        if outcome["action"] == "created" and given.custom_fields:
            store.set_custom_fields(session, request_id, given.custom_fields)
        if given.markdown or given.time_spent is not None:
            store.describe_notes(session, row.transid, markdown=given.markdown,
                                 time_spent=given.time_spent)
        if outcome["action"] != "unchanged":  # a note was added: the attachments are below it
            store.save_attachments(session, row, request_id, item.parsed.attachments,
                                   attachment_dir)
    store.finish_processed(session, done)
    observe.after_commit(
        session, lambda: metrics.mail_processed.labels(result="processed").inc(len(done)))


def _mail_batch(row: store.Taken) -> EventBatch:
    return EventBatch(channel="mail", account_id=row.account_id, received_at=row.received_at,
                      events=[QueuedEvent(transid=row.transid)])


def _reject(session: Session, row: store.Taken, parsed: ParsedMail, config: MailConfig,
            now: datetime) -> None:
    """The Email Policy allows no new requests: record it, and answer 'Email Rejected'."""
    reason = f"the Email Policy of {row.account_id} does not allow email to create requests"
    if config.relay and parsed.sender and not parsed.automatic:
        domain = row.recipient.rpartition("@")[2]
        reply = outbound.rejection(parsed, to=parsed.sender, account_id=row.account_id,
                                   sender=config.reply_from or f"mailer-daemon@{domain}")
        relay = config.relay
        observe.after_commit(session, lambda: outbound.send(relay, reply))
        reason += f"; an Email Rejected reply goes to {parsed.sender}"
    _finish(session, row, "rejected")
    record_failure(session, _mail_batch(row), MailRejected(reason), now)


def _act(session: Session, row: store.Taken, now: datetime, directory: Directory, *,
         config: MailConfig, policies: dict[str, EmailPolicy],
         settle: Callable[[ParsedMail, MailParameters, bool], bool]) -> _NewRequest | None:
    """End the mail as quarantined, rejected or a reply's note; or say the request to make.
    ``settle(parsed, given, replying)`` makes the requests said so far when this mail may reply
    to one of them, or (``replying``) to any request: one of them may fold into it by event
    matching, and be its note before this one. True when it made any."""
    try:
        parsed = parse(row.raw, config.limits)
        if row.account_id not in policies:
            policies[row.account_id] = _policy(session, row.account_id)
        policy = policies[row.account_id]
        parameters, body = split_parameters(parsed.text)
        parameters, from_parameter = split_from(parameters)
        address, override_ignored = acting_sender(parsed, policy, config.authserv_ids,
                                                  from_parameter)
        sender = _sender(session, directory, row.account_id, address=address,
                         name=parsed.sender_name if address == parsed.sender else "",
                         create=policy.auto_create_people)
    except (Quarantined, MailRejected, LookupError) as exc:
        _finish(session, row, "quarantined" if isinstance(exc, Quarantined) else "rejected")
        record_failure(session, _mail_batch(row), exc, now)
        return None
    ignored = {"X-4me-From" if parsed.override_from else "#from": override_ignored} \
        if override_ignored else {}
    given = apply_parameters(parameters, sender.roles, row.account_id,
                             lambda name: directory.account(session, name) is not None)
    target = None
    if policy.replies_as_notes and _may_reply(parsed, given):
        settle(parsed, given, False)
        target = _reply_target(session, row.account_id, parsed, given=given, sender=sender,
                               now=now, feedback_days=policy.feedback_days)
        if target is not None and settle(parsed, given, True):
            target = _reply_target(session, row.account_id, parsed, given=given, sender=sender,
                                   now=now, feedback_days=policy.feedback_days)
    if target is not None:
        _add_reply(session, row, parsed=parsed, body=body, given=given, target=target,
                   ignored=ignored, attachment_dir=config.attachment_dir, now=now)
    elif not policy.create_requests:
        _reject(session, row, parsed, config, now)
    else:
        return _NewRequest(row, parsed, body, given, sender, ignored)
    return None


def process_mail(session: Session, mail_ids: Sequence[int], now: datetime,
                 directory: Directory, config: MailConfig | None = None, *,
                 along: int = 0) -> None:
    """Act once on each stored message of ``mail_ids`` (module docstring), and on up to
    ``along`` other stored messages no worker holds, oldest first, in the same transaction
    (also when ``mail_ids`` were done already: the backlog is drained by every task that runs).

    Taking others along is what lets a worker keep up with a stream of mail: their new
    requests go through one run of the events' processing (made before any later mail that may
    reply to one of them, or to a request one of them may fold into by event matching, looks
    for it, so a run acts as one mail after another would). Each of
    them is still named by a ``mail.process`` task of its own, which finds it done; and if this
    transaction fails, each is processed again by that task (the caller runs ``mail_ids``
    again without them).
    """
    config = config or MailConfig()
    rows = store.take(session, mail_ids) + (
        store.take_along(session, mail_ids, along) if along else [])
    policies: dict[str, EmailPolicy] = {}
    new: list[_NewRequest] = []
    # What the pending ones may be answered by: a mail looks its keys up instead of asking
    # each pending one, or a run would cost the square of its length.
    answerable: set[tuple[str, ...]] = set()

    def settle() -> None:
        if new:
            _new_requests(session, new, now, directory, config.attachment_dir)
            new.clear()
            answerable.clear()

    def settle_for(parsed: ParsedMail, given: MailParameters, replying: bool) -> bool:
        if new and (replying or not answerable.isdisjoint(_reply_keys(parsed, given))):
            settle()
            return True
        return False

    for item in rows:
        found = _act(session, item, now, directory, config=config, policies=policies,
                     settle=settle_for)
        if found is not None:
            new.append(found)
            answerable.update(found.answered_by())
    settle()


def process_job(mail_ids: Sequence[int], directory: Directory, config: MailConfig,
                backoff: Backoff, *, along: int = 0, database_url: str | None = None) -> bool:
    """Process the messages a worker took together, and up to ``along`` others, in one run
    (:func:`process_mail`); True once each is done, False when the database is unreachable.

    Any other error is some message's: the job's own are run again without those taken along
    (the tasks that name them process them), then, if that fails too, in halves until each
    failing one is alone, and that one ends ``failed`` with the reason, once
    (shared/transactions/failures.py, as the events' runs). Should even that record fail, it
    stays stored, and the sweep queues it again later. On False ``backoff`` has paused, and the
    caller gives the messages back to the queue: an outage spends no retry budget, and what
    committed before it is found done when the messages come back.
    """
    now = datetime.now(UTC)

    def run(ids: Sequence[int], others: int = 0) -> list[int]:
        with session_scope(database_url) as session:
            process_mail(session, ids, now, directory, config, along=others)
        return []

    def record(mail_id: int, error: BaseException) -> list[int]:
        with session_scope(database_url) as session:
            fail_mail(session, mail_id, error, now)
        return []

    def run_all() -> list[int]:
        try:
            return run(mail_ids, along)
        except Exception as exc:
            if not along or classify(exc) is Fault.OUTAGE:
                raise
        # Without those taken along first: one of them may be what failed (its own task
        # finds it), and a job of one message would otherwise end it failed at once.
        return run(mail_ids)

    try:
        isolating(run_all, lambda: mail_ids, run, record, kind="mail",
                  name=lambda mail_id: {"mail_id": mail_id})
    except Exception as exc:  # only an outage gets out of isolating
        log.warning("database unreachable, mail back to the queue after a pause",
                    mails=len(mail_ids), error=fault_reason(exc))
        backoff.pause()
        return False
    backoff.reset()
    return True


def fail_mail(session: Session, mail_id: int, error: BaseException, now: datetime) -> None:
    """End the message ``failed`` by ``error`` (a bug or bad data processing it), once."""
    for row in store.take(session, [mail_id]):
        _finish(session, row, "failed")
        record_failure(session, _mail_batch(row), error, now)
