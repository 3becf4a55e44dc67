"""Digest fan-out benchmark: N confirmed readers, one 'send now', until the sink has every message.

    .venv/bin/python -m bench.fanout                      # 100,000 readers, 3 runs
    .venv/bin/python -m bench.fanout --subscribers 2000 --runs 1   # the CI smoke run

It sets up PostgreSQL (a database of its own) and Redis (a db number of its
own), starts the Procfile's worker processes and a counting SMTP sink
(aiosmtpd), plans the digests with the real code, and waits until the sink
counted every message. In the same run it measures the naive baseline (stdlib
EmailMessage + one smtplib session per message) and, when Postfix's
smtp-source is installed, the C client's limit against the same sink.
Results go to bench/results/ as JSON and Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import psutil
import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TOPICS = ("marvel-news", "movie-news", "tv-news")
ARTICLES_PER_TOPIC = 8
SUMMARY = (
    "Hayley Atwell gave fans a brief look behind the scenes of Tom Cruise filming the new "
    "Mission Impossible movie as they wait for the long-delayed production to finally wrap up. "
) * 3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def progress(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


class Sink:
    """A counting SMTP sink in a subprocess: Postfix's C smtp-sink when installed, else bench/sink.py."""

    def __init__(self, kind: str = "auto") -> None:
        self.port = free_port()
        binary = shutil.which("smtp-sink") or ("/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").exists()
                                               else None)
        self.kind = "postfix" if kind == "auto" and binary else ("aiosmtpd" if kind == "auto" else kind)
        if self.kind == "postfix":
            if binary is None:
                raise SystemExit("smtp-sink not found: apt-get install postfix, or use --sink aiosmtpd")
            # -c prints "sess=N quit=N mesg=N" after each event; -u drops root.
            command = [binary, "-c", "-u", "nobody", f"127.0.0.1:{self.port}", "1024"]
            self.description = "Postfix smtp-sink (C)"
        else:
            command = [sys.executable, "-m", "bench.sink", str(self.port)]
            self.description = "aiosmtpd (bench/sink.py)"
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, bufsize=0)
        self.count = 0
        self._offset = 0  # messages counted before the current measure (smtp-sink never resets)
        self._latest = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        self._wait_listening()

    def _read(self) -> None:
        assert self.process.stdout is not None
        pending = b""
        while chunk := self.process.stdout.read(65536):
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            for line in reversed(lines):
                match = re.search(rb"mesg=(\d+)", line) or re.fullmatch(rb"(\d+)", line.strip())
                if match:
                    with self._lock:
                        self._latest = int(match.group(1))
                    break

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.05)
        raise RuntimeError("the SMTP sink did not start")

    def received(self) -> int:
        with self._lock:
            return self._latest

    def wait_for(self, total: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_report = time.monotonic()
        while (count := self.received()) < total:
            if self.process.poll() is not None:
                raise RuntimeError("the sink stopped")
            if time.monotonic() - last_report > 5:
                progress(f"  {count:,}/{total:,} messages at the sink")
                last_report = time.monotonic()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {count} of {total} messages arrived in time")
            time.sleep(0.02)
        self.count = self.received()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def base_environment(args: argparse.Namespace, smtp_port: int) -> dict[str, str]:
    """The service's settings every benchmark shares: its own database and Redis, the sink."""
    return {
        "DATABASE_URL": args.database_url,
        "CELERY_BROKER_URL": args.redis_url,
        "LIMITER_STORAGE_URL": args.redis_url,
        "SECRET_KEY": "benchmark-secret-key-0123456789",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "MAIL_FROM": "Marvel News <news@example.com>",
        "PUBLIC_BASE_URL": "https://newsletter.example.com",
        "SEED_DEMO_TOPICS": "false",
        "LOG_LEVEL": "WARNING",
        "INSTANCE_PATH": str(ROOT / "bench" / ".instance"),
    }


def environment(args: argparse.Namespace, smtp_port: int) -> dict[str, str]:
    return {
        **base_environment(args, smtp_port),
        "DIGEST_BATCH_SIZE": str(args.batch),
        "DELIVERY_GROUP_SIZE": str(args.group),
        "DIGEST_MAX_ARTICLES": "20",
    }


def reset_database(args: argparse.Namespace) -> None:
    url = sa.engine.make_url(args.database_url)
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {url.database} WITH (FORCE)"))
        connection.execute(sa.text(f"CREATE DATABASE {url.database}"))
    admin.dispose()
    redis.Redis.from_url(args.redis_url).flushdb()


def seed(app, subscribers: int) -> None:
    """Topics, articles from the last hours, and confirmed readers of one to three topics."""
    import flask_migrate

    from service.articles import ArticleInput, ingest_articles
    from service.extensions import db
    from service.models import Frequency, Subscriber, SubscriberStatus, Subscription, SubscriptionStatus
    from service.topics import seed_demo_topics

    with app.app_context():
        flask_migrate.upgrade()
        seed_demo_topics(db.session)
        now = datetime.now(UTC)
        tags = {"marvel-news": "marvel", "movie-news": "movies", "tv-news": "tv"}
        ingest_articles(
            db.session,
            [
                ArticleInput(
                    title=f"{slug} story {n}: See Tom Cruise and Marvel Star On Set",
                    url=f"https://www.example.com/{slug}/{n}",
                    published_at=now - timedelta(minutes=n + 1),
                    summary=SUMMARY,
                    author="Tyler Pisapia",
                    tags=[tags[slug]],
                    image_url=f"https://cdn.example.com/{slug}/{n}.jpg",
                )
                for slug in TOPICS
                for n in range(ARTICLES_PER_TOPIC)
            ],
        )
        db.session.commit()
        topic_ids = [
            db.session.scalar(
                sa.select(sa.text("id")).select_from(sa.text("topics")).where(sa.text(f"slug = '{slug}'"))
            )
            for slug in TOPICS
        ]
        since = now - timedelta(days=1)
        chunk = 10_000
        for start in range(0, subscribers, chunk):
            rows = [
                {
                    "email": f"reader{n:07d}@example.com",
                    "frequency": Frequency.DAILY,
                    "status": SubscriberStatus.CONFIRMED,
                    "token_epoch": 1,
                    "timezone": "UTC",
                    "confirmed_at": since,
                    "digest_since": since,
                    "created_at": since,
                    "soft_bounce_count": 0,
                    "pending_confirmations": 0,
                }
                for n in range(start, min(subscribers, start + chunk))
            ]
            db.session.execute(sa.insert(Subscriber), rows)
            ids = db.session.scalars(
                sa.select(Subscriber.id).where(Subscriber.email.in_([r["email"] for r in rows]))
            ).all()
            db.session.execute(
                sa.insert(Subscription),
                [
                    {
                        "subscriber_id": sid,
                        "topic_id": topic_ids[(sid + k) % 3],
                        "status": SubscriptionStatus.CONFIRMED,
                        "created_at": since,
                        "confirmed_at": since,
                    }
                    for sid in ids
                    for k in range(1 + sid % 3)
                ],
            )
            db.session.commit()
            progress(f"  seeded {min(subscribers, start + chunk):,} readers")
        # A production database has its statistics; without them the planner guesses.
        db.session.execute(sa.text("ANALYZE"))
        db.session.commit()


def peak_rss_mb(processes: list[psutil.Process]) -> float:
    """Largest peak resident set (VmHWM) among the worker processes and their pool children."""
    peak = 0
    for process in processes:
        for member in [process, *process.children(recursive=True)]:
            try:
                for line in Path(f"/proc/{member.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
            except (FileNotFoundError, psutil.NoSuchProcess):
                continue
    return peak / 1024


def run_fanout(args: argparse.Namespace, sink: Sink) -> dict[str, float]:
    from service import create_app
    from service.digests import DigestFilter
    from tasks.digests import plan_and_publish

    env = environment(args, sink.port)
    reset_database(args)
    app = create_app(env)
    progress(f"seeding {args.subscribers:,} readers")
    seed(app, args.subscribers)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tasks.worker",
                "worker",
                "--loglevel=WARNING",
                f"--concurrency={args.concurrency}",
                f"--hostname=bench{n}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n in range(args.workers)
    ]
    try:
        time.sleep(4)  # workers up
        handles = [psutil.Process(w.pid) for w in workers]
        before = sink.received()
        cpu_before = cpu_by_role(handles, sink)
        started = time.perf_counter()
        with app.app_context():
            planned = plan_and_publish(force=True, only=DigestFilter())
        planning = time.perf_counter() - started
        progress(f"  planned {planned:,} digests in {planning:.1f} s; sending")
        sink.wait_for(before + planned, timeout=args.timeout)
        total = time.perf_counter() - started
        rss = peak_rss_mb(handles)
        cpu = cpu_used_between(cpu_before, cpu_by_role(handles, sink))
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait()
    return {
        "messages": planned,
        "seconds": total,
        "planning_seconds": planning,
        "messages_per_second": planned / total,
        "peak_rss_mb_per_worker_process": rss,
        "cpu_seconds": cpu,
    }


def cpu_by_role(workers: list[psutil.Process], sink: Sink) -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by each process of the workers, PostgreSQL, Redis, the sink and
    this (planning) process: pid -> (role, seconds).

    Their shares of the fan-out's CPU say where the time goes: our Python, the
    database, the broker, or the SMTP server.
    """
    roles: dict[int, str] = {os.getpid(): "planner (this process)", sink.process.pid: "smtp sink"}
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            for member in [worker, *worker.children(recursive=True)]:
                roles[member.pid] = "workers"
    used: dict[int, tuple[str, float]] = {}
    for process in psutil.process_iter(["name"]):
        name = process.info["name"] or ""
        role = roles.get(process.pid) or ("postgresql" if name.startswith("postgres")
                                         else "redis" if name.startswith("redis-server") else None)
        if role is None:
            continue
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = process.cpu_times()
            used[process.pid] = (role, times.user + times.system)
    return used


def cpu_used_between(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
                     ) -> dict[str, float]:
    """CPU seconds per role between two readings (processes that ended meanwhile are not counted)."""
    totals: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        earlier = before.get(pid)
        spent = seconds - earlier[1] if earlier and earlier[0] == role else seconds
        totals[role] = totals.get(role, 0.0) + max(0.0, spent)
    return totals


def run_planning_alone(args: argparse.Namespace, sink: Sink) -> float:
    """Seconds to plan every reader's digest with nothing else running: the set-based SQL alone."""
    from service import create_app
    from service.config import get_settings
    from service.digests import plan_digests
    from service.extensions import db

    app = create_app(environment(args, sink.port))
    with app.app_context():
        db.session.execute(sa.text("DELETE FROM digest_items"))
        db.session.execute(sa.text("DELETE FROM deliveries"))
        db.session.execute(sa.text("UPDATE subscribers SET digest_since = confirmed_at"))
        db.session.commit()
    engine = sa.create_engine(args.database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text("VACUUM ANALYZE"))
    engine.dispose()
    with app.app_context():
        started = time.perf_counter()
        batches = plan_digests(db.session, get_settings(), force=True)
        planned = sum(len(batch.delivery_ids) for batch in batches)
        seconds = time.perf_counter() - started
    assert planned == args.subscribers, f"planned {planned} of {args.subscribers}"
    return seconds


def run_naive(args: argparse.Namespace, sink: Sink, count: int) -> dict[str, float]:
    """What a first implementation does: render, build with EmailMessage, one SMTP session each."""
    from service import create_app
    from service.mail.compose import DigestSection, render_digest
    from service.models import Article, Frequency, Subscriber, Topic

    app = create_app(environment(args, sink.port))
    with app.app_context():
        from service.config import get_settings

        settings = get_settings()
        topic = Topic(id=1, slug="marvel-news", name="Marvel News", description="")
        articles = [
            Article(
                id=n,
                title=f"Story {n}",
                url=f"https://www.example.com/{n}",
                summary=SUMMARY,
                author="Tyler Pisapia",
                image_url=f"https://cdn.example.com/{n}.jpg",
                published_at=datetime.now(UTC),
            )
            for n in range(20)
        ]
        before = sink.received()
        started = time.perf_counter()
        for n in range(count):
            reader = Subscriber(id=n + 1, email=f"naive{n}@example.com", name=None, frequency=Frequency.DAILY)
            rendered = render_digest(reader, [DigestSection(topic, articles)], settings)
            message = EmailMessage()
            message["From"], message["To"], message["Subject"] = (
                settings.MAIL_FROM,
                reader.email,
                rendered.subject,
            )
            message.set_content(rendered.text)
            message.add_alternative(rendered.html, subtype="html")
            with smtplib.SMTP("127.0.0.1", sink.port) as client:
                client.send_message(message)
        sink.wait_for(before + count, timeout=args.timeout)
        seconds = time.perf_counter() - started
    return {"messages": count, "seconds": seconds, "messages_per_second": count / seconds}


def run_smtp_source(sink: Sink, count: int) -> dict[str, float] | None:
    """Postfix's C client against the same sink: what the machine can do at all."""
    binary = shutil.which("smtp-source") or (
        "/usr/sbin/smtp-source" if Path("/usr/sbin/smtp-source").exists() else None
    )
    if binary is None:
        return None
    before = sink.received()
    started = time.perf_counter()
    subprocess.run(
        [
            binary,
            "-s",
            "8",
            "-l",
            "30000",
            "-m",
            str(count),
            "-f",
            "news@example.com",
            "-t",
            "reader@example.com",
            f"127.0.0.1:{sink.port}",
        ],
        check=True,
    )
    sink.wait_for(before + count, timeout=120)
    seconds = time.perf_counter() - started
    return {"messages": count, "seconds": seconds, "messages_per_second": count / seconds}


def cpu_share(runs: list[dict]) -> dict[str, float]:
    """Each role's share of all the CPU the fan-outs used, in percent."""
    totals: dict[str, float] = {}
    for run in runs:
        for role, seconds in run["cpu_seconds"].items():
            totals[role] = totals.get(role, 0.0) + seconds
    whole = sum(totals.values()) or 1.0
    return {role: round(100 * seconds / whole, 1) for role, seconds in sorted(totals.items())}


def summarise(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (Procfile: one)")
    parser.add_argument("--concurrency", type=int, default=2, help="pool size per worker (Procfile: 2)")
    parser.add_argument("--batch", type=int, default=500, help="DIGEST_BATCH_SIZE")
    parser.add_argument("--group", type=int, default=50, help="DELIVERY_GROUP_SIZE")
    parser.add_argument("--baseline", type=int, default=1000, help="messages for the naive baseline")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--sink", choices=("auto", "postfix", "aiosmtpd"), default="auto",
                        help="Postfix's smtp-sink when installed (auto), or the aiosmtpd sink")
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/newsletter_bench"
        ),
    )
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/8"))
    args = parser.parse_args()

    sink = Sink(args.sink)
    try:
        runs = []
        for n in range(args.runs):
            progress(f"run {n + 1}/{args.runs}: {args.subscribers:,} readers")
            runs.append(run_fanout(args, sink))
            progress(f"  {runs[-1]['messages_per_second']:.0f} messages/s")
        progress("planning alone, nothing else running")
        planning_alone = run_planning_alone(args, sink)
        progress(f"  {args.subscribers:,} readers planned in {planning_alone:.1f} s")
        progress(f"naive baseline: {args.baseline:,} messages")
        naive = run_naive(args, sink, min(args.baseline, args.subscribers))
        progress(f"  {naive['messages_per_second']:.0f} messages/s")
        source = run_smtp_source(sink, min(args.subscribers, 20_000))
    finally:
        sink.stop()

    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "sink": sink.description,
        "settings": {k: getattr(args, k)
                     for k in ("subscribers", "runs", "workers", "concurrency", "batch", "group")},
        "fanout_messages_per_second": summarise([r["messages_per_second"] for r in runs]),
        "fanout_seconds": summarise([r["seconds"] for r in runs]),
        "planning_seconds": summarise([r["planning_seconds"] for r in runs]),
        "planning_alone_seconds": planning_alone,
        "peak_rss_mb_per_worker_process": max(r["peak_rss_mb_per_worker_process"] for r in runs),
        "naive_baseline_messages_per_second": naive["messages_per_second"],
        "smtp_source_messages_per_second": source["messages_per_second"] if source else None,
        "cpu_share": cpu_share(runs),
        "runs": runs,
    }
    write(result)


def write(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"fanout-{result['settings']['subscribers']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    fan, seconds, plan = (
        result["fanout_messages_per_second"],
        result["fanout_seconds"],
        result["planning_seconds"],
    )
    source = result["smtp_source_messages_per_second"]
    source_text = f"{source:.0f}" if source else "not installed"
    table = "\n".join(
        [
            f"Fan-out of {result['settings']['subscribers']:,} digests, {result['settings']['runs']} run(s), "
            f"{result['machine']['cpus']} CPUs, Python {result['machine']['python']}, sink: {result['sink']}",
            "",
            "| measure | median | min | max |",
            "| --- | --- | --- | --- |",
            f"| messages/s | {fan['median']:.0f} | {fan['min']:.0f} | {fan['max']:.0f} |",
            f"| total seconds | {seconds['median']:.1f} | {seconds['min']:.1f} | {seconds['max']:.1f} |",
            f"| planning seconds, while the workers send | {plan['median']:.2f} | {plan['min']:.2f} "
            f"| {plan['max']:.2f} |",
            f"| planning seconds, alone | {result['planning_alone_seconds']:.2f} | | |",
            f"| peak RSS per worker process (MB) | {result['peak_rss_mb_per_worker_process']:.0f} | | |",
            f"| naive baseline (EmailMessage + smtplib), messages/s | "
            f"{result['naive_baseline_messages_per_second']:.0f} | | |",
            f"| C smtp-source to the same sink, messages/s | {source_text} | | |",
            "",
            "CPU share of the fan-out: "
            + ", ".join(f"{role} {share:.0f}%" for role, share in result["cpu_share"].items()),
            "",
        ]
    )
    stem.with_suffix(".md").write_text(table)
    print("\n" + table)


if __name__ == "__main__":
    main()
