"""Submitting our own pages' forms the way a browser does: load the page, post its form."""

from __future__ import annotations

import re
from html import unescape


def form_of(html: str) -> tuple[str, dict[str, str]]:
    """The first POST form in ``html``: its action and its hidden fields (the CSRF token among them)."""
    form = re.search(r'<form method="post" action="([^"]+)"[^>]*>(.*?)</form>', html, re.S)
    assert form, "no POST form on the page"
    hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form.group(2)))
    return unescape(form.group(1)), {name: unescape(value) for name, value in hidden.items()}


def submit(client, page_path: str, data: dict | None = None, **kwargs):  # type: ignore[no-untyped-def]
    """GET the page, then POST its form with ``data`` on top of the form's hidden fields."""
    page = client.get(page_path)
    action, hidden = form_of(page.get_data(as_text=True))
    return client.post(action, data={**hidden, **(data or {})}, **kwargs)
