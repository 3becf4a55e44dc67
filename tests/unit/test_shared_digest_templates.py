"""A digest content made once per process, and made again as soon as anything it shows changes."""

import os
from datetime import timedelta

import pytest
from sqlalchemy import select

from service.mail.compose import SHARED_TEMPLATES, DigestComposer
from service.mail.rendering import EMAIL_TEMPLATES_DIR, templates_version
from service.models import Article, Delivery, Subscriber, Topic
from tests.unit.test_digest_planning import MONDAY_9, article, plan, reader, settings  # noqa: F401


@pytest.fixture
def two_digests(session, settings):  # noqa: F811
    SHARED_TEMPLATES.clear()
    for email in ("first@example.com", "second@example.com"):
        reader(session, email, ["marvel-news"])
    article(session, "Daredevil returns", ["MCU"], MONDAY_9 - timedelta(hours=2))
    return [session.get(Delivery, i) for i in plan(session, settings, MONDAY_9, force=True)]


def _compose(session, settings, delivery) -> tuple[str, int]:  # noqa: F811
    """The digest's text as a new batch composes it, and how many renders that took."""
    composer = DigestComposer(session, settings)
    composer.load([delivery.id])
    message = composer.compose(delivery, session.get(Subscriber, delivery.subscriber_id), MONDAY_9)
    return message.text.decoded(), composer.copies.renders


def test_a_later_batch_uses_the_content_an_earlier_one_made(session, settings, two_digests):  # noqa: F811
    first, second = two_digests
    text, renders = _compose(session, settings, first)
    assert renders == 2 and "Daredevil returns" in text
    text, renders = _compose(session, settings, second)
    assert renders == 0 and "Daredevil returns" in text and "second@example.com" in text


def test_an_edited_article_is_made_anew(session, settings, two_digests):  # noqa: F811
    first, second = two_digests
    _compose(session, settings, first)
    session.scalars(select(Article)).one().title = "Daredevil: Born Again returns"
    session.commit()
    text, renders = _compose(session, settings, second)
    assert renders == 2 and "Daredevil: Born Again returns" in text


def test_a_renamed_topic_is_made_anew(session, settings, two_digests):  # noqa: F811
    first, second = two_digests
    _compose(session, settings, first)
    session.scalars(select(Topic).where(Topic.name == "Marvel News")).one().name = "Marvel Studios News"
    session.commit()
    text, renders = _compose(session, settings, second)
    assert renders == 2 and "Marvel Studios News" in text


def test_the_template_files_version_changes_when_a_file_is_edited_added_or_removed(tmp_path):
    template = tmp_path / "digest.html"
    template.write_text("<p>{{ name }}</p>")
    before = templates_version(tmp_path)
    template.write_text("<p>Hello {{ name }}</p>")
    edited = templates_version(tmp_path)
    (tmp_path / "topics").mkdir()
    (tmp_path / "topics" / "marvel-news.html").write_text("{% extends 'topics/_default.html' %}")
    added = templates_version(tmp_path)
    (tmp_path / "topics" / "marvel-news.html").unlink()
    assert len({before, edited, added}) == 3
    assert templates_version(tmp_path) == edited


def test_an_edited_template_file_is_made_anew(session, settings, two_digests):  # noqa: F811
    first, second = two_digests
    _compose(session, settings, first)
    template = EMAIL_TEMPLATES_DIR / "digest.txt"
    before = template.stat()
    try:
        os.utime(template, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))  # saved again
        _, renders = _compose(session, settings, second)
        assert renders == 2
    finally:
        os.utime(template, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_file_that_vanishes_while_the_folder_is_read_is_left_out(tmp_path, monkeypatch):
    """An editor's swap file deleted between listing and stat must not fail a batch."""
    (tmp_path / "digest.html").write_text("<p>{{ name }}</p>")
    swap = tmp_path / ".digest.html.swp"
    swap.write_text("")
    listed = list(os.walk(tmp_path))
    swap.unlink()
    monkeypatch.setattr(os, "walk", lambda top: iter(listed))
    assert [name for name, _, _ in templates_version(tmp_path)] == ["digest.html"]


def test_a_folder_that_vanishes_while_the_folder_is_read_is_left_out(tmp_path, monkeypatch):
    """A deploy replacing topics/ while a batch reads the versions must not fail the batch."""
    (tmp_path / "digest.html").write_text("<p>{{ name }}</p>")
    (tmp_path / "topics").mkdir()
    (tmp_path / "topics" / "marvel-news.html").write_text("<h2>Marvel</h2>")
    real_scandir = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        if os.fspath(path).endswith("topics"):
            raise FileNotFoundError(path)  # listed a moment ago, gone now
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert [name for name, _, _ in templates_version(tmp_path)] == ["digest.html"]
