"""The OpenAPI 3 description of the HTTP API, and the two public routes that serve it.

Each view documents its own operations in YAML after a ``---`` line of its
docstring (summary, parameters, requestBody, responses), read by apispec's
FlaskPlugin. What several operations share (schemas, path parameters,
responses, the bearer schemes) is defined here, once. The description is built
by walking the app's URL map, so every route is in it; the embedded outbox and
static files are left out. Admin routes get their security and 401 here too.
"""

from __future__ import annotations

import inspect
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from apispec import APISpec, BasePlugin
from apispec.yaml_utils import PATH_KEYS
from apispec_webframeworks.flask import FlaskPlugin
from flask import Blueprint, Flask, current_app, jsonify, render_template
from werkzeug.routing import Rule
from werkzeug.wrappers import Response

from service import articles, subscriptions, topics
from service.bounce_reports import MAX_BATCH as MAX_BOUNCES
from service.config import FREQUENCIES
from service.models import BounceKind, DeliveryKind, DeliveryState
from service.web import forms
from service.web.admin_api import MAX_BATCH as MAX_ARTICLES

bp = Blueprint("openapi", __name__, url_prefix="/api/v1")

OPENAPI_VERSION = "3.0.3"
UNDESCRIBED_BLUEPRINTS = frozenset({"outbox"})  # embedded mode only: never part of the API
UNDESCRIBED_METHODS = frozenset({"HEAD", "OPTIONS"})  # Flask answers these for every route
TAGS = {  # blueprint -> tag, in the order the docs page lists them
    "public": "Reader pages", "privacy": "Reader pages", "challenge": "Reader pages",
    "health": "Health", "admin_api": "Admin API", "privacy_admin": "Admin API",
    "bounce_webhook": "Admin API", "openapi": "API description",
}
ADMIN = [{"adminToken": []}]
SECURITY = {"admin_api": ADMIN, "privacy_admin": ADMIN,
            "admin_overview": [{"adminToken": []}, {"adminBasic": []}],
            "bounce_webhook": [{"bounceWebhookToken": []}, {"adminToken": []}]}
SECURITY_SCHEMES = {
    "adminToken": {"type": "http", "scheme": "bearer",
                   "description": "ADMIN_API_TOKEN, or a named key from 'newsletter api-keys create NAME'."},
    "bounceWebhookToken": {"type": "http", "scheme": "bearer", "description": "BOUNCE_WEBHOOK_TOKEN."},
    "adminBasic": {"type": "http", "scheme": "basic",
                   "description": "For browsers: the admin token (or a named key) as the password, "
                                  "any user name."},
}


# ------------------------------------------------------------------ shared parts


def _str(description: str = "", **constraints: Any) -> dict[str, Any]:
    return {"type": "string", **({"description": description} if description else {}), **constraints}


def _null(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _obj(properties: dict[str, Any], required: tuple[str, ...] = (), description: str = "",
         closed: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _list(items: dict[str, Any], **constraints: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, **constraints}


def _int(description: str = "", **constraints: Any) -> dict[str, Any]:
    return {"type": "integer", **({"description": description} if description else {}), **constraints}


_TEXT = _str(maxLength=forms.MAX_FIELD_LENGTH)
_TIME = _str(format="date-time")
_FREQUENCY = _str(enum=list(FREQUENCIES))
_SLUG = _str("Lower-case letters, digits and dashes.", pattern=topics.SLUG.pattern, example="marvel-news")
_TAGS = _list(_str(), description="Compared case-, space- and Unicode-insensitively.")
_URL = _str(format="uri", maxLength=articles.MAX_URL, example="https://www.example.com/movies/mi7-set")
_CSRF = _str("The CSRF token of our own page's form (or send it as X-CSRF-Token).")
_STATE_COUNTS = _obj({s.value: _int() for s in DeliveryState}, tuple(s.value for s in DeliveryState))
_ARTICLE_FIELDS = {
    "title": _str(maxLength=articles.MAX_TITLE),
    "url": {**_URL, "description": "The article's address; its canonical form identifies it."},
    "published_at": _str("ISO 8601; without an offset, UTC.", format="date-time",
                         example="2026-11-24T10:00:00Z"),
    "summary": _str(maxLength=articles.MAX_SUMMARY),
    "author": _str(maxLength=articles.MAX_AUTHOR),
    "image_url": {**_URL, "example": "https://www.example.com/img/mi7.jpg"},
    "tags": {**_TAGS, "maxItems": articles.MAX_TAGS},
    "external_id": _str("Your id for it; the same id updates it.", maxLength=articles.MAX_EXTERNAL_ID),
}
_TOPIC_FIELDS = {
    "name": _str(minLength=1, maxLength=200, example="Marvel News"),
    "description": _str(maxLength=2000),
    "tags": _TAGS,
    "default_frequency": _null({**_FREQUENCY, "description": "For readers who choose none."}),
    "feed_url": {**_URL, "description": "A feed to poll; its entries belong to the topic."},
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Html": _str("An HTML page."),
    "Error": _obj({"error": _str("What went wrong, for people."),
                   "errors": {"type": "object", "additionalProperties": _str(),
                              "description": "Refused fields: name -> message."}},
                  ("error",), "An error answer."),
    "RateLimited": _obj({"error": _str(), "retry_after": _int("Seconds to wait.", minimum=1)},
                        ("error", "retry_after")),
    "SubscriptionForm": _obj({
        "email": _str(format="email", maxLength=subscriptions.MAX_EMAIL_LENGTH, example="peggy@example.com"),
        "topics": _list(_SLUG, maxItems=subscriptions.MAX_TOPICS,
                        description="Topic slugs; repeat the form field for several."),
        "name": _str(maxLength=subscriptions.MAX_NAME_LENGTH),
        "frequency": _FREQUENCY,
        "timezone": _str("IANA name; default UTC.", maxLength=64, example="Europe/Berlin"),
        "next": _str("Where to send the reader afterwards (a publisher origin).", format="uri",
                     maxLength=forms.MAX_FIELD_LENGTH),
        "website": _str("A honeypot: people leave it empty.", maxLength=0),
        "form_ts": {**_TEXT, "description": "The hosted form's signed timestamp."},
        "altcha": {**_TEXT, "description": "The solved proof-of-work challenge, when required."},
    }, ("email", "topics"), "Unknown fields are refused by name."),
    "Accepted": _obj({"status": _str(enum=["accepted"]), "message": _str()}, ("status", "message"),
                     "The same answer for a new, pending or confirmed address."),
    "Confirmed": _obj({"status": _str(enum=["confirmed"]), "topics": _list(_SLUG)}, ("status", "topics")),
    "Unsubscribed": _obj({"status": _str(enum=["unsubscribed"])}, ("status",)),
    "Erased": _obj({"status": _str(enum=["erased"])}, ("status",)),
    "CsrfForm": _obj({"csrf_token": _CSRF}),
    "ResendForm": _obj({"token": _str("The expired confirmation link's token."), "csrf_token": _CSRF},
                       ("token",)),
    "OneClickUnsubscribe": _obj({"List-Unsubscribe": _str(enum=["One-Click"])},
                                description="RFC 8058; the body is not needed."),
    "PreferencesForm": _obj({
        "topics": _list(_SLUG, description="Topics to keep; none leaves the newsletter."),
        "frequency": _FREQUENCY, "name": _str(maxLength=subscriptions.MAX_NAME_LENGTH),
        "timezone": _str(maxLength=64), "action": _str("'unsubscribe' leaves.", enum=["unsubscribe"]),
        "csrf_token": _CSRF,
    }),
    "Health": _obj({"status": _str(enum=["ok"])}, ("status",)),
    "Readiness": _obj({
        "status": _str(enum=["ready", "unavailable"]),
        "checks": _obj({"database": _str(enum=["ok", "failing"]), "broker": _str(enum=["ok", "failing"])},
                       ("database", "broker")),
    }, ("status", "checks")),
    "Challenge": _obj({"algorithm": _str(enum=["SHA-256"]), "challenge": _str(), "maxnumber": _int(),
                       "salt": _str(), "signature": _str()},
                      ("algorithm", "challenge", "maxnumber", "salt", "signature"),
                      "An ALTCHA-style proof-of-work challenge, signed; each can be spent once."),
    "Article": _obj(_ARTICLE_FIELDS, ("title", "url", "published_at"),
                    "An article to ingest; the same external_id or canonical URL updates it."),
    "ArticleBatch": _obj({"articles": _list(_ref("Article"), minItems=1, maxItems=MAX_ARTICLES)},
                         ("articles",), "Stored only when every article in it is valid."),
    "ArticleUpload": {"oneOf": [_ref("Article"), _list(_ref("Article"), minItems=1, maxItems=MAX_ARTICLES),
                                _ref("ArticleBatch")],
                      "description": "One article, a list of them, or a batch object."},
    "IngestedArticle": _obj({"id": _int(), "created": {"type": "boolean"}, "url": _str(format="uri")},
                            ("id", "created", "url")),
    "IngestedArticles": _obj({"articles": _list(_ref("IngestedArticle"))}, ("articles",)),
    "Ingested": {"oneOf": [_ref("IngestedArticle"), _ref("IngestedArticles")],
                 "description": "One result for one article; a list of them for a list or batch."},
    "StoredArticle": _obj({
        "id": _int(), "external_id": _null(_str()), "url": _str(), "title": _str(), "summary": _str(),
        "author": _null(_str()), "image_url": _null(_str()), "published_at": _TIME,
        "tags": _list(_str(), description="Normalised."),
    }, ("id", "external_id", "url", "title", "summary", "author", "image_url", "published_at", "tags")),
    "ArticleList": _obj({"articles": _list(_ref("StoredArticle"))}, ("articles",)),
    "NewTopic": _obj({"slug": _SLUG, **_TOPIC_FIELDS}, ("slug", "name"),
                     "A new topic (a retired topic with the slug comes back)."),
    "TopicChanges": _obj(_TOPIC_FIELDS, description="Fields to change; the slug cannot change."),
    "Topic": _obj({"slug": _str(), "name": _str(), "description": _str(), "tags": _list(_str()),
                   "default_frequency": _null(_FREQUENCY), "feed_urls": _list(_str()),
                   "retired_at": _null(_TIME)},
                  ("slug", "name", "description", "tags", "default_frequency", "feed_urls", "retired_at")),
    "TopicList": _obj({"topics": _list(_ref("Topic"))}, ("topics",)),
    "DigestPreview": _obj({"empty": {"type": "boolean"}, "subject": _null(_str()), "html": _null(_str()),
                           "text": _null(_str())}, ("empty", "subject", "html", "text")),
    "DigestSendRequest": _obj({"frequency": _FREQUENCY, "topic": {**_SLUG, "description": "Its readers."}},
                              description="Limits the send to some readers; an empty body sends to all."),
    "DigestSendAccepted": _obj({"status": _str(enum=["accepted"]), "frequency": _null(_FREQUENCY),
                                "topic": _null(_str())}, ("status", "frequency", "topic")),
    "DeliveryKind": _str("A stream of mail.", enum=[k.value for k in DeliveryKind]),
    "DeliveryStats": _obj({"streams": _list(_obj({
        "kind": _ref("DeliveryKind"),
        "period": _null(_str("The digest run, with by_period or period.")),
        "total": _int(), "counts": {**_STATE_COUNTS, "description": "Deliveries by state."},
    }, ("kind", "period", "total", "counts")))}, ("streams",)),
    "RetryRequest": _obj({"kind": _ref("DeliveryKind"),
                          "period": _str("A digest run, e.g. 2026-W48.", maxLength=40)}),
    "RetryResult": _obj({"retried": _int(), "published": _int()}, ("retried", "published")),
    "SubscriberExport": _obj({
        "about": _str(), "generated_at": _TIME,
        "subscriber": _obj({"id": _int(), "email": _str()}, ("id", "email"), closed=False),
        "suppression": _null(_obj({"reason": _str(), "since": _null(_TIME)})),
        "subscriptions": _list({"type": "object", "description": "A topic, its state and consent records."}),
        "deliveries": _list({"type": "object", "description": "An email sent or meant to be sent."}),
        "digest_items": _list({"type": "object", "description": "An article a digest carried."}),
        "bounces": _list({"type": "object", "description": "A bounce report about the address."}),
    }, ("about", "generated_at", "subscriber", "suppression", "subscriptions", "deliveries", "digest_items",
        "bounces"), "Everything held about one reader (GDPR articles 15 and 20)."),
    "EraseRequest": _obj({"email": _str(format="email", minLength=1), "subscriber_id": _int()},
                         description="Exactly one of email and subscriber_id."),
    "EraseResult": _obj({"erased": {"type": "boolean", "description": "False if there was no one to erase."}},
                        ("erased",)),
    "BounceReport": _obj({
        "email": _str("The bounced address.", format="email", maxLength=320),
        "type": _str("Derived from status when left out.", enum=[k.value for k in BounceKind]),
        "status": _str("An enhanced status code.", pattern=r"^[245]\.\d{1,3}\.\d{1,3}$", example="5.1.1"),
        "diagnostic": _str(maxLength=10_000), "message_id": _str("Our Message-ID.", maxLength=255),
        "recipient": _str("The VERP address the bounce went to.", format="email", maxLength=320),
    }, description="A bounce an ESP parsed already; name an email, message_id or recipient."),
    "BounceReports": {"oneOf": [_ref("BounceReport"), _list(_ref("BounceReport"), minItems=1,
                                                             maxItems=MAX_BOUNCES)]},
    "BounceResult": _obj({
        "reports": _int("Reports that asked for action."),
        "recorded": _list(_obj({"bounce_id": _int(), "kind": _str(enum=[k.value for k in BounceKind]),
                                "status": _null(_str()), "delivery_id": _null(_int())},
                               ("bounce_id", "kind", "status", "delivery_id"))),
        "unmatched": _int("Reports about nothing of ours."),
    }, ("reports", "recorded", "unmatched"), "Ids, kinds and codes only: never an address."),
}

PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "token": {"name": "token", "in": "path", "description": "The signed token of a link in our emails.",
              "schema": _str(pattern="^[A-Za-z0-9_.-]+$", example="eyJzaWQiOjF9.aGVsbG8.c2lnbmF0dXJl")},
    "slug": {"name": "slug", "in": "path", "description": "A topic's slug.", "schema": _SLUG},
}

PARAMETERS: dict[str, dict[str, Any]] = {
    "CsrfHeader": {"name": "X-CSRF-Token", "in": "header", "schema": _str(),
                   "description": "The form's CSRF token, for clients that send no csrf_token field."},
}


def _answer(description: str, *schemas: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A response with one schema per media type: 'Html' is text/html, the others JSON."""
    content = {("text/html" if name == "Html" else "application/json"): {"schema": _ref(name)}
               for name in schemas}
    return {"description": description, "content": content, **({"headers": headers} if headers else {})}


RESPONSES: dict[str, dict[str, Any]] = {
    "Unauthorized": _answer("No valid bearer token; no data.", "Error",
                            headers={"WWW-Authenticate": {"schema": _str()}}),
    "InvalidFields": _answer("Fields refused; errors names each.", "Error"),
    "MalformedRequest": _answer("The URL holds a NUL character (refused for every route).",
                                "Html", "Error"),
    "NotFound": _answer("No such thing.", "Error"),
    "TooLarge": _answer("The body is over 2 MiB.", "Error"),
    "BadLink": _answer("The link is tampered, incomplete, expired or stale, or the form's CSRF token is "
                       "wrong: a page with a way back, or JSON.", "Html", "Error"),
    "Gone": _answer("We hold no data for this reader any more.", "Html", "Error"),
    "FormRefused": _answer("Fields refused: the page again with the fields kept, or JSON naming them.",
                           "Html", "Error"),
    "FormTooLarge": _answer("The body is over MAX_FORM_BYTES.", "Html", "Error"),
    "UnsupportedForm": _answer("Not form-encoded, multipart or JSON.", "Html", "Error"),
    "ForeignOrigin": _answer("A browser posted it from an origin not in PUBLISHER_ORIGINS.", "Html", "Error"),
    "TooManyRequests": _answer("A rate limit was hit; see Retry-After.", "Html", "RateLimited",
                               headers={"Retry-After": {"schema": _int()}}),
}


# ------------------------------------------------------------------ building


class _RoutePlugin(BasePlugin):
    """What the operations of one route share: an id, a tag, the docstring's prose as the
    description, and on admin routes the bearer security with its 401."""

    def operation_helper(self, path: str | None = None, operations: dict | None = None, *,
                         rule: Rule, view: Any, **kwargs: Any) -> None:
        assert operations is not None
        blueprint = rule.endpoint.rpartition(".")[0]
        prose = inspect.cleandoc(view.__doc__ or "").partition("\n---")[0].strip()
        methods = {key: value for key, value in operations.items() if key in PATH_KEYS}
        for method, operation in methods.items():
            if method.upper() not in (rule.methods or ()):
                raise ValueError(f"{rule.endpoint} describes {method.upper()}, not accepted by {rule.rule}")
            operation_id = rule.endpoint if len(methods) == 1 else f"{rule.endpoint}.{method}"
            operation.setdefault("operationId", operation_id)
            operation.setdefault("tags", [TAGS.get(blueprint, blueprint)])
            if prose:
                operation.setdefault("description", prose)
            if blueprint in SECURITY:
                operation["security"] = SECURITY[blueprint]
                operation.setdefault("responses", {}).setdefault(401, "Unauthorized")
            # service.web.input_guard answers any route this way before its view runs.
            responses = operation.setdefault("responses", {})
            if 400 not in responses and "400" not in responses:
                responses[400] = "MalformedRequest"


def described_rules(app: Flask) -> list[Rule]:
    """The routes the description covers: all but static files and the embedded outbox."""
    return [rule for rule in app.url_map.iter_rules()
            if rule.endpoint != "static" and rule.endpoint.split(".")[0] not in UNDESCRIBED_BLUEPRINTS]


def build_spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI description of every route of ``app``, from the views' docstrings."""
    try:
        release = version("newsletter-service")
    except PackageNotFoundError:
        release = "unreleased"
    spec = APISpec(
        title="Newsletter service", version=release, openapi_version=OPENAPI_VERSION,
        plugins=[FlaskPlugin(), _RoutePlugin()],
        info={"description": "Double opt-in subscriptions, topic digests and their admin API. Reader "
                             "pages answer HTML, or JSON to clients that send or accept JSON."},
        tags=[{"name": name} for name in dict.fromkeys(TAGS.values())],
    )
    for name, scheme in SECURITY_SCHEMES.items():
        spec.components.security_scheme(name, scheme)
    for name, schema in SCHEMAS.items():
        spec.components.schema(name, schema)
    for name, parameter in PARAMETERS.items():
        spec.components.parameter(name, parameter["in"], parameter)
    for name, response in RESPONSES.items():
        spec.components.response(name, response)
    for rule in described_rules(app):
        unknown = set(rule.arguments) - set(PATH_PARAMETERS)
        if unknown:
            raise ValueError(f"describe the path parameters {sorted(unknown)} of {rule.rule} here")
        parameters = [PATH_PARAMETERS[name] for name in sorted(rule.arguments)]
        # FlaskPlugin finds the rule by its view, so one rule per endpoint; the test catches a second.
        spec.path(view=app.view_functions[rule.endpoint], app=app, rule=rule, parameters=parameters)
    return spec.to_dict()


def api_description() -> dict[str, Any]:
    """The current app's description, built once."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if "openapi" not in app.extensions:
        app.extensions["openapi"] = build_spec(app)
    return app.extensions["openapi"]


# ------------------------------------------------------------------ the docs page


def _resolve(spec: dict[str, Any], node: Any) -> Any:
    """Follow a local $ref (#/components/...) to what it names."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


METHOD_ORDER = ("get", "post", "put", "patch", "delete", "head", "options", "trace")


def docs_page(spec: dict[str, Any]) -> dict[str, Any]:
    """What the docs page lists: operations grouped by tag, with parameters, bodies and
    responses resolved; schemas stay references, which the page links to."""
    groups: dict[str, list[dict[str, Any]]] = {tag["name"]: [] for tag in spec.get("tags", [])}
    for path, item in spec["paths"].items():
        shared = [_resolve(spec, p) for p in item.get("parameters", [])]
        for method, operation in item.items():
            if method not in PATH_KEYS:
                continue
            body = _resolve(spec, operation.get("requestBody"))
            groups.setdefault(operation.get("tags", ["Other"])[0], []).append({
                "anchor": operation["operationId"], "method": method.upper(), "path": path,
                "summary": operation.get("summary", ""), "description": operation.get("description", ""),
                "security": [name for option in operation.get("security", []) for name in option],
                "parameters": shared + [_resolve(spec, p) for p in operation.get("parameters", [])],
                "body": body,
                "responses": [(status, _resolve(spec, response))
                              for status, response in sorted(operation["responses"].items())],
            })
    for ops in groups.values():
        ops.sort(key=lambda op: (op["path"], METHOD_ORDER.index(op["method"].lower())))
    return {"info": spec["info"], "groups": [(tag, ops) for tag, ops in groups.items() if ops],
            "schemas": sorted(spec["components"]["schemas"].items()),
            "schemes": spec["components"]["securitySchemes"]}


# ------------------------------------------------------------------ routes


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """This description, as OpenAPI 3 JSON. Public: it describes the API and holds no data.
    ---
    get:
      summary: The OpenAPI description of this API
      responses:
        200:
          description: This document.
          content: {application/json: {schema: {type: object}}}
    """
    return jsonify(api_description())


@bp.get("/docs")
def docs() -> str:
    """The description as a page: each operation with its parameters, bodies and answers.
    ---
    get:
      summary: The API documentation page
      responses:
        200: {description: The page., content: {text/html: {schema: Html}}}
    """
    return render_template("api_docs.html", **docs_page(api_description()))
