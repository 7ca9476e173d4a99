"""The Webex front door's work, free of Flask: authenticate, parse, validate, rate-limit, queue.

No database round trip on the hot path: keys and event definitions come from TTL caches that
fall back to the database on a miss (DESIGN 2), and keep serving what they hold for a bounded
time while the database is unreachable (DESIGN 6).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.cache import TTLCache
from shared.codes import Code, IntakeError
from shared.db.lookup import LookupUnavailable, Outage, cached
from shared.ids import make_transid
from shared.intake.queries import DefinitionInfo
from shared.intake.webex import schemas as webex
from shared.messaging.publish import PublishError
from shared.messaging.queueing import EventQueue
from shared.notify.ssrf import IPNetwork
from shared.notify.urls import intake_refusal
from shared.records.keys import KeyInfo, Keys
from shared.requests.fields import FieldErrors, check_fields
from shared.transactions.schemas import EventBatch, QueuedEvent


@dataclass
class Answer:
    status: int
    entries: list[dict[str, Any]]
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def failure(cls, error: IntakeError, headers: dict[str, str] | None = None) -> Answer:
        return cls(error.code.http_status, [webex.entry(error.code, detail=error.detail)],
                   headers or {})


class WebexIntake:
    def __init__(
        self,
        *,
        queue: EventQueue,
        keys: Keys,
        find_definition: Callable[[tuple[str, str]], DefinitionInfo | None],
        secret: bytes,
        max_events: int,
        cache_ttl: float,
        stale_cache: float = 0.0,
        outage: Outage | None = None,
        notify_allow: tuple[IPNetwork, ...] = (),
    ) -> None:
        """``outage``: the pause shared with the key cache (shared/db/lookup.py)."""
        self._events = queue
        self._keys = keys
        self._definitions: TTLCache[tuple[str, str], DefinitionInfo | None] = cached(
            find_definition, ttl=cache_ttl, stale=stale_cache, outage=outage)
        self._secret = secret
        self._max_events = max_events
        # Few distinct URLs (a body's, the defaults): each is judged once, not once an event.
        self._notify_refusal = functools.lru_cache(maxsize=1024)(
            functools.partial(intake_refusal, allow=notify_allow))

    def authenticate(self, key: str | None) -> KeyInfo:
        info = self._keys.authenticate(key)
        if info is None:
            raise IntakeError(Code.AUTH_FAILED)
        return info

    def handle(self, key: str | None, content_type: str, body: bytes) -> Answer:
        try:
            caller = self.authenticate(key)
            data = webex.load_xml(body) if content_type in ("application/xml", "text/xml") \
                else webex.load_json(body)
            parsed = webex.validate(data, self._max_events)
            if parsed.notifyurl is not None:
                refusal = self._notify_refusal(parsed.notifyurl)
                if refusal is not None:
                    raise IntakeError(Code.INVALID_VALUES, refusal)
            entries, queued = self._check_events(caller, parsed)
        except IntakeError as error:
            return Answer.failure(error)
        except LookupUnavailable:
            return Answer.failure(IntakeError(Code.INTERNAL_ERROR))
        if not queued:
            first = Code(entries[0]["code"])
            return Answer(first.http_status, entries)
        return self._publish(caller, parsed, entries, queued)

    def _check_events(
        self, caller: KeyInfo, parsed: webex.ParsedRequest
    ) -> tuple[list[dict[str, Any]], list[tuple[int, QueuedEvent]]]:
        entries: list[dict[str, Any]] = []
        queued: list[tuple[int, QueuedEvent]] = []
        for event in parsed.events:
            if isinstance(event, dict):
                entries.append(event)
                continue
            parameters = event.text_parameters()
            try:
                notifyurl = self._check_event(caller, event, parameters, parsed.notifyurl)
            except IntakeError as error:
                entries.append(webex.entry(error.code, correlationid=event.correlationid,
                                           detail=error.detail))
                continue
            transid = make_transid(self._secret, caller.account_id)
            # model_construct: every value was checked above; validating again costs per event.
            queued.append((len(entries), QueuedEvent.model_construct(
                transid=transid, evtid=event.evtid, correlationid=event.correlationid,
                parameters=parameters, notifyurl=notifyurl,
            )))
            entries.append(webex.entry(
                Code.QUEUED, transid=transid, correlationid=event.correlationid
            ))
        return entries, queued

    def _check_event(
        self, caller: KeyInfo, event: webex.WebexEvent, parameters: dict[str, str | None],
        body_notifyurl: str | None,
    ) -> str | None:
        """Raises IntakeError for an event the worker could not act on; returns its own notify
        URL: the definition's, else the key's, when the body names none (it wins over both)."""
        definition = self._definitions.get((caller.account_id, event.evtid))
        if definition is None:
            raise IntakeError(Code.INVALID_VALUES, f"unknown evtid {event.evtid!r}")
        missing = webex.missing_mandatory(
            definition.mandatory, definition.shaping.defaults, parameters)
        if missing:
            raise IntakeError(Code.MANDATORY_CUSTOM_MISSING, f"missing: {', '.join(missing)}")
        try:
            check_fields(definition.shaping.fields(parameters))
        except FieldErrors as exc:
            raise IntakeError(Code.INVALID_VALUES, str(exc)) from exc
        if body_notifyurl is not None:
            return None
        notifyurl = definition.notifyurl or caller.notifyurl
        # A default is the operator's, but the caller is still told now rather than never.
        refusal = self._notify_refusal(notifyurl) if notifyurl is not None else None
        if refusal is not None:
            raise IntakeError(Code.INVALID_VALUES, f"default {refusal}")
        return notifyurl

    def _publish(
        self, caller: KeyInfo, parsed: webex.ParsedRequest, entries: list[dict[str, Any]],
        queued: list[tuple[int, QueuedEvent]],
    ) -> Answer:
        batch = EventBatch.model_construct(
            channel="webex", account_id=caller.account_id, key_id=caller.key_id,
            received_at=datetime.now(UTC), expiry=parsed.expiry, notifyurl=parsed.notifyurl,
            events=[event for _, event in queued],
        )
        try:
            limited = self._events.publish(batch)
        except PublishError:
            return Answer.failure(IntakeError(Code.INTERNAL_ERROR))
        if limited is not None:
            return Answer.failure(IntakeError(Code.RATE_LIMITED),
                                  {"Retry-After": limited.header})
        return Answer(200, entries)
