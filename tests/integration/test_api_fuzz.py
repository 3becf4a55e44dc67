"""Schemathesis fuzzes every operation of the OpenAPI description and checks every answer:
never a 5xx, and always a documented status code, content type and schema.

In-process through the WSGI app: no network, and no mail (no worker runs, and the
stack's SMTP server is the local test one anyway). The budget is fixed: EXAMPLES cases
per operation and mode (valid and invalid input), from a fixed seed. Operations behind
a reader's link run twice: with made-up tokens, and with a real reader's tokens and CSRF
header, so the fuzzer also reaches the forms behind the link check.

KNOWN_BUGS are server errors found in the service (not in the description). The run
steers clear of their inputs so it can go on finding others, and
test_no_known_bug_is_a_server_error_any_more reproduces each as a strict xfail: fix one
and that test passes, which fails the run until the entry moves to FIXED_BUGS, whose
requests are replayed on every run so they stay fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, assume, given, seed, settings
from schemathesis import Case, GenerationMode, checks
from schemathesis.schemas import APIOperation

from service import tokens
from service.articles import MAX_TAG_LENGTH, MAX_URL, canonical_url
from service.extensions import db
from service.models import Subscriber
from service.subscriptions import SubscriptionRequest, subscribe
from service.web import openapi
from service.web.csrf import csrf_token
from tests.conftest import stop_shared_worker

pytestmark = pytest.mark.integration

TOKEN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance]
SEED = 20261125
EXAMPLES = 10
LARGEST_ID = {"postgres": 2**31 - 1, "sqlite": 2**63 - 1}  # INTEGER columns: int4 and int8


# ------------------------------------------------------------------ known bugs


@dataclass(frozen=True)
class KnownBug:
    """A server error in the service: where it is, one request that shows it on ``stacks``,
    and which generated cases would run into it there (so the fuzz run can steer clear)."""

    name: str
    where: str
    stacks: tuple[str, ...]
    method: str
    url: str
    body: Any
    hit_by: Callable[[Case, str], bool]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, bytes):
        yield value.decode("utf-8", "replace")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _inputs(case: Case) -> list[Any]:
    return [case.path_parameters, case.query, case.headers, case.cookies, case.body]


def _named(case: Case, name: str) -> list[Any]:
    """Every value given for ``name``: in the query string or as a field of the JSON body."""
    values = []
    for container in (case.query, case.body):
        if isinstance(container, dict) and name in container:
            given_value = container[name]
            values.extend(given_value if isinstance(given_value, list) else [given_value])
    return values


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _overflows(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value.strip()).astimezone(UTC)
    except ValueError:
        return False
    except OverflowError:
        return True
    return False


def _too_long_once_canonical(value: Any) -> bool:
    try:
        return isinstance(value, str) and len(canonical_url(value)) > MAX_URL
    except ValueError:
        return False


def _bodies(case: Case) -> list[dict[str, Any]]:
    body = case.body
    items = body.get("articles", [body]) if isinstance(body, dict) else body if isinstance(body, list) else []
    return [item for item in (items if isinstance(items, list) else []) if isinstance(item, dict)]


KNOWN_BUGS: list[KnownBug] = []

# Found by this run and by writing the description; fixed, and replayed so they stay fixed.
FIXED_BUGS = [
    KnownBug(
        "nul-in-text",
        "PostgreSQL refuses NUL (0x00) in text, and query strings, path parameters and the JSON of "
        "/bounces and /subscribers/erase reach SQL with it (psycopg DataError): ?tag= "
        "(admin_api.get_articles), /topics/<slug>, ?period=, ?email=, bounce and erase addresses. "
        "Form fields and the other admin JSON bodies refuse it (forms.read_form, admin_api._json_body)",
        ("postgres",), "GET", "/api/v1/articles?tag=%00", None,
        lambda case, stack: stack == "postgres" and (
            any("\x00" in s for s in _strings([case.path_parameters, case.query]))
            or (case.operation.label in ("POST /api/v1/bounces", "POST /api/v1/subscribers/erase")
                and any("\x00" in s for s in _strings(case.body))))),
    KnownBug(
        "subscriber-id-out-of-range",
        "?subscriber_id= and {\"subscriber_id\"} are looked up whatever their size: beyond the INTEGER "
        "column (2**31-1 on PostgreSQL, 2**63-1 on SQLite) the query fails (admin_api.digest_preview, "
        "privacy.admin_export, privacy.admin_erase -> service/digests.py find_subscriber)",
        ("postgres", "sqlite"), "GET", f"/api/v1/digests/preview?subscriber_id={2**63}", None,
        lambda case, stack: any(n is not None and abs(n) > LARGEST_ID[stack]
                                for n in map(_as_int, _named(case, "subscriber_id")))),
    KnownBug(
        "negative-limit",
        "GET /api/v1/articles?limit=-1 passes the negative limit to SQL: PostgreSQL refuses it "
        "(LIMIT must not be negative) and SQLite returns every article (admin_api.get_articles)",
        ("postgres",), "GET", "/api/v1/articles?limit=-1", None,
        lambda case, stack: stack == "postgres" and case.operation.label == "GET /api/v1/articles" and any(
            n is not None and n < 0 for n in map(_as_int, _named(case, "limit")))),
    KnownBug(
        "published-at-overflow",
        "published_at at the edge of datetime's range with an offset (0001-01-01T00:00:00+01:00) "
        "raises OverflowError in astimezone (service/articles.py _datetime)",
        ("postgres", "sqlite"), "POST", "/api/v1/articles",
        {"title": "T", "url": "https://www.example.com/b", "published_at": "0001-01-01T00:00:00+01:00"},
        lambda case, stack: any(_overflows(item.get("published_at")) for item in _bodies(case))),
    KnownBug(
        "retry-period-type",
        "POST /api/v1/deliveries/retry hands a non-string period to the query: an object fails on "
        "both stacks, a number on PostgreSQL (admin_api.deliveries_retry -> delivery_reports.retry_failed)",
        ("postgres", "sqlite"), "POST", "/api/v1/deliveries/retry", {"period": {"run": 1}},
        lambda case, stack: case.operation.label == "POST /api/v1/deliveries/retry" and any(
            value is not None and not isinstance(value, str) for value in _named(case, "period"))),
    KnownBug(
        "topic-tag-length",
        "topic tags have no length limit (service/topics.py topic_changes_from_mapping), so a tag over "
        "200 characters overflows tags.name on PostgreSQL",
        ("postgres",), "POST", "/api/v1/topics",
        {"slug": "long-tag", "name": "Long tag", "tags": ["x" * (MAX_TAG_LENGTH + 1)]},
        lambda case, stack: stack == "postgres" and "/topics" in case.operation.path and any(
            len(tag) > MAX_TAG_LENGTH for tag in _strings(_named(case, "tags")))),
    KnownBug(
        "url-length-after-canonicalising",
        "article URLs are checked for length (2048) before canonical_url percent-encodes them, so a "
        "URL of 1,000 'é' becomes 6,000 characters and overflows articles.url on PostgreSQL "
        "(service/articles.py _url)",
        ("postgres",), "POST", "/api/v1/articles",
        {"title": "T", "url": "https://www.example.com/" + "é" * 1000, "published_at": "2026-11-24"},
        lambda case, stack: stack == "postgres" and any(
            _too_long_once_canonical(item.get(name))
            for item in _bodies(case) for name in ("url", "image_url"))),
    KnownBug(
        "slug-with-newline",
        "topics.SLUG ends in $, which lets a trailing newline through: 'news\\n' becomes a slug, and 80 "
        "characters plus a newline overflow topics.slug on PostgreSQL (service/topics.py SLUG)",
        ("postgres",), "POST", "/api/v1/topics", {"slug": "a" * 80 + "\n", "name": "Newline"},
        lambda case, stack: stack == "postgres" and any(
            isinstance(slug, str) and slug.endswith("\n") for slug in _named(case, "slug"))),
]


# ------------------------------------------------------------------ the run


@pytest.fixture
def fuzzed_app(stack, app) -> Iterator[Flask]:
    """The stack's app with the admin API open and the description registered."""
    stop_shared_worker(stack)  # nothing but the web app acts on what the run queues
    fuzzed = stack.make_app(ADMIN_API_TOKEN=TOKEN)
    if "openapi" not in fuzzed.blueprints:
        fuzzed.register_blueprint(openapi.bp)
    yield fuzzed
    with fuzzed.app_context():
        db.engine.dispose()


def _genuine_links(app: Flask) -> dict[str, dict[str, Any]]:
    """A pending reader's real tokens and CSRF header, by the path their links start with."""
    with app.app_context():
        outcome = subscribe(db.session, SubscriptionRequest(email="peggy@example.com",
                                                            topic_slugs=["marvel-news"]),
                            default_frequency="weekly")
        db.session.commit()
        subscriber = db.session.get(Subscriber, outcome.subscriber_id)
        assert subscriber is not None
        by_path = {"/confirm/": tokens.confirm_token(subscriber.id, subscriber.token_epoch),
                   "/unsubscribe/": tokens.unsubscribe_token(subscriber.id),
                   "/preferences/": tokens.preferences_token(subscriber.id)}
        return {path: {"path_parameters": {"token": token}, "headers": {"X-CSRF-Token": csrf_token(token)}}
                for path, token in by_path.items()}


def _runs(operation: APIOperation, links: dict[str, dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each way to fuzz the operation: its name, and the inputs held fixed."""
    yield "made-up link" if "{token}" in operation.path else "", {}
    for path, fixed in links.items():
        if operation.path.startswith(path) and "{token}" in operation.path:
            yield "real link", fixed


def _negatable(operation: APIOperation, fixed: dict[str, Any]) -> bool:
    """Whether anything not held fixed can be made invalid (else negative mode has nothing to do)."""
    held = {name for values in fixed.values() for name in values}
    return len(operation.body) > 0 or any(p.name not in held for p in operation.iter_parameters())


def _fuzz(operation: APIOperation, mode: GenerationMode, fixed: dict[str, Any], stack_name: str) -> None:
    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    def answers_as_described(case: Case) -> None:
        assume(not any(bug.hit_by(case, stack_name) for bug in KNOWN_BUGS))
        case.call_and_validate(headers=AUTH, checks=CHECKS)

    answers_as_described()


def test_every_operation_answers_as_described(stack, fuzzed_app, subtests):
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", fuzzed_app)
    links = _genuine_links(fuzzed_app)
    for result in schema.get_all_operations():
        operation = result.ok()
        for run, fixed in _runs(operation, links):
            for mode in GenerationMode:
                if mode.is_negative and not _negatable(operation, fixed):
                    continue
                label = ", ".join(filter(None, [operation.label, run, mode.value]))
                with subtests.test(msg=label):
                    _fuzz(operation, mode, fixed, stack.name)


@pytest.mark.parametrize("bug", [*KNOWN_BUGS, *FIXED_BUGS], ids=lambda bug: bug.name)
def test_no_known_bug_is_a_server_error_any_more(stack, fuzzed_app, bug, request):
    if bug in KNOWN_BUGS and stack.name in bug.stacks:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"known bug: {bug.where}"))
    response = fuzzed_app.test_client().open(bug.url, method=bug.method, json=bug.body, headers=AUTH)
    assert response.status_code < 500, response.get_data(as_text=True)[:300]
