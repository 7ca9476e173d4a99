"""SQLAlchemy models. Tables are created by the Alembic migrations (``eventdesk migrate``).

Reference records (accounts, people, teams, ...) carry explicit ids, as 4me's do, so an import
file can be applied again and again (upsert by id, or by source/sourceID where given).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self, value: datetime | None, dialect: Any  # noqa: ARG002
    ) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(
        self, value: datetime | None, dialect: Any  # noqa: ARG002
    ) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# In a JSON column's ``info``: its values may hold any text, a NUL too, which PostgreSQL's
# set-based writes must then pass differently (shared/db/dialect.py).
ANY_TEXT = "any_text"
# BIGINT on PostgreSQL, but INTEGER on SQLite so that it stays the rowid and autoincrements.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads it as a class var
        datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON(),
    }


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    directory_account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"))
    mail_domain: Mapped[str | None] = mapped_column(String(255))
    # Standard Webhooks secrets ("whsec_..."), newest first; several during a rotation.
    signing_secrets: Mapped[list[Any]] = mapped_column(default=list)
    # Also send ``x-hub-signature: sha256=<hex HMAC of the body>`` (Webex style) to notify URLs.
    notify_hub_signature: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    # The Email Policy of the Mail API (shared/mail/schemas.py EmailPolicy); {}: its defaults.
    mail_policy: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")


class ApiKey(Base):
    """A service key (Webex ``key`` header) or bearer token (4me ``Authorization``)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    # SHA-256 of the key: keys are long random strings, so a fast hash is enough, and it lets the
    # api find a key by its hash without trying each one.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The person the key acts as (4me personal access token); None for a service key.
    person_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    # The key's default notify URL (the Webex seed's "service's Notify URL"): used for the
    # Webex events sent with it when neither the body nor the event definition names one.
    notifyurl: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class EventDefinition(Base):
    """What a Webex ``evtid`` does in an account: its mandatory parameters, defaults, mapping,
    templates and default notify URL."""

    __tablename__ = "event_definitions"
    __table_args__ = (UniqueConstraint("account_id", "evtid"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    evtid: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32), default="request")
    mandatory: Mapped[list[Any]] = mapped_column(default=list)
    defaults: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Maps event parameter names onto 4me event fields ({"host": "ci"}); unmapped names that are
    # 4me fields are used as they are.
    mapping: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Templates over the parameters ("{host} is down"); the rules: shared/requests/shaping.py.
    subject_template: Mapped[str | None] = mapped_column(Text)
    note_template: Mapped[str | None] = mapped_column(Text)
    # Default notify URL of its events: the body's notifyurl wins, this wins over the key's.
    notifyurl: Mapped[str | None] = mapped_column(Text)


class Team(Base):
    __tablename__ = "teams"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    name: Mapped[str] = mapped_column(String(255))
    mail_local_part: Mapped[str | None] = mapped_column(String(64))


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(255))


class Person(Base):
    __tablename__ = "people"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    primary_email: Mapped[str] = mapped_column(String(255), index=True)
    other_emails: Mapped[list[Any]] = mapped_column(default=list)
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id"))
    # {"<account id>": ["specialist", "service_desk_analyst"]}
    roles: Mapped[dict[str, Any]] = mapped_column(default=dict)
    team_ids: Mapped[list[Any]] = mapped_column(default=list)


class ServiceInstance(Base):
    __tablename__ = "service_instances"
    __table_args__ = (Index("ix_service_instances_account_name", "account_id", "name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    name: Mapped[str] = mapped_column(String(255))
    first_line_team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    support_team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))


class ConfigurationItem(Base):
    __tablename__ = "configuration_items"
    __table_args__ = (
        Index("ix_cis_account_label", "account_id", "label"),
        Index("ix_cis_source", "account_id", "source", "source_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    label: Mapped[str | None] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    software: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str | None] = mapped_column(String(30))
    source_id: Mapped[str | None] = mapped_column(String(128))
    # Linked service instances in order; the first is the default for a request on this CI.
    service_instance_ids: Mapped[list[Any]] = mapped_column(default=list)


class RequestTemplate(Base):
    __tablename__ = "request_templates"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    subject: Mapped[str] = mapped_column(String(255))
    # Request field values the template sets (category, impact, team_id, note, ...).
    fields: Mapped[dict[str, Any]] = mapped_column(default=dict)
    workflow_manager_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    workflow_template: Mapped[bool] = mapped_column(Boolean, default=False)


class SupportAgreement(Base):
    __tablename__ = "support_agreements"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    customer_account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"))
    customer_organization_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id"))
    service_desk_team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))


class Problem(Base):
    __tablename__ = "problems"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    subject: Mapped[str] = mapped_column(String(255))


class Workflow(Base):
    __tablename__ = "workflows"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    subject: Mapped[str] = mapped_column(String(255))


class Transaction(Base):
    """One accepted event. Written by the worker; until then the api answers ``queued``."""

    __tablename__ = "transactions"
    __table_args__ = (Index("ix_transactions_account_received", "account_id", "received_at"),)

    transid: Mapped[str] = mapped_column(String(64), primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"))
    evtid: Mapped[str | None] = mapped_column(String(128))
    correlationid: Mapped[str | None] = mapped_column(String(64))
    # The event's own values: any text, a NUL too (shared/db/dialect.py, ANY_TEXT).
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict, info={ANY_TEXT: True})
    notifyurl: Mapped[str | None] = mapped_column(Text)
    expiry: Mapped[datetime | None]
    received_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16))
    # {"action": "created|updated|unchanged", "request_id": ..., "reason": ...}
    # None is NULL, not a JSON null, on every backend.
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]


class Request(Base):
    """A service-desk request, shaped after 4me's. References are resolved record ids."""

    __tablename__ = "requests"
    __table_args__ = (
        Index("ix_requests_account_source", "account_id", "source", "source_id"),
        Index("ix_requests_account_created", "account_id", "created_at"),
        Index("ix_requests_match", "account_id", "match_key", "created_at"),
        Index("ix_requests_updated", "account_id", "updated_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    subject: Mapped[str | None] = mapped_column(String(255))
    category: Mapped[str | None] = mapped_column(String(32))
    impact: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(32))
    completion_reason: Mapped[str | None] = mapped_column(String(32))
    source: Mapped[str | None] = mapped_column(String(30))
    source_id: Mapped[str | None] = mapped_column(String(128))
    supplier_request_id: Mapped[str | None] = mapped_column(String(128))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    member_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    requested_for_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    service_instance_id: Mapped[int | None] = mapped_column(ForeignKey("service_instances.id"))
    ci_id: Mapped[int | None] = mapped_column(ForeignKey("configuration_items.id"))
    template_id: Mapped[int | None] = mapped_column(ForeignKey("request_templates.id"))
    supplier_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id"))
    problem_id: Mapped[int | None] = mapped_column(ForeignKey("problems.id"))
    workflow_id: Mapped[int | None] = mapped_column(ForeignKey("workflows.id"))
    desired_completion_at: Mapped[datetime | None]
    downtime_start_at: Mapped[datetime | None]
    downtime_end_at: Mapped[datetime | None]
    waiting_until: Mapped[datetime | None]
    # Values kept verbatim: references that did not resolve, supplier_requestID, custom fields.
    references: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Event matching (shared/requests/matching.py): the hash of the key an event is matched on.
    match_key: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Note(Base):
    __tablename__ = "notes"
    __table_args__ = (Index("ix_notes_request_hash", "request_id", "text_hash"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id"))
    text: Mapped[str] = mapped_column(Text)
    # SHA-256 of the text: "is this note new on the request?" without comparing long texts.
    text_hash: Mapped[str] = mapped_column(String(64))
    internal: Mapped[bool] = mapped_column(Boolean, default=False)
    # The text uses Text Formatting (the Mail API's #markdown); else it is plain text.
    markdown: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    time_spent: Mapped[int | None] = mapped_column(Integer)  # minutes (#time_spent)
    transid: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class NotificationDelivery(Base):
    """The outcome of one transaction, owed to its notify URL (states: shared/notify/rules.py)."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        Index("ix_notification_deliveries_due", "status", "next_attempt_at"),
        Index("ix_notification_deliveries_account", "account_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # One delivery per transaction: a redelivered event cannot owe a second notification.
    transid: Mapped[str] = mapped_column(ForeignKey("transactions.transid"), unique=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    url: Mapped[str] = mapped_column(Text)
    # The webhook-id: stable across every attempt of this delivery.
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The URL's host (lower case), for the per-host concurrency limit.
    host: Mapped[str | None] = mapped_column(String(255))
    # While ``sending``: the worker holding the delivery and until when; past it, anyone may retake.
    lease_until: Mapped[datetime | None]
    lease_token: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(String(255))
    completed_at: Mapped[datetime | None]
    # ``attempts`` when the current schedule began (0, or its count at the last redelivery).
    schedule_offset: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class NotificationAttempt(Base):
    __tablename__ = "notification_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("notification_deliveries.id"), index=True)
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    # The error class (ConnectError, ReadTimeout, ForbiddenAddress, ...), None for a response.
    error: Mapped[str | None] = mapped_column(String(255))
    response: Mapped[str | None] = mapped_column(String(1024))
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    # 1 for the first try of a delivery (counting on across redeliveries).
    number: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # What the rules made of it: delivered, retry, failed, disable.
    verdict: Mapped[str | None] = mapped_column(String(16))
    # The IP address connected to, when a connection was made.
    address: Mapped[str | None] = mapped_column(String(64))


class NotifyDisabledUrl(Base):
    """A notify URL that answered 410 Gone: later deliveries to it go straight to ``disabled``."""

    __tablename__ = "notify_disabled_urls"
    __table_args__ = (UniqueConstraint("account_id", "url_hash"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    # SHA-256 of the URL: a unique key on a short column rather than on unbounded text.
    url_hash: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int | None] = mapped_column(Integer)
    delivery_id: Mapped[int | None] = mapped_column(BigId)
    disabled_at: Mapped[datetime] = mapped_column(default=utcnow)


class NotifyHostSlot(Base):
    """One of the N concurrent-delivery slots of a receiving host (shared/notify/slots.py)."""

    __tablename__ = "notify_host_slots"

    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    holder: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None]


class RetentionMark(Base):
    """How far retention has removed a log: ``removed_before`` is the latest horizon applied.

    It lets the api tell a transid retention removed ("expired from the log") from one still
    queued, without keeping anything of the removed rows (shared/retention/).
    """

    __tablename__ = "retention_marks"

    log: Mapped[str] = mapped_column(String(32), primary_key=True)
    removed_before: Mapped[datetime]
    updated_at: Mapped[datetime]


class MailMessage(Base):
    """A message the Mail API accepted, kept raw: it is durable here before the sender's 250
    (or the gateway's 202), and a worker turns it into a request or a note (shared/mail/)."""

    __tablename__ = "mail_messages"
    __table_args__ = (
        # A message delivered again (the sender never saw our 250) is the same mail.
        UniqueConstraint("account_id", "message_id", name="uq_mail_messages_message_id"),
        Index("ix_mail_messages_pending", "status", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    transid: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    recipient: Mapped[str] = mapped_column(String(320))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    message_id: Mapped[str | None] = mapped_column(String(255))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    peer: Mapped[str | None] = mapped_column(String(64))  # "smtp 192.0.2.1" or "http key 7"
    received_at: Mapped[datetime]
    # received -> processed | quarantined | rejected
    status: Mapped[str] = mapped_column(String(16), default="received")
    # The request this mail created or added a note to: replies to it thread onto that request.
    request_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"))


class MailAttachment(Base):
    """An attachment or inline image a worker kept of a mail (at most 20 a mail), apart from
    the raw message: its content here, or in a file named by its SHA-256 under
    ``EVENTDESK_MAIL_ATTACHMENT_DIR`` (``content`` null)."""

    __tablename__ = "mail_attachments"
    __table_args__ = (
        UniqueConstraint("mail_id", "position", name="uq_mail_attachments_position"),
        Index("ix_mail_attachments_request", "account_id", "request_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    mail_id: Mapped[int] = mapped_column(ForeignKey("mail_messages.id"))
    position: Mapped[int] = mapped_column(Integer)  # its index among the mail's kept ones
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    request_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"))
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    inline: Mapped[bool] = mapped_column(Boolean)
    sha256: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes | None] = mapped_column(LargeBinary)
