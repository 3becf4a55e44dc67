"""Digests end to end: articles in through the API, readers confirmed through their
mail, the schedule run, and the digests read at the SMTP server."""

import re
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from service.extensions import db
from service.models import Delivery, DeliveryKind, DeliveryState, utcnow
from tasks.digests import plan_due_digests
from tests.conftest import wait_until
from tests.forms import submit

pytestmark = pytest.mark.integration
TOKEN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api(stack, app):
    admin_app = stack.make_app(ADMIN_API_TOKEN=TOKEN)
    with admin_app.app_context():
        yield admin_app.test_client()


def _path(url: str) -> str:
    return urlsplit(url).path


def _confirmed(client, smtp, email, topics, frequency):
    client.post("/subscribe", data={"email": email, "topics": topics, "frequency": frequency})
    [confirmation] = smtp.wait_for(email)
    assert submit(client, _path(confirmation.link("confirm"))).status_code == 200


def _ingest(api, *articles):
    published = utcnow().isoformat()
    body = [{"title": title, "url": f"https://www.example.com/{n}-{title.lower().replace(' ', '-')}",
             "published_at": published, "tags": tags, "summary": f"About {title}.",
             "author": "Tyler Pisapia"} for n, (title, tags) in enumerate(articles)]
    assert api.post("/api/v1/articles", json={"articles": body}, headers=AUTH).status_code in (200, 201)


def _digests_to(smtp, email):
    return [m for m in smtp.messages_to(email) if "/confirm/" not in m.text]


def _sections(text: str) -> dict[str, list[str]]:
    """Topic name -> article titles, from the digest's text part."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if heading := re.fullmatch(r"== (.+) ==", line):
            current = sections.setdefault(heading.group(1), [])
        elif current is not None and line.startswith("Story:"):
            current.append(line)
    return sections


def _digest_runs(worker) -> int:
    return len(re.findall(r"newsletter\.send_digests_now\[[^\]]+\] succeeded", worker.log()))


def test_each_reader_gets_their_digest_once_grouped_by_topic(api, client, smtp, worker):
    _confirmed(client, smtp, "peggy@example.com", ["marvel-news", "movie-news"], "daily")
    _confirmed(client, smtp, "tony@example.com", ["tv-news"], "weekly")
    client.post("/subscribe", data={"email": "pending@example.com", "topics": "marvel-news"})
    smtp.wait_for("pending@example.com")
    _confirmed(client, smtp, "gone@example.com", ["marvel-news"], "daily")
    [gone_confirmation] = smtp.messages_to("gone@example.com")
    client.post(_path(gone_confirmation.link("unsubscribe")))
    _ingest(api,
            ("Story: Atwell on set", ["Hayley Atwell"]),
            ("Story: Train stunt", ["Mission Impossible", "Tom Cruise"]),
            ("Story: What If returns", ["What If"]),
            ("Story: Gardening", ["gardening"]))

    runs = _digest_runs(worker)
    assert api.post("/api/v1/digests/send", headers=AUTH).status_code == 202
    [peggy] = smtp.wait_for("peggy@example.com", count=2)[1:]
    [tony] = smtp.wait_for("tony@example.com", count=2)[1:]
    assert _sections(peggy.text) == {"Marvel News": ["Story: Atwell on set"],
                                     "Movie News": ["Story: Train stunt"]}
    assert _sections(tony.text) == {"TV News": ["Story: What If returns"]}
    assert peggy.text.index("== Marvel News ==") < peggy.text.index("== Movie News ==")

    message = peggy.message
    assert "new articles in Marvel News, Movie News" in message["Subject"]
    assert message["List-Id"] == '"Marvel News digest" <digest.example.com>'
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert re.fullmatch(r"<https?://\S+/unsubscribe/\S+>", message["List-Unsubscribe"])
    for header in ("List-Id", "List-Unsubscribe", "List-Unsubscribe-Post", "Message-ID", "Date"):
        assert len(message.get_all(header)) == 1

    # A second call in the same period sends nothing more.
    wait_until(lambda: _digest_runs(worker) == runs + 1, message="the first send")
    assert api.post("/api/v1/digests/send", headers=AUTH).status_code == 202
    wait_until(lambda: _digest_runs(worker) == runs + 2, message="the second send")
    assert len(_digests_to(smtp, "peggy@example.com")) == 1
    assert len(_digests_to(smtp, "tony@example.com")) == 1
    assert _digests_to(smtp, "pending@example.com") == []
    assert _digests_to(smtp, "gone@example.com") == []
    sent = db.session.scalars(select(Delivery).where(Delivery.kind == DeliveryKind.DIGEST)).all()
    assert {d.state for d in sent} == {DeliveryState.SENT}

    # The digest's own unsubscribe link works with one click.
    response = client.post(_path(message["List-Unsubscribe"].strip("<>")),
                           data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200


def test_the_schedule_sends_due_digests_and_nothing_when_nothing_is_new(stack, api, client, smtp, worker):
    _confirmed(client, smtp, "peggy@example.com", ["marvel-news"], "daily")
    # At send hour 0 every daily period is due, so beat's task plans right away.
    beat = stack.make_app(DIGEST_SEND_HOUR="0")
    with beat.app_context():
        assert plan_due_digests.run() == 0  # nothing new yet: nothing is sent
        _ingest(api, ("Story: Fresh", ["marvel"]))
        assert plan_due_digests.run() == 1
        [digest] = smtp.wait_for("peggy@example.com", count=2)[1:]
        assert _sections(digest.text) == {"Marvel News": ["Story: Fresh"]}
        assert plan_due_digests.run() == 0  # a duplicate beat firing plans nothing more


def test_lines_of_dots_arrive_whole_though_nothing_is_dot_stuffed(api, client, smtp, worker):
    """The ledger sends without dot-stuffing, which is safe only because no line of a message
    starts with a dot (quoted-printable writes such a dot as =2E). A reader's name and an
    article's title made of dots put dots at the start of many encoded lines; the SMTP server
    (aiosmtpd, which removes a line's leading dot as RFC 5321 says) must receive them whole."""
    name = "." * 90
    title = "Story: " + "." * 240
    client.post("/subscribe", data={"email": "dots@example.com", "topics": "marvel-news",
                                    "frequency": "daily", "name": name})
    [confirmation] = smtp.wait_for("dots@example.com")
    assert f"Hi {name}," in confirmation.text
    assert submit(client, _path(confirmation.link("confirm"))).status_code == 200
    _ingest(api, (title, ["Hayley Atwell"]))

    assert api.post("/api/v1/digests/send", headers=AUTH).status_code == 202
    [digest] = smtp.wait_for("dots@example.com", count=2)[1:]
    for received in (confirmation, digest):
        # What arrived has no line starting with a dot: a stuffed one would show as one dot
        # after unstuffing, an unstuffed one would have lost its dot (the checks below).
        assert re.search(rb"(^|\n)\.", received.raw) is None
    assert f"digest for {name}." in digest.text
    # The title's own line and link text (the summary repeats the title, so not just "in").
    assert _sections(digest.text) == {"Marvel News": [title]}
    assert f">{title}</a>" in digest.html
