"""The digest email as rendered from email_templates/ (no sending)."""

from datetime import UTC, datetime, timedelta

from service.config import get_settings
from service.mail.compose import DigestSection, list_id, render_digest
from service.models import Article, Frequency, Subscriber, Topic

GMAIL_CLIPPING_BYTES = 102 * 1024


def _topic(slug, name, topic_id) -> Topic:
    return Topic(id=topic_id, slug=slug, name=name, description="")


def _articles(count, start=0, summary="Hayley Atwell gave fans a brief look behind the scenes. " * 400):
    base = datetime(2026, 11, 24, 8, tzinfo=UTC)
    return [Article(id=start + n, title=f"Story number {start + n} with a long enough headline",
                    url=f"https://www.example.com/story/{start + n}?ref=newsletter",
                    summary=summary, author="Tyler Pisapia",
                    image_url=f"https://cdn.example.com/img/{start + n}.jpg",
                    published_at=base + timedelta(minutes=n)) for n in range(count)]


def _reader() -> Subscriber:
    return Subscriber(id=7, email="peggy@example.com", name="Peggy", frequency=Frequency.DAILY)


def test_a_full_digest_stays_under_gmails_clipping_limit(session):
    settings = get_settings()
    topics = [_topic(f"topic-{n}", f"Topic {n}", n) for n in range(1, 6)]
    per_topic = settings.DIGEST_MAX_ARTICLES // len(topics)
    sections = [DigestSection(t, _articles(per_topic, start=t.id * 100)) for t in topics]
    rendered = render_digest(_reader(), sections, settings)
    assert sum(len(s.articles) for s in sections) == settings.DIGEST_MAX_ARTICLES
    assert len(rendered.html.encode()) < GMAIL_CLIPPING_BYTES


def test_articles_show_title_link_excerpt_image_author_and_date(session):
    section = DigestSection(_topic("tv-news", "TV News", 3), _articles(1, summary="Short. " * 100))
    rendered = render_digest(_reader(), [section], get_settings())
    article = section.articles[0]
    assert f'href="{article.url}"' in rendered.html
    assert f'src="{article.image_url}"' in rendered.html
    assert "Tyler Pisapia" in rendered.html and "24 Nov 2026" in rendered.html
    assert "Short. Short." in rendered.html
    assert "Short. " * 100 not in rendered.html  # an excerpt, not the whole summary
    assert article.url in rendered.text and article.title in rendered.text


def test_the_html_is_responsive_with_a_preheader_and_a_footer(session):
    settings = get_settings()
    rendered = render_digest(_reader(), [DigestSection(_topic("tv-news", "TV News", 3), _articles(2))],
                             settings)
    assert 'name="viewport"' in rendered.html
    assert "@media (max-width" in rendered.html
    assert 'class="preheader"' in rendered.html and "2 new articles in TV News" in rendered.html
    assert "/unsubscribe/" in rendered.html and "/preferences/" in rendered.html
    assert "/unsubscribe/" in rendered.text and "/preferences/" in rendered.text
    assert 'style="' in rendered.html  # CSS inlined
    assert 'alt=""' in rendered.html  # images are decoration: the text carries the meaning


def test_the_footer_shows_the_publishers_postal_address(stack, app):
    publisher = stack.make_app(PUBLISHER_NAME="Marvel Daily", PUBLISHER_POSTAL_ADDRESS="1 Hero Way, NY")
    with publisher.app_context():
        rendered = render_digest(_reader(), [DigestSection(_topic("tv-news", "TV", 3), _articles(1))],
                                 get_settings())
    assert "Marvel Daily" in rendered.subject
    assert "1 Hero Way, NY" in rendered.html and "1 Hero Way, NY" in rendered.text


def test_a_topic_with_its_own_template_uses_it(session):
    sections = [DigestSection(_topic("marvel-news", "Marvel News", 1), _articles(1)),
                DigestSection(_topic("tv-news", "TV News", 2), _articles(1, start=10))]
    html = render_digest(_reader(), sections, get_settings()).html
    assert "MARVEL NEWS" in html and "topic-marvel" in html
    assert ">TV News</h2>" in html


def test_markup_in_articles_is_shown_as_text(session):
    [article] = _articles(1)
    article.title = "<script>alert('x')</script><b>bold</b>"
    article.summary = "<img src=x onerror=alert(1)>"
    rendered = render_digest(_reader(), [DigestSection(_topic("tv-news", "TV", 3), [article])],
                             get_settings())
    assert "<script>" not in rendered.html and "<b>bold</b>" not in rendered.html
    assert "<img src=x" not in rendered.html
    assert "&lt;script&gt;" in rendered.html


def test_the_list_id_is_a_phrase_and_an_id_on_our_domain(session):
    assert list_id(get_settings()) == '"Marvel News digest" <digest.example.com>'


def test_the_list_unsubscribe_header_is_the_very_link_the_body_shows(session, monkeypatch):
    """Tokens carry a timestamp; signing the link twice, a second apart, gave two different URLs."""
    import time

    from service.deliveries import ClaimedDelivery
    from service.mail.compose import compose_confirmation
    from service.models import DeliveryKind, Subscription, SubscriptionStatus

    clock = iter(range(1_800_000_000, 1_900_000_000, 7))
    monkeypatch.setattr(time, "time", lambda: float(next(clock)))
    reader = _reader()
    reader.token_epoch = 1
    reader.subscriptions = [Subscription(topic=_topic("tv-news", "TV News", 3),
                                         status=SubscriptionStatus.PENDING)]
    now = datetime(2026, 11, 25, tzinfo=UTC)
    delivery = ClaimedDelivery(1, DeliveryKind.CONFIRMATION, reader.id, None, now, 1)
    message = compose_confirmation(delivery, reader, get_settings(), now)
    header = dict(message.extra_headers)["List-Unsubscribe"].strip("<>")
    assert "/unsubscribe/" in header
    assert header in message.text and f'href="{header}"' in message.html
