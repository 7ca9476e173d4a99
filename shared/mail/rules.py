"""The 4me Mail API's rules on one message, as pure functions (seed ``4me-mail-api.txt``).

- Addresses: ``<account>@<mail domain>`` and ``<team local part>.<account>@<mail domain>``.
- Parameters: ``#name: value`` lines at the top of the body, ended by a blank line, ``#end`` or
  any line that is not a parameter; shortcuts (``#rfc``, ``#high``, ``#completed``,
  ``#workaround``: any option of category, impact, status or completion_reason) and the flags
  ``#internal`` and ``#markdown``. Only a sender with the Specialist role of the account may
  set fields; ``requested_for(_id)`` needs the Service Desk Analyst role; a value with an
  ``@account`` suffix needs the Specialist role of that account. What is ignored, and why, is
  kept for the transaction. Parameters never update an existing request (the caller applies
  them to new requests only).
- Mail defaults (the rest are the shared defaults, shared/requests/defaults.py): source
  ``Email``, sourceID the Message-ID, created_by/requested_by/requested_for the sender, the team
  of the team address the mail was sent to.
- Replies: a 6+ digit request id in the subject; the feedback window (28 days by default).
- ``X-4me-From`` + ``X-4me-Auth`` act for another person only when the Email Policy allows it,
  the secret matches, and an ``Authentication-Results`` header of a trusted receiving MTA (its
  authserv-id configured) records ``dmarc=pass`` with ``header.from`` the From domain. That MTA
  must strip such headers arriving from outside (RFC 8601 section 5), or they could be forged.

- ``#from: address`` in the body is the parameter form of ``X-4me-From`` (the Email Policy's
  "Allow email parameter #from"), under the same conditions: the ``X-4me-Auth`` header carries
  the secret, and the DMARC pass is the From domain's. The header wins when both are given.

Where the seed is silent: ``declined`` as a shortcut is the status (it is also a completion
reason); a shortcut or parameter given twice, the last one counts; ``internal``, ``markdown``
and ``time_spent`` describe the note the mail adds (so they apply to a reply's note too, where
the fields never do); ``custom_field_<id>`` values are kept on a new request as its custom
fields (at most 255 characters each).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.mail.mime import ParsedMail, single_address
from shared.mail.schemas import EmailPolicy
from shared.requests.fields import CHOICES, TEXT_FIELDS, FieldErrors, check_fields, parse_int

NO_SUBJECT = "(no subject)"
SPECIALIST = "specialist"
SERVICE_DESK_ANALYST = "service_desk_analyst"
# The parameters the seed lists that set a request field.
FIELD_PARAMETERS = frozenset({
    "category", "ci", "ci_id", "ci_source", "ci_sourceID", "completion_reason",
    "desired_completion_at", "downtime_end_at", "downtime_start_at", "impact", "member",
    "member_id", "problem_id", "requested_for", "requested_for_id", "service_instance",
    "service_instance_id", "source", "sourceID", "status", "supplier", "supplier_id",
    "supplier_requestID", "support_domain", "team", "team_id", "template_id", "waiting_until",
    "workflow_id",
})
FLAGS = frozenset({"internal", "markdown"})
_ANALYST_ONLY = frozenset({"requested_for", "requested_for_id"})
_EMAIL_VALUED = frozenset({"requested_for", "member"})
_SHORTCUT_FIELDS = ("category", "impact", "status", "completion_reason")
SHORTCUTS: dict[str, str] = {}
for _name in _SHORTCUT_FIELDS:
    for _option in CHOICES[_name]:
        SHORTCUTS.setdefault(_option, _name)
_PARAMETER = re.compile(r"^#([A-Za-z_][A-Za-z0-9_]*)[ \t]*(?::[ \t]*(.*?))?[ \t]*$")
_REQUEST_ID = re.compile(r"(?<!\d)(\d{6,18})(?!\d)")
_LOCAL_PART = re.compile(r"^[a-z0-9][a-z0-9_+-]*$")
FROM_PARAMETER = "from"
CUSTOM_PREFIX = "custom_field_"
_CUSTOM = re.compile(rf"^{CUSTOM_PREFIX}\w+$")
MAX_CUSTOM_VALUE = 255
MAX_TIME_SPENT = 2**31 - 1  # minutes: the column's integer


class BadRecipient(ValueError):
    """The address is not one the Mail API could receive mail at."""


@dataclass(frozen=True)
class Recipient:
    account_id: str
    team_local_part: str | None
    domain: str


def parse_recipient(address: str) -> Recipient:
    """``example@mail...`` or ``team-name.example@mail...``; raises BadRecipient."""
    local, at, domain = address.strip().strip("<>").lower().rpartition("@")
    if not at or not local or not domain or "@" in local:
        raise BadRecipient(f"not an address: {address[:100]!r}")
    team, dot, account = local.rpartition(".")
    for part in (team, account) if dot else (local,):
        if not _LOCAL_PART.match(part):
            raise BadRecipient(f"not an account or team address: {address[:100]!r}")
    return Recipient(account if dot else local, team if dot else None, domain)


def split_parameters(text: str) -> tuple[list[tuple[str, str | None]], str]:
    """The ``#name: value`` lines at the top of the body, and the body below them."""
    lines = text.split("\n")
    start = 0
    while start < len(lines) and not lines[start].strip():
        start += 1
    parameters: list[tuple[str, str | None]] = []
    index = start
    while index < len(lines):
        line = lines[index].strip()
        if not line:
            index += 1
            break
        if line.lower() == "#end":
            index += 1
            break
        found = _PARAMETER.match(line)
        if found is None:
            break
        parameters.append((found.group(1), found.group(2)))
        index += 1
    if not parameters:
        return [], text.strip()
    return parameters, "\n".join(lines[index:]).strip()


@dataclass
class MailParameters:
    """What a message's parameters set, once the sender's roles were checked."""

    fields: dict[str, str | None] = field(default_factory=dict)
    kept: dict[str, str | None] = field(default_factory=dict)  # time_spent, custom fields
    internal: bool = False
    markdown: bool = False
    ignored: dict[str, str] = field(default_factory=dict)

    @property
    def time_spent(self) -> int | None:
        value = self.kept.get("time_spent")
        return int(value) if value else None

    @property
    def custom_fields(self) -> dict[str, str]:
        """By custom field id."""
        return {name.removeprefix(CUSTOM_PREFIX): value or "" for name, value in self.kept.items()
                if name.startswith(CUSTOM_PREFIX)}


def _account_suffix(name: str, value: str, is_account: Callable[[str], bool]) -> str | None:
    prefix, at, suffix = value.rpartition("@")
    if not at or (name in _EMAIL_VALUED and "@" not in prefix):
        return None
    return suffix if is_account(suffix) else None


def _roles(roles: Mapping[str, Any], account_id: str) -> set[str]:
    held = roles.get(account_id)
    return {str(role) for role in held} if isinstance(held, list) else set()


def _set_field(result: MailParameters, name: str, value: str, *, roles: Mapping[str, Any],
               account_id: str, is_account: Callable[[str], bool]) -> None:
    suffix = _account_suffix(name, value, is_account)
    if suffix is not None and suffix != account_id and SPECIALIST not in _roles(roles, suffix):
        result.ignored[name] = f"the sender does not have the Specialist role of {suffix}"
        return
    try:
        result.fields.update(check_fields({name: value}))
    except FieldErrors as exc:
        result.ignored[name] = exc.errors[0][1]


def _keep_time_spent(result: MailParameters, value: str) -> None:
    try:
        parse_int(value, 0, MAX_TIME_SPENT)
    except ValueError as exc:
        result.ignored["time_spent"] = f"{exc} (minutes)"
        return
    result.kept["time_spent"] = value


def split_from(parameters: list[tuple[str, str | None]]
               ) -> tuple[list[tuple[str, str | None]], str | None]:
    """The parameters without ``#from``, and the address the last ``#from`` gives."""
    address = None
    rest = []
    for name, value in parameters:
        if name.lower() == FROM_PARAMETER:
            address = single_address(value or "")
        else:
            rest.append((name, value))
    return rest, address


def apply_parameters(
    parameters: list[tuple[str, str | None]], roles: Mapping[str, Any], account_id: str,
    is_account: Callable[[str], bool],
) -> MailParameters:
    """The parameters a sender with ``roles`` may set in ``account_id``; the rest ignored."""
    result = MailParameters()
    if not parameters:
        return result
    if SPECIALIST not in _roles(roles, account_id):
        result.ignored["parameters"] = "the sender does not have the Specialist role"
        return result
    analyst = SERVICE_DESK_ANALYST in _roles(roles, account_id)
    for raw_name, raw_value in parameters:
        name = raw_name if raw_name in FIELD_PARAMETERS or _CUSTOM.match(raw_name) \
            else raw_name.lower()
        value = (raw_value or "").strip()
        if name in FLAGS:
            setattr(result, name, value.lower() not in ("false", "no", "0"))
        elif not value and name in SHORTCUTS:
            result.fields[SHORTCUTS[name]] = name
        elif name == "time_spent":
            _keep_time_spent(result, value)
        elif _CUSTOM.match(name):
            if len(value) > MAX_CUSTOM_VALUE:
                result.ignored[name] = f"is longer than {MAX_CUSTOM_VALUE}"
            else:
                result.kept[name] = value
        elif name not in FIELD_PARAMETERS:
            result.ignored[name] = "is not a Mail API parameter"
        elif name in _ANALYST_ONLY and not analyst:
            result.ignored[name] = "the sender does not have the Service Desk Analyst role"
        else:
            _set_field(result, name, value, roles=roles, account_id=account_id,
                       is_account=is_account)
    return result


def _fit(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes, on a character boundary."""
    return text.encode()[:limit].decode("utf-8", "ignore")


def note_text(parsed: ParsedMail, body: str) -> str:
    """The note of a message: its body and, below it, the attachments it carried."""
    lines = [body] if body else []
    if parsed.attachments:
        listed = ", ".join(f"{item.filename} ({item.content_type}, {item.size} bytes)"
                           for item in parsed.attachments)
        lines.append(f"Attachments: {listed}")
    if parsed.attachments_omitted:
        lines.append(f"{parsed.attachments_omitted} more attachments not added "
                     f"(at most 20 a message)")
    return _fit("\n\n".join(lines), TEXT_FIELDS["note"])


def request_fields(
    parsed: ParsedMail, body: str, given: MailParameters, team_id: int | None,
) -> dict[str, str | None]:
    """The 4me event fields of a new request from this message (its defaults: module doc)."""
    fields: dict[str, str | None] = {
        "subject": parsed.subject[:TEXT_FIELDS["subject"]] or NO_SUBJECT,
        "sourceID": (parsed.message_id or "")[:TEXT_FIELDS["sourceID"]] or None,
    }
    if team_id is not None:
        fields["team_id"] = str(team_id)
    if given.fields.get("team") or given.fields.get("team_id"):
        fields.pop("team_id", None)
    fields.update({name: value for name, value in given.fields.items() if value})
    note = note_text(parsed, body)
    if note:
        fields["internal_note" if given.internal else "note"] = note
    return fields


def acting_sender(parsed: ParsedMail, policy: EmailPolicy, trusted: frozenset[str],
                  from_parameter: str | None = None) -> tuple[str | None, str | None]:
    """The address the mail acts for, and why its X-4me-From (or ``#from``) was ignored (None:
    not given, or honoured)."""
    override = parsed.override_from or from_parameter
    if override is None:
        return parsed.sender, None
    if not policy.allow_from or not policy.from_secret:
        return parsed.sender, "the Email Policy does not allow #from"
    if parsed.override_auth is None or not hmac.compare_digest(
            parsed.override_auth.encode(), policy.from_secret.encode()):
        return parsed.sender, "X-4me-Auth does not match the Email Policy's secret"
    domain = (parsed.sender or "").rpartition("@")[2]
    if not any(authserv in trusted and found == domain
               for authserv, found in parsed.dmarc_passes):
        return parsed.sender, f"no DMARC pass for {domain or 'the sender'} from a trusted MTA"
    return override, None


def subject_request_ids(subject: str) -> list[int]:
    """The request ids a subject names: runs of 6 to 18 digits."""
    return [int(found) for found in _REQUEST_ID.findall(subject)]


def within_feedback(updated_at: datetime, now: datetime, days: int) -> bool:
    return now - updated_at <= timedelta(days=days)


def may_access(person_id: int, roles: Mapping[str, Any], account_id: str,
               people: tuple[int | None, ...]) -> bool:
    """A sender may add a note to a request they are a person of, or as a Specialist."""
    return person_id in people or SPECIALIST in _roles(roles, account_id)


class UnknownRecipient(BadRecipient):
    """No account or team has this address."""


class DirectoryRecipient(BadRecipient):
    """A directory account: it holds no requests, so it receives no mail."""
