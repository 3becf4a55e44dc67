"""Load generators for bench/subscribe.py: exactly N form posts to POST /subscribe, one address each.

``wrk`` (C, Debian package ``wrk``) with bench/subscribe.lua is preferred: it
leaves the two cores to the service. Without it, a lean asyncio client with
keep-alive connections does the same job at a higher CPU cost, and the results
say which one ran. Addresses look like ``<prefix>-<thread>-<n>@example.com``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import shutil
import signal
import statistics
import subprocess
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

LUA_SCRIPT = Path(__file__).resolve().parent / "subscribe.lua"


class LoadError(RuntimeError):
    """The generator could not finish its requests (connection errors, a timeout)."""


@dataclass
class LoadResult:
    generator: str
    requests: int
    seconds: float
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    errors: dict[str, int] = field(default_factory=dict)
    generator_cpu_ms_per_request: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status.startswith("5"))

    @property
    def not_ok(self) -> int:
        """Answers other than 2xx and 3xx."""
        return sum(n for status, n in self.statuses.items() if not status.startswith(("2", "3")))

    def as_dict(self) -> dict:
        return {**asdict(self), "server_errors": self.server_errors, "not_ok": self.not_ok}


_CONNECTION_NOTE = {False: ", kept alive", True: ", a new one per post"}


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def generate(
    kind: str, url: str, total: int, prefix: str, topic: str, connections: int, threads: int, timeout: float,
    *, new_connections: bool = False,
) -> LoadResult:
    """Send ``total`` posts with ``kind`` ('wrk' or 'python') and wait for every answer.

    With ``new_connections`` each post asks for its connection to be closed (``Connection:
    close``) and the next one connects anew, as posts from many readers' browsers arrive.
    Otherwise each of the ``connections`` is kept alive for all its posts, served by the web
    process that accepted it (granian's processes each listen on a socket of their own, and the
    kernel spreads new connections over them).
    """
    if kind == "wrk":
        return run_wrk(url, total, prefix, topic, connections, threads, timeout, new_connections)
    return asyncio.run(run_python(url, total, prefix, topic, connections, timeout, new_connections))


def run_wrk(
    url: str, total: int, prefix: str, topic: str, connections: int, threads: int, timeout: float,
    new_connections: bool = False,
) -> LoadResult:
    binary = wrk_binary()
    if binary is None:
        raise LoadError("wrk is not installed (apt-get install -y wrk), or pass --generator python")
    threads = max(1, min(threads, connections, total))
    command = [
        binary,
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{int(timeout) + 60}s",
        "--timeout",
        "30s",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        str(total),
        prefix,
        topic,
        str(threads),
        *(["close"] if new_connections else []),
    ]
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    assert process.stdout is not None
    finished: list[float] = []
    report: dict | None = None

    def watchdog() -> None:
        # wrk sleeps for its whole -d unless interrupted; bound the wait ourselves.
        if process.poll() is None and len(finished) < threads:
            process.send_signal(signal.SIGINT)

    timer = threading.Timer(timeout, watchdog)
    timer.start()
    try:
        for line in process.stdout:
            if line.strip() == "thread-done":
                finished.append(time.perf_counter())
                if len(finished) == threads:
                    process.send_signal(signal.SIGINT)  # every answer is in: make wrk report now
            elif line.startswith("{"):
                report = json.loads(line)
        process.wait()
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    if report is None or len(finished) < threads:
        stderr = process.stderr.read() if process.stderr else ""
        raise LoadError(
            f"wrk did not finish its {total} requests (threads done: {len(finished)}/{threads}; "
            f"report: {report}; stderr: {stderr.strip()[-500:]})"
        )
    seconds = max(finished) - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    return LoadResult(
        generator=f"wrk ({threads} thread(s), {connections} connections{_CONNECTION_NOTE[new_connections]})",
        requests=sum(report["statuses"].values()),
        seconds=seconds,
        requests_per_second=total / seconds,
        p50_ms=report["p50_us"] / 1000,
        p90_ms=report["p90_us"] / 1000,
        p99_ms=report["p99_us"] / 1000,
        max_ms=report["max_us"] / 1000,
        statuses=dict(sorted(report["statuses"].items())),
        errors={k: v for k, v in report["errors"].items() if v},
        generator_cpu_ms_per_request=1000 * wrk_cpu / total,
    )


def ceiling(url: str, connections: int, threads: int, seconds: int) -> dict[str, float] | None:
    """GET /healthz with wrk on the same server: what the web server and Flask do with no work at all."""
    binary = wrk_binary()
    if binary is None:
        return None
    command = [binary, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency", url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\b", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\b", output, re.MULTILINE)
    if not (rate and p50 and p99):
        return None
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "requests_per_second": float(rate[1]),
        "p50_ms": float(p50[1]) * scale[p50[2]],
        "p99_ms": float(p99[1]) * scale[p99[2]],
    }


async def run_python(
    url: str, total: int, prefix: str, topic: str, connections: int, timeout: float,
    new_connections: bool = False,
) -> LoadResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    numbers = iter(range(1, total + 1))  # shared by the clients; next() never interleaves in one loop
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    started = time.perf_counter()
    cpu_started = time.process_time()
    clients = [
        _client(host, port, numbers, prefix, topic, latencies, statuses, errors, new_connections)
        for _ in range(min(connections, total))
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*clients), timeout)
    except TimeoutError:
        raise LoadError(f"only {len(latencies)} of {total} answers within {timeout:.0f} s") from None
    seconds = time.perf_counter() - started
    if not latencies:
        raise LoadError(f"no answer at all: {dict(errors)}")
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return LoadResult(
        generator=f"python asyncio ({connections} connections{_CONNECTION_NOTE[new_connections]})",
        requests=len(latencies),
        seconds=seconds,
        requests_per_second=total / seconds,
        p50_ms=cuts[49] * 1000,
        p90_ms=cuts[89] * 1000,
        p99_ms=cuts[98] * 1000,
        max_ms=max(latencies) * 1000,
        statuses=dict(sorted(statuses.items())),
        errors=dict(errors),
        generator_cpu_ms_per_request=1000 * (time.process_time() - cpu_started) / total,
    )


async def _client(
    host: str,
    port: int,
    numbers,
    prefix: str,
    topic: str,
    latencies: list[float],
    statuses: Counter[str],
    errors: Counter[str],
    new_connections: bool = False,
) -> None:
    reader = writer = None
    close = "Connection: close\r\n" if new_connections else ""
    for n in numbers:
        body = f"email={prefix}-0-{n}%40example.com&topics={topic}".encode()
        request = (
            f"POST /subscribe HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n{close}\r\n"
        ).encode() + body
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            sent = time.perf_counter()
            writer.write(request)
            status, keep_alive = await _read_response(reader)
            latencies.append(time.perf_counter() - sent)
            statuses[status] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError) as error:
            errors[type(error).__name__] += 1
            keep_alive = False
        if not keep_alive and writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[str, bool]:
    status_line = await reader.readline()
    if not status_line:
        raise asyncio.IncompleteReadError(b"", None)
    version, status = status_line.split(b" ", 2)[:2]
    headers: dict[bytes, bytes] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    if headers.get(b"transfer-encoding") == b"chunked":
        while size := int((await reader.readline()).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readline()
    else:
        await reader.readexactly(int(headers.get(b"content-length", b"0")))
    keep_alive = headers.get(b"connection") != b"close" and version == b"HTTP/1.1"
    return status.decode(), keep_alive
