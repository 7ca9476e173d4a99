"""The Webex front door's work, free of Flask: authenticate, parse, validate, rate-limit, queue.

No database round trip on the hot path: keys and event definitions come from TTL caches that
fall back to the database on a miss (DESIGN 2), and keep serving what they hold for a bounded
time while the database is unreachable (DESIGN 6).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from shared.cache import TTLCache
from shared.ids import make_transid
from shared.intake import webex
from shared.intake.codes import Code, IntakeError
from shared.intake.queueing import EventQueue
from shared.publish import Limited, PublishError
from shared.records.keys import hash_key
from shared.requests.fields import FieldErrors, check_fields, event_fields
from shared.transactions.schemas import EventBatch, QueuedEvent


@dataclass(frozen=True)
class KeyInfo:
    key_id: int
    account_id: str
    person_id: int | None


@dataclass(frozen=True)
class DefinitionInfo:
    mandatory: list[str]
    defaults: dict[str, Any]
    mapping: dict[str, Any]


@dataclass
class Answer:
    status: int
    entries: list[dict[str, Any]]
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def failure(cls, error: IntakeError, headers: dict[str, str] | None = None) -> Answer:
        return cls(error.code.http_status, [webex.entry(error.code, detail=error.detail)],
                   headers or {})


class LookupUnavailable(Exception):
    """The database behind a cache miss could not answer."""


class DatabaseUnreachable(LookupUnavailable):
    """The database could not be reached at all (refused, reset, timed out): the caches may
    answer from their stale copy. Any other failure is not an outage, and is not hidden."""


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Outage:
    """Shared by the key and the definition cache: once the database was found unreachable,
    their loaders fail at once for ``pause`` seconds. Without it a request whose key and
    definition both expired would wait for two timeouts, one after the other, and every new
    key for one each."""

    def __init__(self, pause: float) -> None:
        self._pause = pause
        self._until = 0.0

    def guard(self, load: Callable[[K], V]) -> Callable[[K], V]:
        def guarded(key: K) -> V:
            if time.monotonic() < self._until:
                raise DatabaseUnreachable("the database was unreachable moments ago")
            try:
                return load(key)
            except DatabaseUnreachable:
                self._until = time.monotonic() + self._pause
                raise

        return guarded


def retry_after(limited: Limited) -> str:
    """The ``Retry-After`` header for a refusal of the rate limit: whole seconds, at least 1."""
    return str(max(1, int(limited.retry_after + 0.999)))


class WebexIntake:
    def __init__(
        self,
        *,
        queue: EventQueue,
        find_key: Callable[[str], KeyInfo | None],
        find_definition: Callable[[tuple[str, str]], DefinitionInfo | None],
        secret: bytes,
        max_events: int,
        cache_ttl: float,
        stale_cache: float = 0.0,
    ) -> None:
        self._events = queue
        outage, down = _Outage(cache_ttl), (DatabaseUnreachable,)
        self._keys: TTLCache[str, KeyInfo | None] = TTLCache(
            outage.guard(find_key), cache_ttl, stale=stale_cache, stale_on=down
        )
        self._definitions: TTLCache[tuple[str, str], DefinitionInfo | None] = TTLCache(
            outage.guard(find_definition), cache_ttl, stale=stale_cache, stale_on=down
        )
        self._secret = secret
        self._max_events = max_events

    def authenticate(self, key: str | None) -> KeyInfo:
        if not key:
            raise IntakeError(Code.AUTH_FAILED)
        info = self._keys.get(hash_key(key))
        if info is None:
            raise IntakeError(Code.AUTH_FAILED)
        return info

    def handle(self, key: str | None, content_type: str, body: bytes) -> Answer:
        try:
            caller = self.authenticate(key)
            data = webex.load_xml(body) if content_type in ("application/xml", "text/xml") \
                else webex.load_json(body)
            parsed = webex.validate(data, self._max_events)
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
            answer = self._check_event(caller, event, parameters)
            if answer is not None:
                entries.append(answer)
                continue
            transid = make_transid(self._secret, caller.account_id)
            # model_construct: every value was checked above; validating again costs per event.
            queued.append((len(entries), QueuedEvent.model_construct(
                transid=transid, evtid=event.evtid, correlationid=event.correlationid,
                parameters=parameters,
            )))
            entries.append(webex.entry(
                Code.QUEUED, transid=transid, correlationid=event.correlationid
            ))
        return entries, queued

    def _check_event(
        self, caller: KeyInfo, event: webex.WebexEvent, parameters: dict[str, str | None]
    ) -> dict[str, Any] | None:
        definition = self._definitions.get((caller.account_id, event.evtid))
        if definition is None:
            return webex.entry(Code.INVALID_VALUES, correlationid=event.correlationid,
                               detail=f"unknown evtid {event.evtid!r}")
        missing = webex.missing_mandatory(definition.mandatory, definition.defaults, parameters)
        if missing:
            return webex.entry(Code.MANDATORY_CUSTOM_MISSING, correlationid=event.correlationid,
                               detail=f"missing: {', '.join(missing)}")
        try:
            check_fields(event_fields(parameters, definition.defaults, definition.mapping))
        except FieldErrors as exc:
            return webex.entry(Code.INVALID_VALUES, correlationid=event.correlationid,
                               detail=str(exc))
        return None

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
                                  {"Retry-After": retry_after(limited)})
        return Answer(200, entries)
