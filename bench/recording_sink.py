"""An SMTP sink that counts messages as they arrive and can say who each one was for.

Postfix's C ``smtp-sink`` (Debian package ``postfix``) when installed: ``-c``
prints a running "mesg=N" counter, ``-D`` appends every message to a dump file
(in /dev/shm when there is one) whose ``X-Rcpt-Args`` lines name the envelope
recipients. Without it, the aiosmtpd sink of bench/sink.py counts (it tops out
near 575 messages/s here) and recipients cannot be listed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def smtp_sink_binary() -> str | None:
    found = shutil.which("smtp-sink")
    if found:
        return found
    return "/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").exists() else None


class RecordingSink:
    """A sink subprocess on a free port; ``count`` follows the messages it accepted."""

    def __init__(self, port: int, kind: str = "auto") -> None:
        self.port = port
        binary = smtp_sink_binary()
        if kind == "auto":
            kind = "postfix" if binary else "aiosmtpd"
        if kind == "postfix" and binary is None:
            raise SystemExit("smtp-sink not found (apt-get install -y postfix), or pass --sink aiosmtpd")
        self.kind = kind
        self.dump: Path | None = None
        self._dump_dir: str | None = None
        if kind == "postfix":
            self._dump_dir = tempfile.mkdtemp(
                prefix="bench-subscribe-sink-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None
            )
            os.chmod(self._dump_dir, 0o777)  # smtp-sink drops root for nobody before it writes
            self.dump = Path(self._dump_dir) / "messages"
            command = [binary, "-c", "-D", str(self.dump), f"127.0.0.1:{port}", "1024"]
            if os.geteuid() == 0:
                command[1:1] = ["-u", "nobody"]
            self.description = "Postfix smtp-sink (C), recipients from its -D dump"
        else:
            command = [sys.executable, "-m", "bench.sink", str(port)]
            self.description = "aiosmtpd (bench/sink.py), counting only"
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, bufsize=0)
        self._count = 0
        self._timeline: list[tuple[float, int]] = []  # (perf_counter, count) at each change
        self._lock = threading.Lock()
        threading.Thread(target=self._follow, daemon=True).start()
        self._wait_listening()

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def _follow(self) -> None:
        """Keep the newest counter the sink printed ('sess=.. quit=.. mesg=N' or a bare N)."""
        assert self.process.stdout is not None
        pending = b""
        while chunk := self.process.stdout.read(65536):
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            for line in reversed(lines):
                match = re.search(rb"mesg=(\d+)", line) or re.fullmatch(rb"\s*(\d+)\s*", line)
                if match:
                    now, count = time.perf_counter(), int(match.group(1))
                    with self._lock:
                        if count != self._count:
                            self._count = count
                            self._timeline.append((now, count))
                    break

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the SMTP sink exited with {self.process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.05)
        raise RuntimeError("the SMTP sink did not start listening")

    def wait_for(
        self, total: int, timeout: float, report: Callable[[int], None] | None = None, every: float = 5.0
    ) -> float:
        """Block until ``total`` messages arrived; returns the perf_counter time the last one was seen."""
        deadline = time.monotonic() + timeout
        last_report = time.monotonic()
        while (count := self.count) < total:
            if self.process.poll() is not None:
                raise RuntimeError("the SMTP sink stopped")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {count:,} of {total:,} messages at the sink after {timeout:.0f} s")
            if report is not None and time.monotonic() - last_report >= every:
                report(count)
                last_report = time.monotonic()
            time.sleep(0.005)
        return time.perf_counter()

    def rate_between(self, low: int, high: int) -> float | None:
        """Messages per second between the moments the count first reached ``low`` and ``high``."""
        with self._lock:
            timeline = list(self._timeline)
        reached = {}
        for when, count in timeline:
            for mark in (low, high):
                if count >= mark and mark not in reached:
                    reached[mark] = when
        if low not in reached or high not in reached or reached[high] <= reached[low]:
            return None
        return (high - low) / (reached[high] - reached[low])

    def recipients(self) -> Counter[str] | None:
        """How many messages each envelope recipient got so far, or None if this sink cannot tell."""
        if self.dump is None:
            return None
        counts: Counter[str] = Counter()
        if not self.dump.exists():
            return counts
        with self.dump.open("rb") as dump:
            for line in dump:
                if line.startswith(b"X-Rcpt-Args: "):
                    address = line[13:].strip().split(b" ", 1)[0].strip(b"<>")
                    counts[address.decode("utf-8", "replace").lower()] += 1
        return counts

    def dump_bytes(self) -> int:
        return self.dump.stat().st_size if self.dump is not None and self.dump.exists() else 0

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self._dump_dir is not None:
            shutil.rmtree(self._dump_dir, ignore_errors=True)
