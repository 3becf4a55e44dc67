"""The README's quick start, as a newcomer runs it: ``newsletter dev`` with no settings.

Starts the real command in a subprocess (web server, worker and beat on SQLite
with the SQLite broker), subscribes on the hosted form over HTTP, reads the
confirmation in the outbox page, confirms, and unsubscribes.
"""

import html
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.forms import form_of

pytestmark = pytest.mark.integration

OUR_VARIABLES = ("DATABASE_URL", "CELERY_BROKER_URL", "SECRET_KEY", "SMTP_HOST", "PUBLIC_BASE_URL")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _request(url: str, data: dict | None = None) -> tuple[int, str]:
    body = urllib.parse.urlencode(data, doseq=True).encode() if data is not None else None
    try:
        with urllib.request.urlopen(url, data=body, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _poll(fetch, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = fetch()
        except (urllib.error.URLError, ConnectionError):
            result = None
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError("timed out")


@pytest.fixture
def dev_server(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in OUR_VARIABLES}
    env["INSTANCE_PATH"] = str(tmp_path)
    env["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"  # the README says so when the port changes
    log = (tmp_path / "dev.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "dev", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _poll(lambda: _request(f"{base}/healthz")[0] == 200, timeout=60)
        yield base, tmp_path
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)
        print((tmp_path / "dev.log").read_text()[-4000:])


def test_a_newcomer_subscribes_confirms_and_leaves_with_no_configuration(dev_server):
    base, instance = dev_server
    status, form = _request(f"{base}/subscribe")
    assert status == 200
    assert "Marvel News" in form  # demo topics seeded on first start

    status, page = _request(f"{base}/subscribe",
                            {"email": "newcomer@example.com", "topics": "marvel-news"})
    assert status == 200
    assert "Check your inbox" in page

    def first_mail():
        listing = _request(f"{base}/outbox/")[1]
        return re.search(r'href="(/outbox/\d+)"', listing)

    mail_path = _poll(first_mail).group(1)
    status, mail_page = _request(base + mail_path)
    assert status == 200
    assert "Confirm your subscription to Marvel News" in mail_page
    assert "<iframe" in mail_page
    assert _request(f"{base}{mail_path}/raw")[1].startswith("From: ")

    text_part = html.unescape(re.search(r'<pre class="text-part">(.*?)</pre>', mail_page, re.S).group(1))
    confirm_url = re.search(rf"{re.escape(base)}/confirm/\S+", text_part).group(0)
    unsubscribe_url = re.search(rf"{re.escape(base)}/unsubscribe/\S+", text_part).group(0)
    status, confirm_page = _request(confirm_url)
    assert status == 200
    action, fields = form_of(confirm_page)
    status, confirmed = _request(base + action, fields)
    assert status == 200
    assert "subscribed" in confirmed

    database = sqlite3.connect(instance / "newsletter.sqlite3")
    assert database.execute("SELECT status FROM subscribers").fetchone() == ("confirmed",)

    status, _ = _request(unsubscribe_url, {"List-Unsubscribe": "One-Click"})
    assert status == 200
    assert database.execute("SELECT status FROM subscribers").fetchone() == ("unsubscribed",)
