"""`newsletter dev` warns when the links in its emails would not reach the port it serves."""

import pytest

from service.commands import links_miss_this_server


@pytest.mark.parametrize(("public_base_url", "port", "missed"), [
    ("http://127.0.0.1:5000", 5000, False),
    ("http://127.0.0.1:5000", 8000, True),  # `newsletter dev --port 8000` without PUBLIC_BASE_URL
    ("http://localhost:8000/", 8000, False),
    ("http://localhost", 8000, True),
    ("http://localhost", 80, False),
    ("https://[::1]", 443, False),
    ("https://newsletter.example.com", 8000, False),  # a proxy in front may forward it here
])
def test_links_miss_this_server(public_base_url, port, missed):
    assert links_miss_this_server(public_base_url, port) is missed


@pytest.mark.parametrize("public_base_url", ["http://127.0.0.1:abc", "http://127.0.0.1:99999"])
def test_a_port_no_link_can_reach_is_a_miss_not_a_crash(public_base_url):
    assert links_miss_this_server(public_base_url, 5000) is True
