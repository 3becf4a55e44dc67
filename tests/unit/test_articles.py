from datetime import UTC, datetime

import pytest

from service.articles import (
    InvalidArticle,
    article_from_mapping,
    canonical_url,
    normalise_tag,
    normalise_tags,
)

VALID = {
    "title": "See Tom Cruise and Marvel Star On Set For Mission Impossible 7",
    "url": "https://www.example.com/mi7-set-photo",
    "published_at": "2021-09-20T10:00:00Z",
    "tags": ["Tom Cruise", "Hayley Atwell"],
}


@pytest.mark.parametrize("spelling", ["Robert Downey Jr", "robert downey jr", "  ROBERT   Downey JR ",
                                      "Robert\u00a0Downey Jr"])
def test_tags_have_one_spelling(spelling):
    assert normalise_tag(spelling) == "robert downey jr"


def test_tag_lists_drop_duplicates_and_empty_tags_keeping_order():
    assert normalise_tags(["MCU", "mcu", " ", "Marvel", "MARVEL "]) == ["mcu", "marvel"]


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("HTTPS://WWW.Example.COM/Path?a=1#comments", "https://www.example.com/Path?a=1"),
        ("https://example.com/a?utm_source=x&id=7&fbclid=y", "https://example.com/a?id=7"),
        ("https://example.com", "https://example.com/"),
        ("http://example.com:8080/x", "http://example.com:8080/x"),
        ('https://example.com/a b/<x>"', "https://example.com/a%20b/%3Cx%3E%22"),
        ("https://example.com/caf%C3%A9", "https://example.com/caf%C3%A9"),
    ],
)
def test_urls_are_compared_in_a_canonical_form(raw, canonical):
    assert canonical_url(raw) == canonical


@pytest.mark.parametrize("raw", ["ftp://example.com/x", "/relative/path", "javascript:alert(1)", "https://"])
def test_only_absolute_http_urls_are_accepted(raw):
    with pytest.raises(ValueError):
        canonical_url(raw)


@pytest.mark.parametrize("raw", ["http://%ff/", "http://ex ample.com/", "https://exa<mple.com/",
                                 f"https://{'a' * 64}.example/", "https://a..b.example/"])
def test_a_host_no_reader_could_reach_is_refused(raw):
    # urlsplit takes any text for a host; such an article's link would lead nowhere from a digest.
    with pytest.raises(ValueError, match="valid host name"):
        canonical_url(raw)


@pytest.mark.parametrize("raw", ["https://bücher.example/a", "https://xn--bcher-kva.example/a",
                                 "http://127.0.0.1:8000/", "http://[::1]/", "https://my_host.example./"])
def test_hosts_browsers_resolve_are_kept_as_given(raw):
    assert canonical_url(raw) == raw


def test_a_valid_article_is_parsed_with_normalised_values():
    article = article_from_mapping({**VALID, "author": "Tyler Pisapia", "external_id": "post-42"})
    assert article.published_at == datetime(2021, 9, 20, 10, 0, tzinfo=UTC)
    assert article.tags == ["tom cruise", "hayley atwell"]
    assert article.external_id == "post-42"


def test_a_time_without_offset_is_utc_and_offsets_are_converted():
    assert article_from_mapping({**VALID, "published_at": "2021-09-20T10:00:00"}).published_at.tzinfo == UTC
    converted = article_from_mapping({**VALID, "published_at": "2021-09-20T12:00:00+02:00"})
    assert converted.published_at == datetime(2021, 9, 20, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"title": None}, "title"),
        ({"title": "   "}, "title"),
        ({"title": "x" * 501}, "title"),
        ({"url": "not a url"}, "url"),
        ({"url": None}, "url"),
        ({"published_at": "yesterday"}, "published_at"),
        ({"published_at": None}, "published_at"),
        ({"published_at": 1632132000}, "published_at"),
        ({"tags": "marvel"}, "tags"),
        ({"tags": [1, 2]}, "tags"),
        ({"image_url": "data:image/png;base64,AAA"}, "image_url"),
        ({"author": ["a", "b"]}, "author"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_field_is_named(change, field):
    data = {**VALID, **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(InvalidArticle) as caught:
        article_from_mapping(data)
    assert field in caught.value.errors


def test_every_bad_field_is_reported_at_once():
    with pytest.raises(InvalidArticle) as caught:
        article_from_mapping({"url": "nope", "tags": "x"})
    assert set(caught.value.errors) == {"title", "url", "published_at", "tags"}


def test_ipv6_hosts_keep_their_brackets():
    assert canonical_url("http://[::1]:8080/a") == "http://[::1]:8080/a"
    assert canonical_url(canonical_url("http://[2001:DB8::1]/x")) == "http://[2001:db8::1]/x"
