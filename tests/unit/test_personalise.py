"""Digests rendered once per content and personalised per reader (service.mail.personalise)."""

from datetime import UTC, datetime, timedelta

from jinja2 import Environment

from service.config import get_settings
from service.mail.compose import DigestSection
from service.mail.personalise import (
    MISSING,
    PersonalCopies,
    Reader,
    TemplateCache,
    content_key,
    digest_context,
    personal_fields,
)
from service.mail.rendering import RenderedEmail, render_email
from service.models import Article, Frequency, Topic

TOPICS = {1: Topic(id=1, slug="marvel-news", name="Marvel News", description=""),
          2: Topic(id=2, slug="tv-news", name="TV <News> & more", description="")}
ARTICLES = {n: Article(id=n, title=f"Story {n} <with> & 'quotes'", url=f"https://www.example.com/{n}?a=1&b=2",
                       summary="Behind the scenes. " * 20, author="Tyler Pisapia",
                       image_url=f"https://cdn.example.com/{n}.jpg",
                       published_at=datetime(2026, 11, 24, 8, tzinfo=UTC) + timedelta(minutes=n))
            for n in range(1, 7)}
PAIRS = [(1, 1), (1, 2), (2, 3), (2, 4)]

READERS = [
    Reader(1, "peggy@example.com", "Peggy", Frequency.DAILY),
    Reader(2, "o'brien+news@example.com", "Miles <O'Brien> & \"Keiko\"", Frequency.DAILY),
    Reader(3, "anon@example.com", None, Frequency.DAILY),
    Reader(4, "zoë@example.com", "Zoë Ünïcode", Frequency.DAILY),
    Reader(5, "weekly@example.com", "Wanda", Frequency.WEEKLY),
    Reader(6, "nameless@example.com", "", Frequency.DAILY),
]


def _sections(key) -> list[DigestSection]:
    _, _, sections = key
    return [DigestSection(TOPICS[topic_id], [ARTICLES[a] for a in article_ids])
            for topic_id, article_ids in sections]


def _render_with_templates(reader, key, fields) -> RenderedEmail:
    settings = get_settings()
    return render_email("digest", digest_context(settings, key[0], _sections(key), fields))


def test_every_copy_equals_the_digest_rendered_for_that_reader_alone(session):
    copies = PersonalCopies(_render_with_templates)
    for _ in range(3):
        for reader in READERS:
            key = content_key(reader, PAIRS)
            # One set of links for both: a link's token carries the second it was signed in.
            fields = personal_fields(reader)
            assert copies.copy_for(reader, key, fields).decoded() == _render_with_templates(
                reader, key, fields), reader


def test_each_content_is_rendered_twice_in_all_however_many_readers_get_it(session):
    copies = PersonalCopies(_render_with_templates)
    readers = [Reader(n, f"reader{n}@example.com", f"Reader {n}", Frequency.DAILY) for n in range(1, 201)]
    for reader in readers:
        copies.copy_for(reader, content_key(reader, PAIRS))
    for reader in readers[:50]:
        copies.copy_for(reader, content_key(reader, PAIRS[:2]))
    # The first reader of each content the slow way, plus the template with placeholders.
    assert copies.renders == 4


def test_the_content_key_ignores_order_and_separates_what_differs():
    peggy, anon = READERS[0], READERS[2]
    assert content_key(peggy, PAIRS) == content_key(peggy, list(reversed(PAIRS)))
    assert content_key(peggy, PAIRS) != content_key(peggy, PAIRS[:3])
    assert content_key(peggy, PAIRS) != content_key(anon, PAIRS)  # {% if name %} may differ
    assert content_key(peggy, PAIRS) != content_key(READERS[4], PAIRS)  # another frequency


def test_a_template_that_transforms_a_personal_field_is_rendered_per_reader(session):
    """{{ name|upper }} would not survive substitution: the check on the first reader notices."""
    template = Environment(autoescape=True).from_string("Hello {{ name|upper }} <{{ email }}>")

    def render(reader, key, fields) -> RenderedEmail:
        text = template.render(name=fields["name"], email=fields["email"])
        return RenderedEmail(subject="Digest", html=text, text=text)

    copies = PersonalCopies(render)
    named = [reader for reader in READERS if reader.name]
    results = [copies.copy_for(reader, content_key(reader, PAIRS)) for reader in named]
    assert [r.decoded().text for r in results] == [
        template.render(name=reader.name, email=reader.email) for reader in named]
    assert copies.renders > len(named)  # no shortcut taken after the failed check


def test_a_later_batch_reuses_the_template_of_the_same_content_and_version(session):
    shared = TemplateCache()
    readers = [Reader(n, f"reader{n}@example.com", f"Reader {n}", Frequency.DAILY) for n in range(1, 4)]
    first = PersonalCopies(_render_with_templates, lambda key: "v1", shared)
    for reader in readers:
        first.copy_for(reader, content_key(reader, PAIRS))
    assert first.renders == 2

    later = PersonalCopies(_render_with_templates, lambda key: "v1", shared)
    for reader in readers:
        key, fields = content_key(reader, PAIRS), personal_fields(reader)
        assert later.copy_for(reader, key, fields).decoded() == _render_with_templates(reader, key, fields)
    assert later.renders == 0

    changed = PersonalCopies(_render_with_templates, lambda key: "v2", shared)
    changed.copy_for(readers[0], content_key(readers[0], PAIRS))
    assert changed.renders == 2  # another version of the content: made anew


def test_a_shared_template_is_not_used_past_its_age(session):
    shared = TemplateCache(max_age=0)
    reader = READERS[0]
    for _ in range(2):
        copies = PersonalCopies(_render_with_templates, lambda key: "v1", shared)
        copies.copy_for(reader, content_key(reader, PAIRS))
        assert copies.renders == 2


def test_the_shared_cache_keeps_the_most_recently_used_contents():
    shared = TemplateCache(size=2)
    shared.put("a", None)
    shared.put("b", None)
    assert shared.get("a") is None  # a hit, and now the most recent
    shared.put("c", None)
    assert shared.get("b") is MISSING
    assert shared.get("a") is None and shared.get("c") is None


def test_a_content_that_could_not_take_the_shortcut_is_remembered_as_such(session):
    template = Environment(autoescape=True).from_string("Hello {{ name|upper }}")

    def render(reader, key, fields) -> RenderedEmail:
        text = template.render(name=fields["name"])
        return RenderedEmail(subject="Digest", html=text, text=text)

    shared = TemplateCache()
    reader = READERS[0]
    PersonalCopies(render, lambda key: "v1", shared).copy_for(reader, content_key(reader, PAIRS))
    later = PersonalCopies(render, lambda key: "v1", shared)
    assert later.copy_for(reader, content_key(reader, PAIRS)).decoded().text == "Hello PEGGY"
    assert later.renders == 1  # the reader's own render, without checking the template again


def test_an_article_that_holds_a_placeholder_is_shown_as_written(session, monkeypatch):
    """A feed's text may hold anything, even our placeholders: a confirmation's is plain text in
    a digest, and a digest's own is caught by the check against the probe reader."""
    for article_id, title in ((7, "Watch NLxPERSONALxCONFIRMx now"), (8, "Dear NLxPERSONALxNAMEx, hello")):
        monkeypatch.setitem(ARTICLES, article_id, Article(
            id=article_id, title=title, url=f"https://www.example.com/{article_id}", summary="S.",
            author="A", image_url=None, published_at=datetime(2026, 11, 24, 8, tzinfo=UTC)))
        copies = PersonalCopies(_render_with_templates)
        for reader in READERS:
            key, fields = content_key(reader, [(1, article_id)]), personal_fields(reader)
            copy = copies.copy_for(reader, key, fields).decoded()
            assert copy == _render_with_templates(reader, key, fields), (title, reader)
            assert title.replace(",", "") in copy.text.replace(",", "")
