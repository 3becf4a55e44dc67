"""A reader's data on both stacks: the download (GDPR articles 15 and 20), the erasure
(article 17) from the preferences page, the admin API and the CLI.

No worker runs here: mail goes through the OutboxTransport in-process, as the worker
would send it, so every row a real subscription leaves behind is there to be erased.
"""

import json
from datetime import datetime

import pytest
from sqlalchemy import func, select

from service import tokens
from service.articles import ArticleInput, ingest_articles
from service.bounce_reports import parse_report
from service.bounces import record_bounce
from service.config import get_settings
from service.deliveries import deliver
from service.digests import plan_digests
from service.extensions import db
from service.mail.transport import OutboxTransport
from service.models import (
    Bounce,
    CapturedEmail,
    ConsentRecord,
    Delivery,
    DeliveryKind,
    DeliveryState,
    Subscriber,
    Suppression,
    SuppressionReason,
    utcnow,
)
from service.privacy import erase_subscriber, export_subscriber
from service.suppressions import address_hash
from tests.bounce_messages import dsn, recipient
from tests.conftest import another_app, stop_shared_worker
from tests.forms import form_of, submit

pytestmark = pytest.mark.integration

TOKEN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PUBLISHER = "https://www.example.com"

PEGGY = "peggy@example.com"
PEGGY_NAME = "Peggy Carter"
PEGGY_PAGE = "https://www.example.com/movies/mi7-set"
PEGGY_BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0"
PEGGY_IP = "203.0.113.7"

HOWARD = "howard@example.com"
HOWARD_PAGE = "https://www.example.com/tv/agent-carter"
HOWARD_BROWSER = "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 Safari/605.1.15"
HOWARD_IP = "198.51.100.23"


@pytest.fixture
def privacy_app(stack, app):
    """An app with the privacy pages, API and commands.

    These tests send mail themselves (to the outbox, via ``_send_queued``), so the
    stack's shared worker, if an earlier test started it, must not take the tasks.
    """
    stop_shared_worker(stack)
    with another_app(stack, ADMIN_API_TOKEN=TOKEN, PUBLISHER_ORIGINS=PUBLISHER) as privacy_app:
        yield privacy_app


@pytest.fixture
def reader(privacy_app):
    return privacy_app.test_client()


# ------------------------------------------------------------------ helpers


def _subscribe_from_article(reader, email, name, page, browser, ip) -> int:
    """Post the form as a browser on the publisher's article page would."""
    response = reader.post("/subscribe", data={"email": email, "name": name, "topics": "marvel-news"},
                           headers={"Referer": page, "User-Agent": browser},
                           environ_base={"REMOTE_ADDR": ip})
    assert response.status_code == 200
    db.session.rollback()
    return db.session.scalars(select(Subscriber.id).where(Subscriber.email == email)).one()


def _send_queued() -> None:
    """Send every queued delivery to the outbox, as the worker would."""
    db.session.rollback()
    ids = db.session.scalars(select(Delivery.id).where(Delivery.state == DeliveryState.QUEUED)).all()
    for delivery_id in ids:
        deliver(db.session, delivery_id, OutboxTransport(db.session), get_settings())


def _confirm_from_the_email(reader, subscriber_id) -> None:
    _send_queued()
    subscriber = db.session.get(Subscriber, subscriber_id)
    token = tokens.confirm_token(subscriber_id, subscriber.token_epoch)
    assert submit(reader, f"/confirm/{token}").status_code == 200


def _peggy(reader) -> int:
    subscriber_id = _subscribe_from_article(reader, PEGGY, PEGGY_NAME, PEGGY_PAGE, PEGGY_BROWSER, PEGGY_IP)
    _confirm_from_the_email(reader, subscriber_id)
    return subscriber_id


def _howard(reader) -> int:
    subscriber_id = _subscribe_from_article(reader, HOWARD, "Howard Stark", HOWARD_PAGE, HOWARD_BROWSER,
                                            HOWARD_IP)
    _confirm_from_the_email(reader, subscriber_id)
    return subscriber_id


def _digest_sent_to_everyone() -> None:
    """A new article, planned into this period's digests and sent."""
    ingest_articles(db.session, [ArticleInput(
        title="See Tom Cruise and Marvel Star On Set For Mission Impossible 7",
        url="https://www.example.com/movies/mi7-set-photos", published_at=utcnow(), tags=["Marvel"],
        summary="Hayley Atwell gave fans a brief look behind the scenes.")])
    db.session.commit()
    batches = list(plan_digests(db.session, get_settings(), force=True))
    assert any(batch.delivery_ids for batch in batches)
    _send_queued()


def _soft_bounce_of_the_digest(email) -> Bounce:
    """The receiving server bounced the digest back (mailbox full), naming the reader."""
    delivery = db.session.scalars(select(Delivery).join(Subscriber).where(
        Subscriber.email == email, Delivery.kind == DeliveryKind.DIGEST)).one()
    sent = db.session.scalars(select(CapturedEmail)
                              .where(CapturedEmail.message_id == delivery.message_id)).one()
    raw = dsn(recipient(email, "4.2.2", diagnostic=f"smtp; 452 4.2.2 <{email}>: mailbox full"),
              to=sent.mail_from, original=sent.raw)
    [report] = parse_report(raw)
    bounce = record_bounce(db.session, get_settings(), report)
    db.session.commit()
    assert bounce is not None and bounce.subscriber_id == delivery.subscriber_id
    return bounce


def _preferences_path(subscriber_id) -> str:
    return f"/preferences/{tokens.preferences_token(subscriber_id)}"


def _rows_naming(*needles: str) -> list[tuple[str, dict]]:
    """Every row, in every table, whose text or bytes contain one of these (case-insensitively)."""
    db.session.rollback()
    found = []
    for table in db.metadata.sorted_tables:
        for row in db.session.execute(select(table)).mappings():
            for value in row.values():
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                if isinstance(text, str) and any(n.lower() in text.lower() for n in needles):
                    found.append((table.name, dict(row)))
                    break
    return found


def _rows_linked_to(subscriber_id: int) -> list[tuple[str, dict]]:
    """Every row with a subscriber_id column pointing at this subscriber."""
    db.session.rollback()
    found = []
    for table in db.metadata.sorted_tables:
        if "subscriber_id" in table.c:
            rows = db.session.execute(select(table).where(table.c.subscriber_id == subscriber_id)).mappings()
            found += [(table.name, dict(row)) for row in rows]
    return found


def _count(model, *where) -> int:
    db.session.rollback()
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


# ------------------------------------------------------------------ the download


def test_the_download_holds_the_consent_record_of_a_form_subscription(reader):
    subscriber_id = _peggy(reader)
    response = reader.get(f"{_preferences_path(subscriber_id)}/data")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["Content-Disposition"] == 'attachment; filename="my-newsletter-data.json"'
    data = json.loads(response.get_data(as_text=True))

    assert data["subscriber"]["email"] == PEGGY
    assert data["subscriber"]["name"] == PEGGY_NAME
    assert data["subscriber"]["status"] == "confirmed"
    assert data["generated_at"] and data["about"]
    [subscription] = data["subscriptions"]
    assert subscription["topic"] == {"slug": "marvel-news", "name": "Marvel News"}
    assert subscription["status"] == "confirmed"
    [consent] = subscription["consent_records"]
    assert consent["source"] == "form"
    assert consent["page_url"] == PEGGY_PAGE
    assert consent["ip_address"] == PEGGY_IP
    assert consent["user_agent"] == PEGGY_BROWSER
    assert consent["consent_text_version"] == get_settings().CONSENT_TEXT_VERSION
    assert consent["confirmed_at"] == data["subscriber"]["confirmed_at"] is not None
    assert consent["withdrawn_at"] is None


def test_the_download_lists_the_mail_sent_and_the_articles_it_carried(reader):
    subscriber_id = _peggy(reader)
    _digest_sent_to_everyone()
    data = json.loads(reader.get(f"{_preferences_path(subscriber_id)}/data").get_data(as_text=True))
    kinds = {d["kind"]: d for d in data["deliveries"]}
    assert set(kinds) == {"confirmation", "digest"}
    assert all(d["state"] == "sent" and d["message_id"] and d["sent_at"] for d in data["deliveries"])
    assert kinds["digest"]["period"]
    [item] = data["digest_items"]
    assert item["url"] == "https://www.example.com/movies/mi7-set-photos"
    assert item["title"].startswith("See Tom Cruise")
    assert item["digest"] == kinds["digest"]["period"]
    assert "html" not in json.dumps(data["deliveries"]).lower()  # no rendered bodies


def test_times_in_the_download_are_iso_8601(reader):
    subscriber_id = _peggy(reader)
    data = export_subscriber(db.session, subscriber_id)
    for moment in (data["generated_at"], data["subscriber"]["created_at"],
                   data["subscriptions"][0]["consent_records"][0]["requested_at"]):
        assert datetime.fromisoformat(moment).utcoffset() is not None


def test_the_download_holds_bounces_about_the_reader(reader):
    subscriber_id = _peggy(reader)
    _digest_sent_to_everyone()
    _soft_bounce_of_the_digest(PEGGY)
    data = json.loads(reader.get(f"{_preferences_path(subscriber_id)}/data").get_data(as_text=True))
    [bounce] = data["bounces"]
    assert (bounce["kind"], bounce["status"]) == ("soft", "4.2.2")
    assert bounce["received_at"]


def test_the_download_holds_no_other_readers_data(reader):
    subscriber_id = _peggy(reader)
    _howard(reader)
    _digest_sent_to_everyone()
    _soft_bounce_of_the_digest(HOWARD)
    body = reader.get(f"{_preferences_path(subscriber_id)}/data").get_data(as_text=True)
    for trace in (HOWARD, "Howard", HOWARD_PAGE, HOWARD_BROWSER, HOWARD_IP):
        assert trace not in body
    data = json.loads(body)
    assert len(data["deliveries"]) == 2 and len(data["digest_items"]) == 1
    assert data["bounces"] == []


# ------------------------------------------------------------------ erasure by the reader


def test_the_preferences_page_links_to_the_download_and_the_erasure(reader):
    path = _preferences_path(_peggy(reader))
    html = reader.get(path).get_data(as_text=True)
    assert "Your data" in html
    assert f'href="{path}/data"' in html
    assert f'href="{path}/erase"' in html


def test_the_erase_link_asks_first_and_erases_nothing(reader):
    subscriber_id = _peggy(reader)
    path = _preferences_path(subscriber_id)
    page = reader.get(f"{path}/erase")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert f'<form method="post" action="{path}/erase">' in html
    assert "<script" not in html
    assert _count(Subscriber, Subscriber.id == subscriber_id) == 1


def test_erasing_from_the_preferences_page_leaves_no_row_that_names_the_reader(reader):
    peggy = _peggy(reader)
    howard = _howard(reader)
    _digest_sent_to_everyone()
    _soft_bounce_of_the_digest(PEGGY)
    # Relays often quote the recipient in their refusal; that reply is kept on the delivery.
    db.session.rollback()
    digest = db.session.scalars(select(Delivery).where(
        Delivery.subscriber_id == peggy, Delivery.kind == DeliveryKind.DIGEST)).one()
    digest.last_error = f"550 5.1.1 <{PEGGY.upper()}>: Recipient address rejected"
    db.session.commit()
    deliveries_before = _count(Delivery)
    assert _rows_naming(PEGGY) and _rows_linked_to(peggy)  # the check below can see them

    response = submit(reader, f"{_preferences_path(peggy)}/erase")
    assert response.status_code == 200
    assert "Your data is deleted" in response.get_data(as_text=True)

    assert _rows_naming(PEGGY, PEGGY_NAME, PEGGY_IP, PEGGY_BROWSER) == []
    assert _rows_linked_to(peggy) == []
    assert _count(Subscriber, Subscriber.email == PEGGY) == 0
    assert _count(CapturedEmail, CapturedEmail.recipients.contains(PEGGY)) == 0
    assert _count(Delivery) == deliveries_before  # the ledger keeps its counts, unlinked
    assert _count(Bounce, Bounce.email_hash == address_hash(PEGGY)) == 1  # a hash, no address
    # Howard's data is untouched.
    assert len(_rows_linked_to(howard)) >= 4  # subscription, two deliveries, a digest item
    assert _count(ConsentRecord) == 1
    assert _count(CapturedEmail, CapturedEmail.recipients == HOWARD) == 2


def test_an_erased_address_stays_on_the_suppression_list(reader):
    peggy = _peggy(reader)
    submit(reader, f"{_preferences_path(peggy)}/erase")
    db.session.rollback()
    entry = db.session.scalars(select(Suppression).where(Suppression.email_hash == address_hash(PEGGY))).one()
    assert entry.reason == SuppressionReason.ERASED
    assert PEGGY not in (entry.detail or "")


def test_a_new_subscription_of_an_erased_address_is_stored_but_never_mailed(reader):
    peggy = _peggy(reader)
    submit(reader, f"{_preferences_path(peggy)}/erase")
    captured_before = _count(CapturedEmail)

    again = _subscribe_from_article(reader, PEGGY, PEGGY_NAME, PEGGY_PAGE, PEGGY_BROWSER, PEGGY_IP)
    assert again != peggy  # a new person as far as we know
    [delivery_id] = db.session.scalars(select(Delivery.id).where(Delivery.subscriber_id == again)).all()
    result = deliver(db.session, delivery_id, OutboxTransport(db.session), get_settings())
    assert result.state == DeliveryState.SUPPRESSED
    assert _count(CapturedEmail) == captured_before


def test_erasing_twice_shows_the_same_page(reader):
    path = _preferences_path(_peggy(reader))
    action, fields = form_of(reader.get(f"{path}/erase").get_data(as_text=True))
    first = reader.post(action, data=fields)
    second = reader.post(action, data=fields)  # e.g. a double click
    assert first.status_code == second.status_code == 200
    assert first.get_data() == second.get_data()


def test_after_erasure_the_links_find_nothing(reader):
    path = _preferences_path(_peggy(reader))
    submit(reader, f"{path}/erase")
    assert reader.get(f"{path}/data").status_code == 404
    assert reader.get(f"{path}/erase").status_code == 404
    assert reader.get(path).status_code == 404


@pytest.mark.parametrize("suffix", ["data", "erase"])
def test_a_tampered_or_foreign_token_is_refused(reader, suffix):
    peggy = _peggy(reader)
    good = tokens.preferences_token(peggy)
    for bad in (good[:-2] + ("AA" if not good.endswith("AA") else "BB"), tokens.unsubscribe_token(peggy)):
        assert reader.get(f"/preferences/{bad}/{suffix}").status_code == 400
        answer = reader.get(f"/preferences/{bad}/{suffix}", headers={"Accept": "application/json"})
        assert answer.status_code == 400 and "error" in answer.json
        assert reader.post(f"/preferences/{bad}/erase").status_code == 400
    assert _count(Subscriber, Subscriber.id == peggy) == 1


def test_erasing_an_unknown_subscriber_is_harmless(privacy_app):
    assert erase_subscriber(db.session, 424242, via="test") is False
    assert _count(Suppression) == 0


# ------------------------------------------------------------------ the admin API


def test_the_admin_export_and_erase_need_the_token(privacy_app, reader):
    peggy = _peggy(reader)
    for headers in ({}, {"Authorization": "Bearer wrong-token"}):
        export = reader.get(f"/api/v1/subscribers/export?email={PEGGY}", headers=headers)
        erase = reader.post("/api/v1/subscribers/erase", json={"email": PEGGY}, headers=headers)
        for response in (export, erase):
            assert response.status_code == 401
            assert PEGGY not in response.get_data(as_text=True)
    assert _count(Subscriber, Subscriber.id == peggy) == 1


def test_the_admin_export_by_address_or_id(reader):
    peggy = _peggy(reader)
    by_address = reader.get(f"/api/v1/subscribers/export?email={PEGGY.upper()}", headers=AUTH)
    by_id = reader.get(f"/api/v1/subscribers/export?subscriber_id={peggy}", headers=AUTH)
    assert by_address.status_code == by_id.status_code == 200
    assert by_address.json["subscriber"]["email"] == by_id.json["subscriber"]["email"] == PEGGY
    assert by_address.json["subscriptions"][0]["consent_records"][0]["ip_address"] == PEGGY_IP


@pytest.mark.parametrize(("query", "status", "field"), [
    ("email=nobody@example.com", 404, None),
    ("subscriber_id=424242", 404, None),
    ("", 422, "email"),
    ("subscriber_id=seven", 422, "subscriber_id"),
])
def test_the_admin_export_answers_unknown_and_bad_lookups(reader, query, status, field):
    response = reader.get(f"/api/v1/subscribers/export?{query}", headers=AUTH)
    assert response.status_code == status
    assert "error" in response.json
    if field:
        assert field in response.json["errors"]


def test_the_admin_erase_by_address_then_again(reader):
    peggy = _peggy(reader)
    first = reader.post("/api/v1/subscribers/erase", json={"email": PEGGY}, headers=AUTH)
    again = reader.post("/api/v1/subscribers/erase", json={"subscriber_id": peggy}, headers=AUTH)
    assert (first.status_code, first.json) == (200, {"erased": True})
    assert (again.status_code, again.json) == (200, {"erased": False})
    assert _rows_naming(PEGGY) == []
    assert _count(Suppression, Suppression.reason == SuppressionReason.ERASED) == 1


@pytest.mark.parametrize(("body", "field"), [
    ({}, "email"),
    ({"email": 7}, "email"),
    ({"email": ""}, "email"),
    ({"subscriber_id": "1"}, "subscriber_id"),
    ({"subscriber_id": True}, "subscriber_id"),
    ({"email": PEGGY, "subscriber_id": 1}, "subscriber_id"),
    ({"email": PEGGY, "reason": "asked"}, "reason"),
    (["peggy@example.com"], "body"),
])
def test_the_admin_erase_names_the_refused_field(reader, body, field):
    _peggy(reader)
    response = reader.post("/api/v1/subscribers/erase", json=body, headers=AUTH)
    assert response.status_code == 422
    assert field in response.json["errors"]
    assert _count(Subscriber, Subscriber.email == PEGGY) == 1


def test_the_admin_erase_wants_json(reader):
    response = reader.post("/api/v1/subscribers/erase", data={"email": PEGGY}, headers=AUTH)
    assert response.status_code == 422
    assert "body" in response.json["errors"]


# ------------------------------------------------------------------ the CLI


def test_the_cli_prints_the_export(privacy_app, reader):
    _peggy(reader)
    result = privacy_app.test_cli_runner().invoke(args=["subscribers", "export", PEGGY])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["subscriber"]["email"] == PEGGY
    assert data["subscriptions"][0]["consent_records"][0]["page_url"] == PEGGY_PAGE


def test_the_cli_erases_only_after_confirmation(privacy_app, reader):
    _peggy(reader)
    runner = privacy_app.test_cli_runner()
    declined = runner.invoke(args=["subscribers", "erase", PEGGY], input="n\n")
    assert declined.exit_code != 0
    assert _count(Subscriber, Subscriber.email == PEGGY) == 1
    accepted = runner.invoke(args=["subscribers", "erase", PEGGY], input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert _count(Subscriber, Subscriber.email == PEGGY) == 0
    assert _rows_naming(PEGGY) == []


def test_the_cli_erases_without_asking_with_yes(privacy_app, reader):
    _peggy(reader)
    result = privacy_app.test_cli_runner().invoke(args=["subscribers", "erase", PEGGY, "--yes"])
    assert result.exit_code == 0, result.output
    assert "erased subscriber" in result.output
    assert _count(Subscriber, Subscriber.email == PEGGY) == 0
    assert _count(Suppression, Suppression.reason == SuppressionReason.ERASED) == 1


def test_the_cli_names_an_unknown_address(privacy_app):
    runner = privacy_app.test_cli_runner()
    for command in (["export", "nobody@example.com"], ["erase", "nobody@example.com", "--yes"]):
        result = runner.invoke(args=["subscribers", *command])
        assert result.exit_code != 0
        assert "no subscriber with this address" in result.output
