"""The Procfile's web line as a platform runs it: granian serving the app on PostgreSQL and Redis.

The other tests drive the app through Flask's test client; these go through the
real server, for what only it decides: that the line's options start it, how a
body without a Content-Length reaches Werkzeug's size limit, and a clean stop.
"""

import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from service.models import Subscriber
from tests.conftest import PROJECT_ROOT, Stack

pytestmark = pytest.mark.integration


def procfile_web_command(port: int) -> list[str]:
    """The Procfile's web line with ${PORT:-...} set and the other ${VAR:-default}s at their defaults."""
    lines = (PROJECT_ROOT / "Procfile").read_text().splitlines()
    line = next(line for line in lines if line.startswith("web:"))
    command = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: str(port) if m[1] == "PORT" else m[2],
                     line.partition(":")[2])
    argv = shlex.split(command)
    beside_python = Path(sys.executable).parent / argv[0]  # the virtualenv's own script
    return [str(beside_python) if beside_python.exists() else argv[0], *argv[1:]]


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


def _post(url: str, body: bytes | Iterator[bytes], headers: dict[str, str]) -> tuple[int, str]:
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
    log = (tmp_path / "web.log").open("wb")
    process = subprocess.Popen(procfile_web_command(port), cwd=PROJECT_ROOT, env={**os.environ, **stack.env},
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    command = procfile_web_command(port)
    workers = int(command[command.index("--workers") + 1])
    deadline = time.monotonic() + 60
    while True:
        log_text = (tmp_path / "web.log").read_text(errors="replace")
        assert process.poll() is None, log_text
        # Every worker up, not just the first: granian leaves a worker that is still loading
        # the app when SIGTERM comes running until --workers-kill-timeout (docs/deployment.md).
        if log_text.count("Started worker-") >= workers and _answers(f"{url}/healthz"):
            break
        assert time.monotonic() < deadline, log_text
        time.sleep(0.2)
    yield url, process
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
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


def test_a_chunked_body_over_the_limit_is_refused_with_413_before_it_ends(web_server, session) -> None:  # type: ignore[no-untyped-def]
    """No Content-Length to refuse it by: Werkzeug stops reading at the limit, which it can only
    do when the server says the stream ends (wsgi.input_terminated), and answers 413 at once."""
    url, _ = web_server
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    head = (b"POST /subscribe HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n")
    first = b"email=reader%40example.com&topics=marvel-news&name="
    chunk = b"a" * 65536
    sent = 0
    answer = b""
    with socket.create_connection((host, port), timeout=30) as connection:
        connection.sendall(head + b"%x\r\n%s\r\n" % (len(first), first))
        while sent < 64 * 1024 * 1024 and not answer:  # 64 MiB at most
            try:
                connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break  # closed after answering; the answer is waiting to be read
            sent += len(chunk)
            readable, _, _ = select.select([connection], [], [], 0)
            if readable:
                answer = connection.recv(4096)
        answer = answer or connection.recv(4096)

    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 8 * 1024 * 1024, f"{sent:,} bytes were taken before the answer"
    assert session.scalar(sa.select(sa.func.count()).select_from(Subscriber)) == 0
