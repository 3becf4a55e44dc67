"""The processes of bench/subscribe.py: the SMTP sink, the web server (granian) and the Celery worker,
started from the Procfile's own lines with the benchmark's environment."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import psutil
import sqlalchemy as sa

from bench import cpu_share
from bench.fanout import base_environment, free_port, peak_rss_mb
from bench.recording_sink import RecordingSink

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"
WEB = "web (granian)"  # cpu_share's name for the web server's processes


def environment(args: argparse.Namespace, smtp_port: int, http_port: int) -> dict[str, str]:
    """The service's settings for the benchmark: production-like, with the rate limits raised.

    The limits keep their shape (two windows per IP, two per address, one per
    domain), so every post still makes the same Redis round trips; they are only
    too high to trip, since every post comes from 127.0.0.1 and @example.com.
    CSRF does not apply to POST /subscribe, posts without Origin or Referer pass
    the origin check, posts without the form's timestamp field skip the fill-time
    check (as a publisher's own form does), the honeypot stays empty, and proof
    of work is off by default (POW_REQUIRED).
    """
    return {
        **base_environment(args, smtp_port),
        "SUBSCRIBE_LIMIT_PER_IP": "100000000/minute;1000000000/hour",
        "SUBSCRIBE_LIMIT_PER_DOMAIN": "1000000000/hour",
        "PORT": str(http_port),
    }


def without_server_options(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` less granian's own GRANIAN_* settings, which it reads on top of the Procfile's line:
    one left in the caller's environment must not change a run unrecorded (--web-args records them)."""
    return {name: value for name, value in environ.items() if not name.startswith("GRANIAN_")}


def procfile_command(process: str, env: Mapping[str, str]) -> list[str]:
    """The Procfile's line for ``process``, with ${VAR:-default} expanded from ``env``."""
    for line in PROCFILE.read_text().splitlines():
        name, colon, command = line.partition(":")
        if colon and name.strip() == process:
            command = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m[1]) or m[2], command)
            command = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m[1], ""), command)
            argv = shlex.split(command)
            local = Path(sys.executable).parent / argv[0]
            return [str(local) if local.exists() else argv[0], *argv[1:]]
    raise SystemExit(f"the Procfile has no '{process}' line")


class Stack:
    """The sink, the web server and the Celery worker, each a subprocess with its log in a temp folder."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.logs = Path(tempfile.mkdtemp(prefix="bench-subscribe-logs-"))
        self.sink = RecordingSink(free_port(), args.sink)
        self.http_port = free_port()
        self.env = {**without_server_options(os.environ), **environment(args, self.sink.port, self.http_port)}
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.web_command = procfile_command("web", self.env) + shlex.split(getattr(args, "web_args", ""))
        self.worker_command = procfile_command("worker", self.env)
        self.web: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.worker_peak_mb = 0.0

    def _spawn(self, command: list[str], log_name: str) -> subprocess.Popen:
        log = (self.logs / log_name).open("ab")
        return subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def start_web(self) -> None:
        self.web = self._spawn(self.web_command, "web.log")
        workers = web_workers(self.web_command)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.web.poll() is not None:
                raise RuntimeError(f"the web server exited:\n{self.tail('web.log')}")
            # Granian logs each worker's start once it has loaded the app; the first to answer
            # /healthz may be alone yet.
            if (self.logs / "web.log").read_text(errors="replace").count("Started worker-") < workers:
                time.sleep(0.2)
                continue
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the web server did not answer /healthz:\n{self.tail('web.log')}")

    def web_workers(self) -> list[psutil.Process]:
        assert self.web is not None
        return psutil.Process(self.web.pid).children()

    def classifier(self) -> cpu_share.Classifier:
        """Tells the web server's and the worker's processes apart, for cpu_share."""
        web = {p.pid for p in _tree(self.web)}
        worker = {p.pid for p in _tree(self.worker)}
        database = sa.engine.make_url(self.args.database_url).database or ""

        def classify(process: psutil.Process) -> str | None:
            if process.pid in web:
                return WEB
            if process.pid in worker:
                return "worker (celery)"
            if process.pid == self.sink.process.pid:
                return "smtp sink"
            if process.name().startswith("postgres") and f" {database} " in " ".join(process.cmdline()):
                return "postgresql (our database's backends)"
            return None

        return classify

    def start_worker(self) -> None:
        log = self.logs / "worker.log"
        start = log.stat().st_size if log.exists() else 0
        self.worker = self._spawn(self.worker_command, "worker.log")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.worker.poll() is not None:
                raise RuntimeError(f"the worker exited:\n{self.tail('worker.log')}")
            with log.open("rb") as text:
                text.seek(start)
                if b" ready." in text.read():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the worker did not say it was ready:\n{self.tail('worker.log')}")

    def stop_worker(self) -> None:
        if self.worker is None:
            return
        self.worker_peak_mb = max(self.worker_peak_mb, peak_rss_mb([psutil.Process(self.worker.pid)]))
        _stop(self.worker)
        self.worker = None

    def stop(self) -> None:
        self.stop_worker()
        if self.web is not None:
            _stop(self.web)
            self.web = None
        self.sink.stop()
        shutil.rmtree(self.logs, ignore_errors=True)

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / name
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def web_workers(command: list[str]) -> int:
    """How many worker processes granian starts: the last --workers N or --workers=N (--web-args
    come last, and the last counts, as for its option parser), else its default of 1."""
    positions = [i for i, word in enumerate(command) if word == "--workers" or word.startswith("--workers=")]
    if not positions:
        return 1
    last = command[positions[-1]]
    return int(last.partition("=")[2] if "=" in last else command[positions[-1] + 1])


def _tree(process: subprocess.Popen | None) -> list[psutil.Process]:
    if process is None or process.poll() is not None:
        return []
    parent = psutil.Process(process.pid)
    return [parent, *parent.children(recursive=True)]


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (warm shutdown for Celery, graceful for granian), then SIGKILL after 30 s."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
