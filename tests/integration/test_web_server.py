"""The Procfile's web line as a platform runs it: granian serving the app on PostgreSQL and Redis.

The other tests drive the app through Flask's test client; these go through the
real server, for what only it decides: that the line's options start it, how a
body without a Content-Length reaches Werkzeug's size limit, and a clean stop.
"""

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from bench.subscribe_stack import procfile_command, web_workers
from service.models import Subscriber
from tests.conftest import PROJECT_ROOT, Stack

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def web_server(stack: Stack, app, tmp_path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:  # type: ignore[no-untyped-def]
    if stack.name != "postgres":
        pytest.skip("the Procfile's web line runs on the production settings")
    port = _free_port()
    # The line with PORT set and every other ${VAR:-default} at its default, as the benchmark reads it.
    command = procfile_command("web", {"PORT": str(port)})
    # Granian reads GRANIAN_* on top of the line: none of the caller's may change what is tested.
    env = {name: value for name, value in os.environ.items() if not name.startswith("GRANIAN_")}
    log_path = tmp_path / "web.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env={**env, **stack.env},
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            log_text = log_path.read_text(errors="replace")
            assert process.poll() is None, log_text
            # Every worker up, not just the first: granian leaves a worker that is still loading
            # the app when SIGTERM comes running until --workers-kill-timeout (docs/deployment.md).
            if log_text.count("Started worker-") >= web_workers(command) and _answers(f"{url}/healthz"):
                break
            assert time.monotonic() < deadline, log_text
            time.sleep(0.2)
        yield url, process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the whole group: a worker may outlive its parent
        process.wait()


def test_the_procfile_web_line_serves_a_subscription_and_stops_cleanly(web_server, session) -> None:  # type: ignore[no-untyped-def]
    url, process = web_server
    form = urllib.parse.urlencode({"email": "Reader@Example.com", "topics": "marvel-news"}).encode()

    status, page = _post(f"{url}/subscribe", form, {"Content-Type": "application/x-www-form-urlencoded"})

    assert status == 200, page
    assert "check your inbox" in page.lower()
    stored = session.scalars(sa.select(Subscriber.email)).all()
    assert stored == ["reader@example.com"]

    process.send_signal(signal.SIGTERM)
    # Well inside --workers-kill-timeout (30 s): the workers stopped, none was killed.
    assert process.wait(timeout=15) == 0


BODY_CAP = 64 * 1024 * 1024


def test_a_chunked_body_over_the_limit_is_refused_with_413_before_it_ends(web_server, session) -> None:  # type: ignore[no-untyped-def]
    """No Content-Length to refuse it by: the answer must come while the body is still being sent
    (64 MiB at most, far more than the kernel's buffers hold), and be a 413."""
    url, _ = web_server
    parts = urllib.parse.urlsplit(url)
    head = (b"POST /subscribe HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n")
    first = b"email=reader%40example.com&topics=marvel-news&name="
    chunk = b"a" * 65536
    sent = 0
    answer = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as connection:
        connection.sendall(head + b"%x\r\n%s\r\n" % (len(first), first))
        try:
            while sent < BODY_CAP and not answer:
                connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                if select.select([connection], [], [], 0)[0]:
                    answer = connection.recv(4096)
            answer = answer or connection.recv(4096)
        except (BrokenPipeError, ConnectionResetError):
            answer = answer or _rest_of(connection)  # closed after answering: the answer may be waiting

    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < BODY_CAP, "the whole body was sent before any answer"
    assert session.scalar(sa.select(sa.func.count()).select_from(Subscriber)) == 0


def _rest_of(connection: socket.socket) -> bytes:
    try:
        return connection.recv(4096)
    except OSError:
        return b""


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_an_http2_body_without_a_length_over_the_form_limit_is_refused_with_413(web_server, tmp_path,
                                                                                session) -> None:  # type: ignore[no-untyped-def]
    """HTTP/2 has no chunked encoding: a body sent without content-length carries no header at
    all saying so, and granian (HTTP/1 and 2 on one port) passes it on without a length."""
    url, _ = web_server
    if "HTTP2" not in subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout:
        pytest.skip("this curl speaks no HTTP/2")
    form = tmp_path / "form"
    form.write_bytes(urllib.parse.urlencode({"email": "reader@example.com", "topics": "marvel-news",
                                             "name": "a" * 40_000}).encode())
    # curl drops Transfer-Encoding over HTTP/2 and sends the body with no length.
    result = subprocess.run(
        ["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
         "-H", "Content-Type: application/x-www-form-urlencoded", "-H", "Transfer-Encoding: chunked",
         "--data-binary", f"@{form}", f"{url}/subscribe"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.stdout == "2 413", result
    assert session.scalar(sa.select(sa.func.count()).select_from(Subscriber)) == 0
