"""The outbox's copy of an email's HTML: links open a tab of their own, the document's mode unchanged."""

import pytest

from service.web.outbox import links_open_in_a_tab

BASE = '<base target="_blank">'


@pytest.mark.parametrize(("html", "framed"), [
    ("<!DOCTYPE html><html><head><title>x</title></head>",
     f"<!DOCTYPE html><html><head>{BASE}<title>x</title></head>"),
    ('<HEAD lang="en"><header>x</header>', f'<HEAD lang="en">{BASE}<header>x</header>'),
    ("<!doctype html><html lang=en><body>x", f"<!doctype html><html lang=en>{BASE}<body>x"),
    ("<!doctype html><p>x", f"<!doctype html>{BASE}<p>x"),  # before the doctype it would mean quirks mode
    ("<p>x</p>", f"{BASE}<p>x</p>"),
    ("", ""),
])
def test_the_base_goes_where_a_browser_puts_it_in_the_head(html, framed):
    assert links_open_in_a_tab(html) == framed
