"""Parse the bodies of public form posts (form-encoded, multipart or JSON).

Only the shape is checked here: which fields exist and that each has the right
type. Whether an address or topic is acceptable is the domain's decision.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flask import request
from werkzeug.exceptions import UnsupportedMediaType

from service.web.input_guard import cannot_store

MAX_FIELD_LENGTH = 2048
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class MalformedForm(Exception):
    """The body is not a form or JSON object we can read; ``errors`` names fields."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass
class SubmittedForm:
    """Field values as the reader typed them, to redisplay after an error."""

    values: dict[str, str] = field(default_factory=dict)
    lists: dict[str, list[str]] = field(default_factory=dict)

    def get(self, name: str) -> str:
        return self.values.get(name, "")

    def getlist(self, name: str) -> list[str]:
        return self.lists.get(name, [])


def read_form(scalar_fields: Iterable[str], list_fields: Iterable[str]) -> SubmittedForm:
    """Read the request body into a SubmittedForm; unknown fields are an error."""
    scalars, lists = set(scalar_fields), set(list_fields)
    submitted = SubmittedForm()
    errors: dict[str, str] = {}
    for name, values in _raw_fields().items():
        if name is None:  # a multipart part without a name; an empty name is an unknown field, below
            errors["body"] = "Every field needs a name."
            continue
        if name not in scalars | lists:
            errors[name[:100]] = "Unknown field."
            continue
        if any(len(v) > MAX_FIELD_LENGTH for v in values):
            errors[name] = "This value is too long."
            continue
        if any(cannot_store(v) for v in values):
            # NUL (PostgreSQL text cannot hold it) or, from JSON, a lone surrogate; no person types either.
            errors[name] = "This value contains characters we cannot accept."
            continue
        if name in lists:
            submitted.lists[name] = values
        elif len(values) > 1:
            errors[name] = "Give this field once."
        else:
            submitted.values[name] = values[0] if values else ""
    if errors:
        raise MalformedForm(errors) from None
    return submitted


def _raw_fields() -> dict[str, list[str]]:
    if request.is_json:
        return _json_fields(request.get_json(silent=True))
    if request.mimetype in FORM_TYPES:
        return {name: request.form.getlist(name) for name in request.form}
    if not request.get_data(cache=True):
        return {}
    raise UnsupportedMediaType()


def _json_fields(body: Any) -> dict[str, list[str]]:
    if not isinstance(body, dict):
        raise MalformedForm({"body": "Send a JSON object with the fields as keys."})
    fields: dict[str, list[str]] = {}
    for name, value in body.items():
        if value is None:
            continue
        if isinstance(value, str):
            fields[name] = [value]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            fields[name] = list(value)
        else:
            raise MalformedForm({str(name)[:100]: "Must be a string or a list of strings."})
    return fields
