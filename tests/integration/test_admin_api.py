"""The admin API: authentication, article ingest, topics and the digest preview."""

import pytest
from sqlalchemy import func, select

from service.extensions import db
from service.models import ApiKey, Article, Subscriber, Topic, utcnow
from service.subscriptions import SubscriptionRequest, confirm_subscription, subscribe

TOKEN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ARTICLE = {
    "title": "See Tom Cruise and Marvel Star On Set For Mission Impossible 7",
    "url": "https://www.example.com/movies/mi7-set",
    "summary": "Hayley Atwell gave fans a brief look behind the scenes.",
    "author": "Tyler Pisapia",
    "image_url": "https://www.example.com/images/mi7.jpg",
    "tags": ["Tom Cruise", "Hayley Atwell", "Mission Impossible"],
    "published_at": "2026-11-24T10:00:00Z",
}


@pytest.fixture
def api(stack, app):
    """A test client of an app with the admin API open, on the stack's database."""
    admin_app = stack.make_app(ADMIN_API_TOKEN=TOKEN)
    with admin_app.app_context():
        yield admin_app.test_client()


def _count(model) -> int:
    db.session.rollback()
    return db.session.scalar(select(func.count()).select_from(model))


ENDPOINTS = [
    ("get", "/api/v1/articles"),
    ("post", "/api/v1/articles"),
    ("get", "/api/v1/topics"),
    ("post", "/api/v1/topics"),
    ("get", "/api/v1/topics/marvel-news"),
    ("patch", "/api/v1/topics/marvel-news"),
    ("delete", "/api/v1/topics/marvel-news"),
    ("get", "/api/v1/digests/preview?email=peggy@example.com"),
    ("post", "/api/v1/digests/send"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN},
     {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}],
    ids=["none", "wrong", "no-scheme", "basic", "longer"],
)
def test_every_admin_endpoint_refuses_a_missing_or_wrong_token(api, method, path, headers):
    response = getattr(api, method)(path, headers=headers, json={"slug": "x", "name": "X"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert set(response.json) == {"error"}
    assert db.session.scalar(select(Topic).where(Topic.slug == "marvel-news")).retired_at is None


def test_the_admin_api_is_closed_without_a_configured_token(client):
    response = client.get("/api/v1/topics", headers={"Authorization": "Bearer "})
    assert response.status_code == 401
    assert "ADMIN_API_TOKEN" in response.json["error"]


# ------------------------------------------------------------------ articles


def test_an_article_is_ingested_with_normalised_tags(api):
    response = api.post("/api/v1/articles", json=ARTICLE, headers=AUTH)
    assert response.status_code == 201
    assert response.json["created"] is True
    [stored] = api.get("/api/v1/articles", headers=AUTH).json["articles"]
    assert stored["tags"] == ["hayley atwell", "mission impossible", "tom cruise"]
    assert stored["published_at"].startswith("2026-11-24T10:00:00")


def test_ingesting_the_same_article_twice_updates_it(api):
    first = api.post("/api/v1/articles", json={**ARTICLE, "external_id": "post-7"}, headers=AUTH)
    again = api.post("/api/v1/articles", headers=AUTH, json={
        **ARTICLE, "external_id": "post-7", "title": "Updated title",
        "url": "https://www.example.com/movies/mi7-set-renamed"})
    same_url = api.post("/api/v1/articles", headers=AUTH, json={
        **ARTICLE, "url": "HTTPS://WWW.EXAMPLE.COM/movies/mi7-set-renamed?utm_source=feed#top"})
    assert first.status_code == 201
    assert again.status_code == same_url.status_code == 200
    assert first.json["id"] == again.json["id"] == same_url.json["id"]
    assert _count(Article) == 1
    assert db.session.get(Article, first.json["id"]).title == ARTICLE["title"]


def test_a_batch_is_ingested_in_one_request(api):
    batch = [{**ARTICLE, "url": f"https://www.example.com/a/{n}", "title": f"Story {n}"} for n in range(50)]
    response = api.post("/api/v1/articles", json={"articles": batch}, headers=AUTH)
    assert response.status_code == 201
    assert len(response.json["articles"]) == 50
    assert _count(Article) == 50
    as_list = api.post("/api/v1/articles", json=batch, headers=AUTH)
    assert as_list.status_code == 200
    assert _count(Article) == 50


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"title": None}, "title"),
        ({"url": "not-a-url"}, "url"),
        ({"published_at": "last tuesday"}, "published_at"),
        ({"tags": "marvel"}, "tags"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_article_gets_422_naming_the_field(api, change, field):
    body = {k: v for k, v in {**ARTICLE, **change}.items() if v is not None}
    response = api.post("/api/v1/articles", json=body, headers=AUTH)
    assert response.status_code == 422
    assert field in response.json["errors"]
    assert _count(Article) == 0


def test_one_bad_article_in_a_batch_stores_nothing_and_names_its_index(api):
    batch = [ARTICLE, {**ARTICLE, "url": "https://www.example.com/2", "published_at": "soon"}]
    response = api.post("/api/v1/articles", json={"articles": batch}, headers=AUTH)
    assert response.status_code == 422
    assert list(response.json["errors"]) == ["articles[1].published_at"]
    assert _count(Article) == 0


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"data": "{nope", "content_type": "application/json"}, 422),
        ({"data": "title=x", "content_type": "application/x-www-form-urlencoded"}, 422),
        ({"json": []}, 422),
        ({"json": "a string"}, 422),
        ({"json": {"articles": [ARTICLE] * 1001}}, 422),
    ],
    ids=["broken-json", "form", "empty-list", "string", "too-many"],
)
def test_malformed_ingest_bodies_get_a_clear_4xx(api, kwargs, status):
    response = api.post("/api/v1/articles", headers=AUTH, **kwargs)
    assert response.status_code == status
    assert response.json["error"]


def test_a_10_mb_body_is_refused_with_413(api):
    huge = {**ARTICLE, "summary": "x" * (10 * 1024 * 1024)}
    response = api.post("/api/v1/articles", json=huge, headers=AUTH)
    assert response.status_code == 413
    assert response.json["error"]
    assert _count(Article) == 0


# ------------------------------------------------------------------ topics


def test_topics_are_created_read_changed_and_retired(api):
    created = api.post("/api/v1/topics", headers=AUTH, json={
        "slug": "dc-news", "name": "DC News", "description": "Gotham and beyond.",
        "tags": ["Batman", "batman", "Superman"], "default_frequency": "daily"})
    assert created.status_code == 201
    assert created.json["tags"] == ["batman", "superman"]
    assert api.get("/api/v1/topics/dc-news", headers=AUTH).json["default_frequency"] == "daily"

    changed = api.patch("/api/v1/topics/dc-news", headers=AUTH, json={"tags": ["Wonder Woman"]})
    assert changed.json["tags"] == ["wonder woman"]
    assert changed.json["name"] == "DC News"

    retired = api.delete("/api/v1/topics/dc-news", headers=AUTH)
    assert retired.status_code == 200
    assert retired.json["retired_at"]
    slugs = [t["slug"] for t in api.get("/api/v1/topics", headers=AUTH).json["topics"]]
    assert "dc-news" not in slugs
    everything = api.get("/api/v1/topics?include_retired=true", headers=AUTH).json["topics"]
    assert "dc-news" in [t["slug"] for t in everything]


def test_retiring_a_topic_keeps_its_subscribers(api):
    outcome = subscribe(db.session, SubscriptionRequest("peggy@example.com", ["tv-news"]), "weekly")
    db.session.commit()
    api.delete("/api/v1/topics/tv-news", headers=AUTH)
    subscriber = db.session.get(Subscriber, outcome.subscriber_id)
    db.session.refresh(subscriber)
    assert [s.topic.slug for s in subscriber.subscriptions] == ["tv-news"]
    assert "tv-news" not in api.get("/subscribe").get_data(as_text=True)


def test_a_topic_feed_url_adds_the_topic_tag(api):
    response = api.post("/api/v1/topics", headers=AUTH, json={
        "slug": "star-wars", "name": "Star Wars", "tags": ["jedi"],
        "feed_url": "https://www.example.com/star-wars/feed.xml"})
    assert response.status_code == 201
    assert response.json["feed_urls"] == ["https://www.example.com/star-wars/feed.xml"]
    assert response.json["tags"] == ["jedi", "star-wars"]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("post", "/api/v1/topics", {"slug": "Bad Slug!", "name": "x"}, "slug"),
        ("post", "/api/v1/topics", {"slug": "no-name"}, "name"),
        ("post", "/api/v1/topics", {"slug": "marvel-news", "name": "Again"}, "slug"),
        ("post", "/api/v1/topics", {"slug": "x", "name": "X", "tags": "one"}, "tags"),
        ("post", "/api/v1/topics", {"slug": "x", "name": "X", "default_frequency": "hourly"},
         "default_frequency"),
        ("post", "/api/v1/topics", {"slug": "x", "name": "X", "secret": 1}, "secret"),
        ("patch", "/api/v1/topics/marvel-news", {"slug": "renamed"}, "slug"),
        ("patch", "/api/v1/topics/marvel-news", {"feed_url": "ftp://x/feed"}, "feed_url"),
    ],
)
def test_bad_topic_fields_get_422_naming_the_field(api, method, path, body, field):
    response = getattr(api, method)(path, headers=AUTH, json=body)
    assert response.status_code == 422
    assert field in response.json["errors"]


def test_an_unknown_topic_is_404(api):
    assert api.get("/api/v1/topics/nope", headers=AUTH).status_code == 404
    assert api.patch("/api/v1/topics/nope", headers=AUTH, json={"name": "x"}).status_code == 404
    assert api.delete("/api/v1/topics/nope", headers=AUTH).status_code == 404


# ------------------------------------------------------------------ digests


def _confirmed_reader(email="peggy@example.com", topics=("marvel-news",)) -> Subscriber:
    outcome = subscribe(db.session, SubscriptionRequest(email, list(topics)), "weekly")
    subscriber = db.session.get(Subscriber, outcome.subscriber_id)
    confirm_subscription(db.session, subscriber.id, subscriber.token_epoch)
    db.session.commit()
    return subscriber


def test_the_preview_renders_html_text_or_json_and_sends_nothing(api):
    _confirmed_reader()
    query = "/api/v1/digests/preview?email=peggy@example.com"
    assert api.get(query, headers=AUTH).status_code == 204  # nothing new yet
    api.post("/api/v1/articles", headers=AUTH, json={**ARTICLE, "published_at": utcnow().isoformat()})
    html = api.get(query, headers=AUTH)
    assert html.status_code == 200
    assert html.mimetype == "text/html"
    assert "Mission Impossible 7" in html.get_data(as_text=True)
    text = api.get(query + "&format=text", headers=AUTH)
    assert text.mimetype == "text/plain"
    assert "https://www.example.com/movies/mi7-set" in text.get_data(as_text=True)
    as_json = api.get(query + "&format=json", headers=AUTH).json
    assert as_json["empty"] is False
    assert "Marvel News" in as_json["subject"]


def test_the_preview_of_an_unknown_subscriber_is_404(api):
    assert api.get("/api/v1/digests/preview?email=nobody@example.com", headers=AUTH).status_code == 404
    assert api.get("/api/v1/digests/preview?subscriber_id=999", headers=AUTH).status_code == 404
    assert api.get("/api/v1/digests/preview?format=pdf&subscriber_id=1", headers=AUTH).status_code == 422


@pytest.mark.parametrize(
    ("body", "status"),
    [({"frequency": "hourly"}, 422), ({"topic": "nope"}, 404), ({"when": "now"}, 422), ([], 422)],
)
def test_send_now_refuses_bad_limits(api, body, status):
    assert api.post("/api/v1/digests/send", headers=AUTH, json=body).status_code == status


def test_send_now_answers_503_when_the_broker_is_down(stack, app):
    broken = stack.make_app(ADMIN_API_TOKEN=TOKEN, CELERY_BROKER_URL="redis://127.0.0.1:1/0")
    response = broken.test_client().post("/api/v1/digests/send", headers=AUTH)
    assert response.status_code == 503
    assert "nothing was sent" in response.json["error"]


def test_an_article_cannot_move_onto_another_articles_url(api):
    first = {**ARTICLE, "external_id": "a", "url": "https://www.example.com/a"}
    second = {**ARTICLE, "external_id": "b", "url": "https://www.example.com/b"}
    api.post("/api/v1/articles", json={"articles": [first, second]}, headers=AUTH)
    response = api.post("/api/v1/articles", json={**first, "url": second["url"]}, headers=AUTH)
    assert response.status_code == 422
    assert "url" in response.json["errors"]
    urls = sorted(a["url"] for a in api.get("/api/v1/articles", headers=AUTH).json["articles"])
    assert urls == ["https://www.example.com/a", "https://www.example.com/b"]


def test_named_api_keys_open_the_api_until_revoked(stack, app):
    plain = stack.make_app()  # no ADMIN_API_TOKEN at all
    runner = plain.test_cli_runner()
    key = runner.invoke(args=["api-keys", "create", "cms"]).output.strip()
    assert key.startswith("nlk_")
    client = plain.test_client()
    with plain.app_context():
        assert client.get("/api/v1/topics", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert client.get("/api/v1/topics", headers={"Authorization": f"Bearer {key}x"}).status_code == 401
        stored = db.session.execute(select(ApiKey)).scalar_one()
        assert stored.key_hash != key and key not in stored.key_hash
        assert stored.last_used_at is not None
    assert "cms\tactive" in runner.invoke(args=["api-keys", "list"]).output
    assert runner.invoke(args=["api-keys", "revoke", "cms"]).exit_code == 0
    with plain.app_context():
        assert client.get("/api/v1/topics", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert "exists" in runner.invoke(args=["api-keys", "create", "cms"]).output


def test_every_admin_route_refuses_requests_without_a_token(api):
    """Walks the app's URL map, so a new admin endpoint cannot forget its check."""
    app = api.application
    # The API's own description is public on purpose: it describes, it holds no data.
    admin_rules = [rule for rule in app.url_map.iter_rules()
                   if rule.rule.startswith("/api/v1") and not rule.endpoint.startswith("openapi.")]
    assert len(admin_rules) >= 10
    for rule in admin_rules:
        path = rule.rule.replace("<slug>", "marvel-news").replace("<int:subscriber_id>", "1")
        path = path.replace("<subscriber_id>", "1").replace("<path:", "<").replace("<", "").replace(">", "")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                response = api.open(path, method=method, headers=headers, json={})
                assert response.status_code == 401, f"{method} {rule.rule} answered {response.status_code}"
                assert set(response.json) == {"error"}


@pytest.mark.parametrize("title", ["Atwell\x00", "Atwell \ud83e"], ids=["nul", "lone-surrogate"])
def test_characters_no_text_column_takes_are_refused_not_a_500(api, title):
    response = api.post("/api/v1/articles", json={**ARTICLE, "title": title}, headers=AUTH)
    assert response.status_code == 422
    assert "body" in response.json["errors"]
