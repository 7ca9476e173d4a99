"""What an event definition makes of a Webex event's parameters: the 4me fields of its request.

One pure rule, used by the api's intake (to answer 7004 for what the worker could not store) and
by the worker (to act), so that both see the same fields.

**Parameters.** A parameter that is empty or only whitespace counts as not given. Parameters
named like a 4me event field (``subject``, ``ci``, ...) set that field; the definition's
``mapping`` renames a parameter onto a field (``{"host": "ci"}``), and a mapped parameter is used
only under its new name. A parameter that is neither stays a custom parameter: it is kept on the
transaction (``GET /v1/transactions/<transid>``) and can be used by the templates.

**Templates.** ``subject_template`` and ``note_template`` name parameters in braces:
``"{host} is down"``. They are filled from the event's parameters as sent (names before
mapping), with the definition's ``defaults`` for those the event leaves empty. A parameter that
is still missing is empty text, so give it a default (or make it mandatory) to get other text;
a template that renders blank sets nothing. ``{{`` and ``}}`` are literal braces; a value is
inserted as it is and never read as a template itself. A name is the text between the braces,
stripped, and nothing else: no attribute, index or format spec (so a template cannot reach
anything but the parameters). An unmatched brace or an empty ``{}`` is an error, refused when
the records are imported. The rendered text is checked like any given field (a subject over 255
characters: 7004).

**Precedence** (item 7 of issue 10: before, the result depended on the parameters' order),
strongest first:

1. the field given by the event under its own name (``"ci": "CMP00023"``);
2. a parameter the event gives that the mapping renames onto the field (``"host"``); of several
   such parameters, the one whose name sorts first;
3. the definition's template for the field;
4. the definition's default for the field, by its own name, then through the mapping as in 2.

So whatever the event gives wins over what the definition derives, and the more specific name
wins over a rename.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.db.models import EventDefinition
from shared.requests.fields import FIELDS, FieldErrors, check_fields, check_text

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text and the parameter to insert after it, in turn."""

    pieces: tuple[tuple[str, str | None], ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        """Raises ValueError naming the position of an unmatched or empty brace."""
        pieces: list[tuple[str, str | None]] = []
        literal: list[str] = []
        end = 0
        for token in _TOKEN.finditer(text):
            literal.append(text[end:token.start()])
            end = token.end()
            found = token.group()
            if found in ("{{", "}}"):
                literal.append(found[0])
            elif token.group(1) is None:
                raise ValueError(f"template: unmatched {found!r} at position {token.start()}")
            elif not token.group(1).strip():
                raise ValueError(f"template: empty placeholder at position {token.start()}")
            else:
                pieces.append(("".join(literal), token.group(1).strip()))
                literal = []
        pieces.append(("".join(literal) + text[end:], None))
        return cls(tuple(pieces))

    def render(self, parameters: Mapping[str, str]) -> str:
        return "".join(
            literal + (parameters.get(name, "") if name is not None else "")
            for literal, name in self.pieces
        )


def _given(values: Mapping[str, Any]) -> dict[str, str]:
    """The values that count as given, as text (a definition's defaults may be numbers)."""
    texts = {name: value if isinstance(value, str) else str(value)
             for name, value in values.items() if value is not None}
    return {name: text for name, text in texts.items() if text.strip()}


@dataclass(frozen=True)
class Shaping:
    """An event definition's defaults, mapping and templates, ready to apply (built once per
    cached definition, so applying it costs a few dictionary operations per event)."""

    defaults: Mapping[str, str]
    # parameter -> field, only for targets that are fields (others could never set anything).
    mapping: Mapping[str, str]
    templates: Mapping[str, Template]

    @classmethod
    def of(
        cls, *, defaults: Mapping[str, Any], mapping: Mapping[str, Any],
        subject_template: str | None, note_template: str | None,
    ) -> Shaping:
        """Raises ValueError for a template that does not parse."""
        templates = {field: Template.parse(text) for field, text in
                     (("subject", subject_template), ("note", note_template)) if text}
        return cls(
            defaults=_given(defaults),
            mapping={name: target for name, target in mapping.items()
                     if isinstance(target, str) and target in FIELDS},
            templates=templates,
        )

    def _onto_fields(self, values: Mapping[str, str]) -> dict[str, str]:
        """Precedence steps 1 and 2 (or 4) for one source of values."""
        fields = {name: value for name, value in values.items()
                  if name in FIELDS and name not in self.mapping}
        if self.mapping:
            for name in sorted(values):
                target = self.mapping.get(name)
                if target is not None:
                    fields.setdefault(target, values[name])
        return fields

    def fields(self, parameters: Mapping[str, str | None]) -> dict[str, str | None]:
        """The 4me event fields the definition makes of ``parameters`` (only those given)."""
        given = _given(parameters)
        fields: dict[str, str | None] = dict(self._onto_fields(self.defaults))
        if self.templates:
            values = {**self.defaults, **given}
            for field, template in self.templates.items():
                text = template.render(values)
                if text.strip():
                    fields[field] = text
        fields.update(self._onto_fields(given))
        return fields


def shaping_of(definition: EventDefinition) -> Shaping:
    """The stored definition's rules; ValueError if its templates do not parse (the import
    refuses such a template, so only a row written around it can fail here)."""
    return Shaping.of(
        defaults=definition.defaults, mapping=definition.mapping,
        subject_template=definition.subject_template, note_template=definition.note_template,
    )


def check_definition(defaults: dict[str, Any], mapping: dict[str, Any]) -> list[tuple[str, str]]:
    """What in an event definition would fail every event that uses it, by the rules the
    intake and the worker apply (:meth:`Shaping.fields`, :func:`check_fields`): a mapping onto a
    name that is no 4me field (the parameter would be dropped), a default that is not a text,
    number or boolean, or one that check_text or the field's own check refuses. Each fault as
    (``defaults.<name>`` or ``mapping.<name>``, problem).
    """
    errors: list[tuple[str, str]] = []
    usable: dict[str, Any] = {}
    for name, target in mapping.items():
        if isinstance(target, str) and target in FIELDS:
            usable[name] = target
        else:
            errors.append((f"mapping.{name}", f"{target!r} is not a 4me event field"))
    texts: dict[str, Any] = {}
    for name, value in defaults.items():
        if value is not None and not isinstance(value, str | int | float | bool):
            errors.append((f"defaults.{name}", "must be text, a number, a boolean or null"))
            continue
        try:
            texts[name] = check_text(value) if isinstance(value, str) else value
        except ValueError as exc:
            errors.append((f"defaults.{name}", str(exc)))
    by_field = {usable.get(name, name): name for name in texts}
    try:
        check_fields(Shaping.of(defaults=texts, mapping=usable, subject_template=None,
                                note_template=None).fields({}))
    except FieldErrors as exc:
        errors.extend((f"defaults.{by_field[field]}", problem) for field, problem in exc.errors)
    return errors
