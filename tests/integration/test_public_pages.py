"""The public HTTP surface through Flask's test client, on both stacks.

No worker runs here: these tests read the rows the requests wrote.
"""

import io
import time
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from flask import session, template_rendered
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import func, select
from werkzeug.test import Client

from service import tokens
from service.extensions import db
from service.models import Delivery, Subscriber, SubscriberStatus, SubscriptionStatus, utcnow
from service.subscriptions import SubscriptionRequest, confirm_subscription, subscribe
from tests.forms import form_of, submit

FORM = {"email": "peggy@example.com", "topics": "marvel-news"}


@pytest.fixture(autouse=True)
def _app_context(app):
    """Assertions read the database through the app's session."""
    with app.app_context():
        yield


def _count(model) -> int:
    db.session.rollback()
    return db.session.scalar(select(func.count()).select_from(model))


def _subscriber(email="peggy@example.com") -> Subscriber:
    db.session.rollback()
    return db.session.scalars(select(Subscriber).where(Subscriber.email == email)).one()


def _pending_subscriber(app, email="peggy@example.com", topics=("marvel-news",)) -> int:
    with app.app_context():
        outcome = subscribe(db.session, SubscriptionRequest(email, list(topics)), "weekly")
        db.session.commit()
        return outcome.subscriber_id


def _confirmed_subscriber(app, email="peggy@example.com") -> int:
    subscriber_id = _pending_subscriber(app, email)
    with app.app_context():
        confirm_subscription(db.session, subscriber_id, 1)
        db.session.commit()
    return subscriber_id


def _token(app, kind, *claims) -> str:
    with app.app_context():
        return getattr(tokens, f"{kind}_token")(*claims)


# ------------------------------------------------------------------ subscribe


def test_the_hosted_form_lists_the_topics_with_labels(client):
    page = client.get("/subscribe")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert '<label for="email">' in html
    assert 'name="topics" value="marvel-news"' in html
    assert "Marvel News" in html
    assert 'name="viewport"' in html


def test_the_form_can_preselect_a_topic(client):
    html = client.get("/subscribe?topic=tv-news").get_data(as_text=True)
    assert 'value="tv-news" checked' in html


def test_a_form_post_stores_a_pending_subscription_and_answers_check_your_inbox(app, client):
    response = client.post("/subscribe", data={**FORM, "name": "Peggy", "frequency": "daily"})
    assert response.status_code == 200
    assert "Check your inbox" in response.get_data(as_text=True)
    with app.app_context():
        subscriber = _subscriber()
        assert subscriber.status == SubscriberStatus.PENDING
        assert subscriber.name == "Peggy"
        assert _count(Delivery) == 1


def test_no_page_sets_a_cookie_and_the_session_cannot_be_written(app, client):
    # CSRF tokens come from the page's URL token; nothing needs a cookie.
    answers = [client.get("/subscribe"), client.post("/subscribe", data={"email": "c@example.com",
                                                                          "topics": "marvel-news"}),
               client.get("/healthz")]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert all("Set-Cookie" not in a.headers for a in answers)
    with app.test_request_context("/"), pytest.raises(RuntimeError, match="no cookie sessions"):
        session["seen"] = True


def test_the_check_inbox_page_is_rendered_once_per_mount_point_with_its_links(stack, app):
    fresh = stack.make_app()  # a new process's worth of cache
    rendered: list[str] = []
    record = lambda sender, template, context, **extra: rendered.append(template.name)  # noqa: E731
    template_rendered.connect(record, fresh)
    try:
        client = fresh.test_client()
        for n, root in enumerate(("", "/news", "", "/news")):
            page = client.post("/subscribe", data={"email": f"m{n}@example.com", "topics": "marvel-news"},
                               base_url=f"http://localhost{root}").get_data(as_text=True)
            assert "Check your inbox" in page
            assert f'href="{root}/static/style.css' in page
    finally:
        template_rendered.disconnect(record, fresh)
    assert rendered.count("check_inbox.html") == 2


def test_json_clients_get_202(client):
    response = client.post("/subscribe", json={"email": "peggy@example.com", "topics": ["marvel-news"]})
    assert response.status_code == 202
    assert response.json["status"] == "accepted"


def test_several_topics_come_as_a_repeated_field(app, client):
    client.post("/subscribe", data={"email": "peggy@example.com", "topics": ["marvel-news", "tv-news"]})
    with app.app_context():
        assert {s.topic.slug for s in _subscriber().subscriptions} == {"marvel-news", "tv-news"}


@pytest.mark.parametrize("as_json", [False, True], ids=["form", "json"])
def test_the_answer_is_the_same_for_new_pending_and_confirmed_addresses(app, client, as_json):
    def post(email):
        if as_json:
            return client.post("/subscribe", json={"email": email, "topics": ["marvel-news"]})
        return client.post("/subscribe", data={"email": email, "topics": "marvel-news"})

    _pending_subscriber(app, "pending@example.com")
    _confirmed_subscriber(app, "confirmed@example.com")
    answers = [post(email) for email in ("new@example.com", "pending@example.com",
                                         "confirmed@example.com")]
    assert len({a.status_code for a in answers}) == 1
    assert len({a.get_data() for a in answers}) == 1
    assert len({tuple(sorted(a.headers.items())) for a in answers}) == 1


def test_next_redirects_back_to_an_allowed_publisher_page(stack, client):
    app = stack.make_app(PUBLISHER_ORIGINS="https://publisher.example.com")
    response = app.test_client().post(
        "/subscribe", data={**FORM, "next": "https://publisher.example.com/article?id=7"}
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "https://publisher.example.com/article?id=7"


def test_next_to_a_foreign_origin_is_ignored(client):
    response = client.post("/subscribe", data={**FORM, "next": "https://evil.example.net/phish"})
    assert response.status_code == 200
    assert "Location" not in response.headers


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"email": "not-an-email", "topics": "marvel-news"}, "email"),
        ({"email": "x" * 300 + "@example.com", "topics": "marvel-news"}, "email"),
        ({"email": "peggy@example.com", "topics": "no-such-topic"}, "topics"),
        ({"email": "peggy@example.com"}, "topics"),
        ({"email": "peggy@example.com", "topics": "marvel-news", "frequency": "hourly"}, "frequency"),
    ],
)
def test_a_field_error_is_a_422_page_that_names_the_field_and_keeps_the_input(client, data, field):
    response = client.post("/subscribe", data={**data, "name": "Peggy <Carter>"})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert f"<strong>{field}</strong>" in html
    assert 'value="Peggy &lt;Carter&gt;"' in html  # kept, and escaped
    assert _count(Subscriber) == 0


def test_a_field_error_in_json_names_the_field(client):
    response = client.post("/subscribe", json={"email": "bad", "topics": ["marvel-news"]})
    assert response.status_code == 422
    assert "email" in response.json["errors"]


@pytest.mark.parametrize(
    ("kwargs", "status", "field"),
    [
        ({"data": {**FORM, "admin": "1"}}, 422, "admin"),
        ({"json": {**FORM, "is_admin": True}}, 422, "is_admin"),
        ({"json": ["peggy@example.com"]}, 422, "body"),
        ({"json": {"email": ["a@example.com", "b@example.com"], "topics": "marvel-news"}}, 422, "email"),
        ({"json": {"email": {"x": 1}, "topics": "marvel-news"}}, 422, "email"),
        ({"data": "email=a@example.com", "content_type": "text/plain"}, 415, None),
        ({"data": "{not json", "content_type": "application/json"}, 422, "body"),
        # JSON's \\ud800 escape: a lone surrogate, which no text column can store.
        ({"json": {**FORM, "name": "Peggy \ud800"}}, 422, "name"),
        ({"json": {**FORM, "topics": ["marvel-news", "\udfff"]}}, 422, "topics"),
        # Counted against the rate limits (a Redis key) before the fields are read.
        ({"json": {**FORM, "email": "peggy\ud800@example.com"}}, 422, "email"),
    ],
    ids=["unknown-form-field", "unknown-json-field", "json-array", "repeated-scalar", "wrong-type",
         "wrong-content-type", "broken-json", "lone-surrogate-name", "lone-surrogate-topic",
         "lone-surrogate-email"],
)
def test_malformed_bodies_get_a_clear_4xx(client, kwargs, status, field):
    response = client.post("/subscribe", headers={"Accept": "application/json"}, **kwargs)
    assert response.status_code == status
    assert response.json["error"]
    if field:
        assert field in response.json["errors"]
    assert _count(Subscriber) == 0


def test_a_huge_body_is_refused_with_413(client):
    response = client.post("/subscribe", data={**FORM, "name": "x" * 200_000})
    assert response.status_code == 413
    assert "too large" in response.get_data(as_text=True)
    assert _count(Subscriber) == 0


def test_a_huge_json_body_is_refused_with_413(client):
    response = client.post("/subscribe", json={**FORM, "topics": ["marvel-news"] * 50_000})
    assert response.status_code == 413


def _post_without_length(app, body: bytes, *, chunked: bool):
    """As granian passes a body its sender did not size: chunked HTTP/1.1 (Transfer-Encoding:
    chunked), or HTTP/2 with no content-length (no header at all); no CONTENT_LENGTH either
    way, and a stream that says where it ends."""
    def as_the_server_passes_it(environ, start_response):
        del environ["CONTENT_LENGTH"]  # the test client always sets one
        if not chunked:
            del environ["HTTP_TRANSFER_ENCODING"]
        environ["wsgi.input_terminated"] = True
        return app(environ, start_response)

    client = Client(as_the_server_passes_it, app.response_class)
    return client.post("/subscribe", input_stream=io.BytesIO(body),
                       content_type="application/x-www-form-urlencoded",
                       headers={"Transfer-Encoding": "chunked"})


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "http2-style"])
def test_a_form_without_a_length_is_read_like_a_sized_one(app, chunked):
    response = _post_without_length(app, urlencode(FORM).encode(), chunked=chunked)
    assert response.status_code == 200
    assert _count(Subscriber) == 1


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "http2-style"])
@pytest.mark.parametrize("name_bytes", [200_000, 3 * 1024 * 1024],
                         ids=["over-the-form-limit", "over-the-app-limit"])
def test_a_huge_body_without_a_length_is_refused_with_413(app, name_bytes, chunked):
    # Without a declared length Werkzeug would read up to the app's limit and drop the rest.
    response = _post_without_length(app, urlencode({**FORM, "name": "x" * name_bytes}).encode(),
                                    chunked=chunked)
    assert response.status_code == 413
    assert "too large" in response.get_data(as_text=True)
    assert _count(Subscriber) == 0


def test_repeated_submits_keep_one_subscriber_and_one_queued_email(app, client):
    for _ in range(5):
        assert client.post("/subscribe", data=FORM).status_code == 200
    with app.app_context():
        assert _count(Subscriber) == 1
        assert _count(Delivery) == 1


# ------------------------------------------------------------------ confirm


def test_get_on_a_confirm_link_shows_a_button_and_changes_nothing(app, client):
    subscriber_id = _pending_subscriber(app)
    response = client.get(f"/confirm/{_token(app, 'confirm', subscriber_id, 1)}")
    assert response.status_code == 200
    assert "<button" in response.get_data(as_text=True)
    with app.app_context():
        assert _subscriber().status == SubscriberStatus.PENDING


def test_posting_the_confirm_link_confirms_and_twice_is_harmless(app, client):
    subscriber_id = _pending_subscriber(app)
    url = f"/confirm/{_token(app, 'confirm', subscriber_id, 1)}"
    first, second = submit(client, url), submit(client, url)
    assert first.status_code == second.status_code == 200
    assert "subscribed" in second.get_data(as_text=True)
    with app.app_context():
        subscriber = _subscriber()
        assert subscriber.status == SubscriberStatus.CONFIRMED
        assert [s.status for s in subscriber.subscriptions] == [SubscriptionStatus.CONFIRMED]


def test_confirm_on_get_can_be_switched_on(stack, app):
    subscriber_id = _pending_subscriber(app)
    eager = stack.make_app(CONFIRM_ON_GET="true")
    assert eager.test_client().get(f"/confirm/{_token(app, 'confirm', subscriber_id, 1)}").status_code == 200
    with app.app_context():
        assert _subscriber().status == SubscriberStatus.CONFIRMED


@pytest.mark.parametrize("method", ["get", "post"])
def test_a_tampered_confirm_link_gets_a_clear_400_page(app, client, method):
    token = _token(app, "confirm", _pending_subscriber(app), 1)
    response = getattr(client, method)(f"/confirm/{token[:-6]}AAAAAA")
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "not valid" in html
    assert 'href="/subscribe"' in html
    with app.app_context():
        assert _subscriber().status == SubscriberStatus.PENDING


def test_an_unsubscribe_token_does_not_confirm(app, client):
    subscriber_id = _pending_subscriber(app)
    response = client.post(f"/confirm/{_token(app, 'unsubscribe', subscriber_id)}")
    assert response.status_code == 400
    with app.app_context():
        assert _subscriber().status == SubscriberStatus.PENDING


def _expired_confirm_token(app, subscriber_id: int, epoch: int) -> str:
    class LastMonth(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 30 * 86400

    with app.app_context():
        key = app.extensions["token_signer"].secret_key
    serializer = URLSafeTimedSerializer(key, salt="newsletter.confirm", signer=LastMonth)
    return serializer.dumps({"sid": subscriber_id, "e": epoch})


def test_an_expired_link_offers_a_new_email_which_queues_one(app, client):
    subscriber_id = _pending_subscriber(app)
    with app.app_context():
        # The first email went out a month ago, as the link's age says.
        db.session.execute(db.update(Delivery).values(state="sent"))
        db.session.execute(db.update(Subscriber).values(
            confirmation_requested_at=utcnow() - timedelta(days=30)))
        db.session.commit()
    token = _expired_confirm_token(app, subscriber_id, 1)
    response = client.post(f"/confirm/{token}")
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "expired" in html
    assert 'action="/confirm/resend"' in html
    action, fields = form_of(html)
    assert (action, fields["token"]) == ("/confirm/resend", token)
    resend = client.post(action, data=fields)
    assert resend.status_code == 200
    with app.app_context():
        assert _count(Delivery) == 2
        assert _subscriber().status == SubscriberStatus.PENDING


def test_a_stale_confirm_link_after_unsubscribing_gets_400(app, client):
    subscriber_id = _pending_subscriber(app)
    confirm_url = f"/confirm/{_token(app, 'confirm', subscriber_id, 1)}"
    client.post(f"/unsubscribe/{_token(app, 'unsubscribe', subscriber_id)}")
    response = submit(client, confirm_url)
    assert response.status_code == 400
    with app.app_context():
        assert _subscriber().status == SubscriberStatus.UNSUBSCRIBED


# ------------------------------------------------------------------ unsubscribe


def test_get_on_an_unsubscribe_link_shows_a_page_and_changes_nothing(app, client):
    subscriber_id = _confirmed_subscriber(app)
    response = client.get(f"/unsubscribe/{_token(app, 'unsubscribe', subscriber_id)}")
    assert response.status_code == 200
    assert "<button" in response.get_data(as_text=True)
    with app.app_context():
        assert _subscriber().status == SubscriberStatus.CONFIRMED


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_one_click_unsubscribe_answers_2xx_without_redirect(app, client, encoding):
    subscriber_id = _confirmed_subscriber(app)
    url = f"/unsubscribe/{_token(app, 'unsubscribe', subscriber_id)}"
    if encoding == "urlencoded":
        response = client.post(url, data="List-Unsubscribe=One-Click",
                               content_type="application/x-www-form-urlencoded")
    else:
        response = client.post(url, data={"List-Unsubscribe": "One-Click"},
                               content_type="multipart/form-data")
    assert 200 <= response.status_code < 300
    assert "Location" not in response.headers
    with app.app_context():
        subscriber = _subscriber()
        assert subscriber.status == SubscriberStatus.UNSUBSCRIBED
        assert {s.status for s in subscriber.subscriptions} == {SubscriptionStatus.UNSUBSCRIBED}


def test_unsubscribing_twice_is_harmless(app, client):
    url = f"/unsubscribe/{_token(app, 'unsubscribe', _confirmed_subscriber(app))}"
    assert client.post(url).status_code == 200
    assert client.post(url).status_code == 200


def test_an_unsubscribe_link_keeps_working_after_a_resubscribe(app, client):
    subscriber_id = _confirmed_subscriber(app)
    url = f"/unsubscribe/{_token(app, 'unsubscribe', subscriber_id)}"
    client.post(url)
    client.post("/subscribe", data=FORM)
    assert client.post(url).status_code == 200
    with app.app_context():
        assert _subscriber().status == SubscriberStatus.UNSUBSCRIBED


def test_a_tampered_unsubscribe_link_gets_400(app, client):
    token = _token(app, "unsubscribe", _confirmed_subscriber(app))
    assert client.post(f"/unsubscribe/{token}x").status_code == 400
    assert client.get(f"/unsubscribe/{token}x").status_code == 400


# ------------------------------------------------------------------ preferences


def test_the_preferences_page_shows_the_current_choices(app, client):
    subscriber_id = _confirmed_subscriber(app)
    html = client.get(f"/preferences/{_token(app, 'preferences', subscriber_id)}").get_data(as_text=True)
    assert "peggy@example.com" in html
    assert 'value="marvel-news" checked' in html
    assert 'value="tv-news" checked' not in html


def test_preferences_change_topics_frequency_and_name(app, client):
    subscriber_id = _confirmed_subscriber(app)
    url = f"/preferences/{_token(app, 'preferences', subscriber_id)}"
    response = submit(client, url, data={"topics": ["tv-news", "movie-news"], "frequency": "daily",
                                      "name": "Agent Carter", "action": "save"})
    assert response.status_code == 200
    assert "saved" in response.get_data(as_text=True)
    with app.app_context():
        subscriber = _subscriber()
        active = {s.topic.slug for s in subscriber.subscriptions if s.status == SubscriptionStatus.CONFIRMED}
        assert active == {"tv-news", "movie-news"}
        assert (subscriber.frequency.value, subscriber.name) == ("daily", "Agent Carter")


def test_leaving_everything_from_the_preferences_page(app, client):
    subscriber_id = _confirmed_subscriber(app)
    url = f"/preferences/{_token(app, 'preferences', subscriber_id)}"
    assert submit(client, url, data={"action": "unsubscribe"}).status_code == 200
    with app.app_context():
        assert _subscriber().status == SubscriberStatus.UNSUBSCRIBED


def test_bad_preferences_get_a_422_that_names_the_field(app, client):
    url = f"/preferences/{_token(app, 'preferences', _confirmed_subscriber(app))}"
    response = submit(client, url, data={"topics": "no-such-topic", "frequency": "weekly"})
    assert response.status_code == 422
    assert "Unknown topic" in response.get_data(as_text=True)
    response = submit(client, url, data={"topics": "tv-news", "colour": "red"})
    assert response.status_code == 422


def test_a_confirm_token_does_not_open_the_preferences(app, client):
    token = _token(app, "confirm", _confirmed_subscriber(app), 1)
    assert client.get(f"/preferences/{token}").status_code == 400


# ------------------------------------------------------------------ health


def test_healthz_and_readyz_answer_when_everything_is_up(client):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json["checks"] == {"database": "ok", "broker": "ok"}


def test_readyz_reports_a_broker_that_is_down(stack, app):
    broken = stack.make_app(CELERY_BROKER_URL="redis://127.0.0.1:1/0")
    ready = broken.test_client().get("/readyz")
    assert ready.status_code == 503
    assert ready.json["checks"] == {"database": "ok", "broker": "failing"}


def test_unknown_pages_and_methods_get_clear_errors(client):
    assert client.get("/nope").status_code == 404
    assert client.delete("/subscribe").status_code == 405
    assert client.get("/nope", headers={"Accept": "application/json"}).json["error"]


def test_a_reader_can_give_a_time_zone_and_change_it_in_preferences(app, client):
    client.post("/subscribe", data={**FORM, "timezone": "Pacific/Auckland"})
    assert _subscriber().timezone == "Pacific/Auckland"
    url = f"/preferences/{_token(app, 'preferences', _subscriber().id)}"
    submit(client, url, data={"topics": "marvel-news", "frequency": "weekly", "timezone": "Europe/Berlin"})
    assert _subscriber().timezone == "Europe/Berlin"


def test_an_unknown_time_zone_is_a_field_error(client):
    response = client.post("/subscribe", data={**FORM, "timezone": "Mars/Olympus_Mons"})
    assert response.status_code == 422
    assert "<strong>timezone</strong>" in response.get_data(as_text=True)
    assert _count(Subscriber) == 0


def test_the_hosted_form_fills_the_time_zone_from_the_browser(client):
    html = client.get("/subscribe").get_data(as_text=True)
    assert 'name="timezone"' in html
    assert "timezone.js" in html
    assert "resolvedOptions().timeZone" in client.get("/static/timezone.js").get_data(as_text=True)


def test_our_forms_need_their_csrf_token_but_one_click_unsubscribe_does_not(app, client):
    subscriber_id = _confirmed_subscriber(app)
    preferences = f"/preferences/{_token(app, 'preferences', subscriber_id)}"
    missing = client.post(preferences, data={"topics": "tv-news", "frequency": "daily"})
    wrong = client.post(preferences, data={"topics": "tv-news", "frequency": "daily", "csrf_token": "x" * 32})
    assert missing.status_code == wrong.status_code == 400
    assert "reload" in missing.get_data(as_text=True)
    assert _subscriber().frequency.value == "weekly"
    other_page = submit_form_of(client, f"/preferences/{_token(app, 'preferences', subscriber_id + 1)}")
    assert other_page is None  # a token from another page cannot be had for this one
    assert submit(client, preferences, data={"topics": "tv-news", "frequency": "daily"}).status_code == 200
    unsubscribe_url = f"/unsubscribe/{_token(app, 'unsubscribe', subscriber_id)}"
    assert client.post(unsubscribe_url, data={"List-Unsubscribe": "One-Click"}).status_code == 200


def submit_form_of(client, path):
    page = client.get(path)
    return form_of(page.get_data(as_text=True)) if page.status_code == 200 else None
