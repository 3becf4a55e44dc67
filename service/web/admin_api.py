"""The admin JSON API under /api/v1: articles, topics and digests.

Every request needs ``Authorization: Bearer <ADMIN_API_TOKEN or a named API
key>``; without it, or with a wrong one, the answer is 401 and no data. With
neither configured the API is closed.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import select
from werkzeug.exceptions import HTTPException

from service.articles import InvalidArticle, article_from_mapping, ingest_articles
from service.config import FREQUENCIES, get_settings
from service.delivery_reports import delivery_counts, retry_failed
from service.digests import find_subscriber, preview_digest
from service.errors import InvalidInput, NotFound
from service.extensions import db
from service.models import Article, DeliveryKind, Tag, Topic, article_tags
from service.topics import (
    create_topic,
    get_topic,
    list_topics,
    retire_topic,
    topic_changes_from_mapping,
    topic_feed_urls,
    update_topic,
)
from service.web.admin_auth import require_admin
from tasks.delivery import publish_deliveries
from tasks.digests import send_digests_now

bp = Blueprint("admin_api", __name__, url_prefix="/api/v1")
MAX_BATCH = 1000


bp.before_request(require_admin)


@bp.errorhandler(InvalidInput)
def invalid_input(error: InvalidInput):  # type: ignore[no-untyped-def]
    return jsonify({"error": "Some fields were refused.", "errors": error.errors}), 422


@bp.errorhandler(NotFound)
def not_found(error: NotFound):  # type: ignore[no-untyped-def]
    return jsonify({"error": str(error)}), 404


@bp.errorhandler(HTTPException)
def http_error(error: HTTPException):  # type: ignore[no-untyped-def]
    return jsonify({"error": error.description}), error.code or 500


# ------------------------------------------------------------------ articles


@bp.post("/articles")
def post_articles():  # type: ignore[no-untyped-def]
    """One article (an object), or many (a list, or {"articles": [...]}).
    ---
    post:
      summary: Ingest one article or a batch (upsert)
      requestBody:
        required: true
        content: {application/json: {schema: ArticleUpload}}
      responses:
        200: {description: "Stored, none of it new.", content: {application/json: {schema: Ingested}}}
        201: {description: At least one article was new., content: {application/json: {schema: Ingested}}}
        413: TooLarge
        422: InvalidFields
    """
    body = _json_body()
    single = isinstance(body, dict) and "articles" not in body
    raw_items = [body] if single else (body.get("articles") if isinstance(body, dict) else body)
    if not isinstance(raw_items, list) or not raw_items:
        raise InvalidInput({"articles": "send an article object, or a non-empty list of them"})
    if len(raw_items) > MAX_BATCH:
        raise InvalidInput({"articles": f"at most {MAX_BATCH} articles per request"})
    items, errors = [], {}
    for index, raw in enumerate(raw_items):
        try:
            items.append(article_from_mapping(raw))
        except InvalidArticle as invalid:
            prefix = "" if single else f"articles[{index}]."
            errors.update({f"{prefix}{field}": message for field, message in invalid.errors.items()})
    if errors:
        raise InvalidInput(errors)  # all or nothing: a batch is stored only when all of it is valid
    results = ingest_articles(db.session, items)
    db.session.commit()
    status = 201 if any(r.created for r in results) else 200
    payload = [{"id": r.article_id, "created": r.created, "url": item.url}
               for r, item in zip(results, items, strict=True)]
    return jsonify(payload[0] if single else {"articles": payload}), status


@bp.get("/articles")
def get_articles():  # type: ignore[no-untyped-def]
    """Recent articles, newest first.
    ---
    get:
      summary: List recent articles
      parameters:
        - name: limit
          in: query
          description: At most this many; capped at 500.
          schema: {type: integer, minimum: 1, default: 50}
        - {name: tag, in: query, schema: {type: string}, description: Only articles with this tag.}
      responses:
        200: {description: The articles., content: {application/json: {schema: ArticleList}}}
    """
    limit = min(max(request.args.get("limit", 50, type=int) or 50, 1), 500)
    query = select(Article).order_by(Article.published_at.desc(), Article.id.desc()).limit(limit)
    if tag := request.args.get("tag"):
        query = query.join(article_tags).join(Tag).where(Tag.name == tag.strip().casefold())
    return jsonify({"articles": [_article_json(a) for a in db.session.scalars(query)]})


# ------------------------------------------------------------------ topics


@bp.get("/topics")
def get_topics():  # type: ignore[no-untyped-def]
    """The topics, by name.
    ---
    get:
      summary: List topics
      parameters:
        - {name: include_retired, in: query, schema: {type: boolean}, description: 1 and yes work too.}
      responses:
        200: {description: The topics., content: {application/json: {schema: TopicList}}}
    """
    include_retired = request.args.get("include_retired", "").lower() in ("1", "true", "yes")
    topics = list_topics(db.session, include_retired=include_retired)
    return jsonify({"topics": [_topic_json(t) for t in topics]})


@bp.post("/topics")
def post_topic():  # type: ignore[no-untyped-def]
    """Create a topic; creating a retired topic's slug again brings it back.
    ---
    post:
      summary: Create a topic
      requestBody:
        required: true
        content: {application/json: {schema: NewTopic}}
      responses:
        201: {description: Created., content: {application/json: {schema: Topic}}}
        413: TooLarge
        422: InvalidFields
    """
    slug, changes = topic_changes_from_mapping(_json_body(), creating=True)
    assert slug is not None
    topic = create_topic(db.session, slug, changes)
    db.session.commit()
    return jsonify(_topic_json(topic)), 201


@bp.get("/topics/<slug>")
def get_one_topic(slug: str):  # type: ignore[no-untyped-def]
    """One topic, retired or not.
    ---
    get:
      summary: Read a topic
      responses:
        200: {description: The topic., content: {application/json: {schema: Topic}}}
        404: NotFound
    """
    return jsonify(_topic_json(get_topic(db.session, slug)))


@bp.patch("/topics/<slug>")
def patch_topic(slug: str):  # type: ignore[no-untyped-def]
    """Change the fields given; the others stay.
    ---
    patch:
      summary: Change a topic
      requestBody:
        required: true
        content: {application/json: {schema: TopicChanges}}
      responses:
        200: {description: The changed topic., content: {application/json: {schema: Topic}}}
        404: NotFound
        413: TooLarge
        422: InvalidFields
    """
    topic = get_topic(db.session, slug)
    _, changes = topic_changes_from_mapping(_json_body(), creating=False)
    update_topic(db.session, topic, changes)
    db.session.commit()
    return jsonify(_topic_json(topic))


@bp.delete("/topics/<slug>")
def delete_topic(slug: str):  # type: ignore[no-untyped-def]
    """Retire the topic: hidden from forms and digests, its subscribers' history kept.
    ---
    delete:
      summary: Retire a topic
      responses:
        200: {description: The retired topic., content: {application/json: {schema: Topic}}}
        404: NotFound
    """
    topic = retire_topic(db.session, slug)
    db.session.commit()
    return jsonify(_topic_json(topic))


# ------------------------------------------------------------------ digests


@bp.get("/digests/preview")
def digest_preview():  # type: ignore[no-untyped-def]
    """What a subscriber would get now (?email= or ?subscriber_id=), sending nothing.
    ---
    get:
      summary: Preview a reader's digest
      parameters:
        - {name: email, in: query, schema: {type: string, format: email}}
        - {name: subscriber_id, in: query, schema: {type: integer}}
        - {name: format, in: query, schema: {type: string, enum: [html, text, json], default: html}}
      responses:
        200:
          description: The digest as it would be sent now.
          content:
            text/html: {schema: {type: string}}
            text/plain: {schema: {type: string}}
            application/json: {schema: DigestPreview}
        204: {description: Nothing new for this reader (html and text).}
        404: NotFound
        422: InvalidFields
    """
    output = request.args.get("format", "html")
    if output not in ("html", "text", "json"):
        raise InvalidInput({"format": "one of html, text, json"})
    subscriber = find_subscriber(db.session, email=request.args.get("email"),
                                 subscriber_id=request.args.get("subscriber_id", type=int))
    if subscriber is None:
        raise NotFound("no such subscriber")
    rendered = preview_digest(db.session, get_settings(), subscriber)
    if output == "json":
        if rendered is None:
            return jsonify({"empty": True, "subject": None, "html": None, "text": None})
        return jsonify({"empty": False, "subject": rendered.subject, "html": rendered.html,
                        "text": rendered.text})
    if rendered is None:
        return Response(status=204)
    if output == "text":
        return Response(rendered.text, mimetype="text/plain")
    return Response(rendered.html, mimetype="text/html")


@bp.post("/digests/send")
def digest_send():  # type: ignore[no-untyped-def]
    """Plan and send the current period's digests now, whatever the send hour.

    Optional JSON: {"frequency": "daily"|"weekly", "topic": "<slug>"}. A second
    call in the same period sends nothing more.
    ---
    post:
      summary: Send the current period's digests now
      requestBody:
        content: {application/json: {schema: DigestSendRequest}}
      responses:
        202: {description: Queued., content: {application/json: {schema: DigestSendAccepted}}}
        404: NotFound
        413: TooLarge
        422: InvalidFields
        503:
          description: The task queue is down; nothing was sent.
          content: {application/json: {schema: Error}}
    """
    body = _json_body(optional=True)
    body = {} if body is None else body
    if not isinstance(body, dict):
        raise InvalidInput({"body": "must be a JSON object"})
    unknown = set(body) - {"frequency", "topic"}
    if unknown:
        raise InvalidInput({name: "unknown field" for name in sorted(unknown)})
    frequency = body.get("frequency")
    if frequency is not None and frequency not in FREQUENCIES:
        raise InvalidInput({"frequency": f"one of {', '.join(FREQUENCIES)}"})
    topic_id = None
    if body.get("topic") is not None:
        if not isinstance(body["topic"], str):
            raise InvalidInput({"topic": "must be a topic slug"})
        topic_id = get_topic(db.session, body["topic"], include_retired=False).id
    task = current_app.extensions["celery"].tasks[send_digests_now.name]
    try:
        task.apply_async(kwargs={"frequency": frequency, "topic_id": topic_id})
    except Exception:
        # Nothing was planned yet, so nothing is lost: the caller can simply retry.
        current_app.logger.exception("could not queue send_digests_now")
        return jsonify({"error": "The task queue is unavailable; nothing was sent. Try again."}), 503
    return jsonify({"status": "accepted", "frequency": frequency, "topic": body.get("topic")}), 202


# ------------------------------------------------------------------ deliveries


@bp.get("/deliveries/stats")
def deliveries_stats():  # type: ignore[no-untyped-def]
    """Counts by state per stream (?kind=), or per digest run (?by_period=true or ?period=).
    ---
    get:
      summary: Delivery counts
      parameters:
        - {name: kind, in: query, schema: DeliveryKind}
        - {name: by_period, in: query, schema: {type: boolean}, description: 1 and yes work too.}
        - {name: period, in: query, schema: {type: string, example: 2026-W48}, description: One digest run.}
      responses:
        200: {description: The counts., content: {application/json: {schema: DeliveryStats}}}
        422: InvalidFields
    """
    kind = _delivery_kind(request.args.get("kind"))
    by_period = request.args.get("by_period", "").lower() in ("1", "true", "yes")
    streams = delivery_counts(db.session, kind, request.args.get("period"), by_period)
    return jsonify({"streams": [{"kind": s.kind, "period": s.period, "total": s.total,
                                 "counts": s.counts} for s in streams]})


@bp.post("/deliveries/retry")
def deliveries_retry():  # type: ignore[no-untyped-def]
    """Queue failed deliveries again (optional JSON {"kind", "period"}).
    ---
    post:
      summary: Retry failed deliveries
      requestBody:
        content: {application/json: {schema: RetryRequest}}
      responses:
        200: {description: How many were queued again., content: {application/json: {schema: RetryResult}}}
        413: TooLarge
        422: InvalidFields
    """
    body = _json_body(optional=True)
    body = {} if body is None else body
    if not isinstance(body, dict) or set(body) - {"kind", "period"}:
        raise InvalidInput({"body": "a JSON object with optional kind and period"})
    period = body.get("period")
    if period is not None and not isinstance(period, str):
        raise InvalidInput({"period": "a digest period such as daily:2026-11-25"})
    ids = retry_failed(db.session, _delivery_kind(body.get("kind")), period)
    db.session.commit()
    published = publish_deliveries(ids)
    return jsonify({"retried": len(ids), "published": published})


# ------------------------------------------------------------------ helpers


def _delivery_kind(raw: object) -> DeliveryKind | None:
    if raw is None or raw == "":
        return None
    try:
        return DeliveryKind(raw)
    except ValueError:
        raise InvalidInput({"kind": f"one of {', '.join(k.value for k in DeliveryKind)}"}) from None



def _json_body(optional: bool = False) -> Any:
    if not request.get_data(cache=True):
        if optional:
            return None
        raise InvalidInput({"body": "send a JSON body with Content-Type: application/json"})
    if not request.is_json:
        raise InvalidInput({"body": "send a JSON body with Content-Type: application/json"})
    body = request.get_json(silent=True)
    if body is None:
        raise InvalidInput({"body": "is not valid JSON"})
    return body  # NUL characters were refused already (web.input_guard)


def _article_json(article: Article) -> dict[str, Any]:
    return {
        "id": article.id, "external_id": article.external_id, "url": article.url,
        "title": article.title, "summary": article.summary, "author": article.author,
        "image_url": article.image_url, "published_at": article.published_at.isoformat(),
        "tags": [t.name for t in article.tags],
    }


def _topic_json(topic: Topic) -> dict[str, Any]:
    return {
        "slug": topic.slug, "name": topic.name, "description": topic.description,
        "tags": [t.name for t in topic.tags],
        "default_frequency": topic.default_frequency.value if topic.default_frequency else None,
        "feed_urls": topic_feed_urls(db.session, topic),
        "retired_at": topic.retired_at.isoformat() if topic.retired_at else None,
    }
