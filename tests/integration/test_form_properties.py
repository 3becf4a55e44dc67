"""Whatever a client posts to /subscribe, the answer is a deliberate 2xx, 3xx or 4xx.

Generated bodies (hypothesis) go through Flask's test client as a form or as
JSON, on both stacks: never a 500, and an unknown field is named in the 422.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from markupsafe import escape

from service.config import get_settings

KNOWN_FIELDS = ("email", "name", "frequency", "timezone", "next", "topics")
ANSWERS = {200, 202, 303, 400, 413, 415, 422}

# Plausible values as well as arbitrary text, so that some posts get past the
# shape checks into the domain and the database.
plausible = {
    "email": st.sampled_from(["peggy@example.com", " Peggy@Example.COM ", "not-an-address",
                              "sharon@xn--bcher-kva.example", "t'challa@wakanda.example"]) | st.emails(),
    "topics": st.sampled_from(["marvel-news", "tv-news", "MOVIE-NEWS ", "retired-or-unknown"]),
    "frequency": st.sampled_from(["daily", "weekly", "hourly"]),
    "timezone": st.sampled_from(["Europe/Berlin", "UTC", "America", "Mars/Olympus", "../etc/passwd"]),
    "next": st.sampled_from(["http://newsletter.example.com/thanks", "https://evil.example/",
                             "javascript:alert(1)", "//evil.example"]),
    "name": st.sampled_from(["Peggy Carter", "Peggy\nCarter", "Ünïcödé ✓"]),
}
# Strings that often break form handlers: NUL (PostgreSQL refuses it in text),
# controls, bidi overrides, the longest accepted value (12 KB encoded, so two make a
# body over the limit) and one too long.
hostile = st.sampled_from(["", " ", "\x00", "marvel-news\x00", "\r\n", "\u202e", "\ufeff", "é" * 2048,
                           "x" * 2049])
text_values = st.text(max_size=40) | hostile
values = st.one_of(text_values, st.lists(text_values, max_size=3))


@st.composite
def near_valid_bodies(draw: st.DrawFn) -> dict[str, str | list[str]]:
    """Known fields with plausible or arbitrary values of the right shape, now and then with
    unknown ones: most of these get past the form's checks into the domain."""
    body: dict[str, str | list[str]] = {}
    for name in KNOWN_FIELDS:
        if name in ("email", "topics") or draw(st.booleans()):
            value = plausible[name] | text_values
            if name == "topics":
                value = value | st.lists(value, min_size=1, max_size=3)
            body[name] = draw(value)
    body.update(draw(st.just({}) | st.dictionaries(st.text(max_size=20), values, max_size=2)))
    return body


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, str | list[str]]:
    """Fully arbitrary mappings (one in three), or ones close enough to a real post to reach
    the database."""
    if draw(st.integers(0, 2)) == 0:
        return draw(st.dictionaries(st.text(max_size=20), values, max_size=6))
    return draw(near_valid_bodies())


def _unknown_names(body: dict[str, str | list[str]], as_json: bool) -> list[str]:
    # A form carries a field only with a value; JSON carries every key, even with [].
    return [name for name, value in body.items()
            if name not in KNOWN_FIELDS and (as_json or value != [])]


def _post(client, body: dict[str, str | list[str]], as_json: bool, accept: str):  # type: ignore[no-untyped-def]
    if as_json:
        return client.post("/subscribe", json=body, headers={"Accept": accept})
    return client.post("/subscribe", data=body, headers={"Accept": accept})


@pytest.mark.parametrize("as_json", [False, True], ids=["form", "json"])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies(), accept=st.sampled_from(["text/html", "application/json", "*/*"]))
def test_any_post_to_subscribe_gets_a_deliberate_answer(client, as_json, body, accept):
    response = _post(client, body, as_json, accept)
    event(f"status {response.status_code}")
    assert response.status_code in ANSWERS, (response.status_code, response.get_data(as_text=True)[:500])

    if response.status_code == 413:
        # Refused unread, before any field is looked at; only for a body over the limit.
        with client.application.app_context():
            assert response.request.content_length > get_settings().MAX_FORM_BYTES
        return
    unknown = _unknown_names(body, as_json)
    if not unknown:
        return
    assert response.status_code == 422
    if response.is_json:
        reported = response.get_json()["errors"]
        assert all(name[:100] in reported for name in unknown), reported
    else:
        page = response.get_data(as_text=True)
        assert all(str(escape(name[:100])) in page for name in unknown)
