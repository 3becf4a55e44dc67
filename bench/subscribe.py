"""Subscribe throughput: POST /subscribe under granian as the Procfile runs it, until every
confirmation email reached the sink.

    .venv/bin/python -m bench.subscribe                         # 20,000 posts, 3 runs
    .venv/bin/python -m bench.subscribe --requests 300 --runs 1 --warmup 20   # smoke run, ~25 s
    .venv/bin/python -m bench.subscribe --runs 3 --profile      # and py-spy profiles of the web workers

Each run uses a PostgreSQL database of its own (newsletter_bench_subscribe,
re-created) and a Redis db number of its own (9, flushed), the Procfile's `web`
line (granian, WEB_CONCURRENCY=2 workers x WEB_THREADS=2 threads unless set)
and `worker` line (celery, --concurrency=2), and an SMTP sink (Postfix's
smtp-sink, else bench/sink.py, which cannot list recipients). The posts come
from `wrk` (Debian package wrk) with bench/subscribe.lua, else from a Python
asyncio client (bench/loadgen.py). After a warm-up, and GET /healthz for scale,
two phases of N distinct addresses each:

- whole stack: the worker runs during the load, as in production; requests/s
  and latency, then the wait until the sink has every confirmation: the
  sustained subscriptions/s with every confirmation delivered (first post to
  last email).
- web tier alone: the worker is stopped, so confirmations queue in Redis; the
  same web figures, and the CPU each process used per post. Then the worker
  starts and drains the queue: the worker's own confirmations/s.

Then the database must hold every address with one pending subscription and one
sent confirmation, the sink must have got exactly one message per address, and
no answer may be a 5xx. The form's defences stay on; only the rate limits are
raised through the environment (see `environment`). Results go to
bench/results/subscribe-<N>.{json,md}, or subscribe-<N>-new-connections.{json,md}
with --new-connections (a connection per post instead of kept-alive ones); with
--web-args (options added to the end of the Procfile's web line, e.g.
--web-args='--workers 3', the "=" needed since the value starts with "--") those
options are in the name too: subscribe-<N>-workers-3.{json,md}. Granian's own
GRANIAN_* variables are left out of the environment, so only --web-args adds
options.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import psutil
import sqlalchemy as sa

from bench import cpu_share
from bench.fanout import peak_rss_mb, progress, reset_database, summarise
from bench.loadgen import LoadError, LoadResult, ceiling, generate, wrk_binary
from bench.profile_summary import summarise_profile
from bench.subscribe_stack import WEB, Stack, procfile_command

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TOPIC = "marvel-news"


def prepare_database(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """A fresh database with the schema and the three demo topics; a flushed Redis db."""
    import flask_migrate

    from service import create_app
    from service.extensions import db
    from service.topics import seed_demo_topics

    reset_database(args)
    app = create_app({k: v for k, v in env.items() if k != "PORT"})
    with app.app_context():
        flask_migrate.upgrade()
        seed_demo_topics(db.session)
        db.session.commit()
        db.engine.dispose()


def load(args: argparse.Namespace, stack: Stack, total: int, prefix: str) -> LoadResult:
    return generate(
        args.generator, stack.url, total, prefix, TOPIC, args.connections, args.threads, timeout=args.timeout,
        new_connections=args.new_connections,
    )


def verify(
    args: argparse.Namespace, prefix: str, expected: int, recipients: Counter[str] | None
) -> dict[str, object]:
    """Every address stored with its subscription and one sent confirmation; one message each at the sink."""
    engine = sa.create_engine(args.database_url)
    pattern = {"p": f"{prefix}-%"}
    with engine.connect() as connection:
        emails = set(
            connection.scalars(sa.text("SELECT email FROM subscribers WHERE email LIKE :p"), pattern)
        )
        subscriptions = connection.scalar(
            sa.text(
                "SELECT count(*) FROM subscriptions JOIN subscribers s ON s.id = subscriber_id "
                "WHERE s.email LIKE :p AND subscriptions.status = 'pending'"
            ),
            pattern,
        )
        states = dict(
            connection.execute(
                sa.text(
                    "SELECT d.state, count(*) FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id "
                    "WHERE s.email LIKE :p AND d.kind = 'confirmation' GROUP BY d.state"
                ),
                pattern,
            ).all()
        )
        not_one = connection.scalar(
            sa.text(
                "SELECT count(*) FROM subscribers s WHERE s.email LIKE :p AND (SELECT count(*) "
                "FROM deliveries d WHERE d.subscriber_id = s.id AND d.kind = 'confirmation') <> 1"
            ),
            pattern,
        )
    engine.dispose()
    result: dict[str, object] = {
        "subscribers_stored": len(emails),
        "pending_subscriptions": subscriptions,
        "confirmation_deliveries": states,
        "subscribers_without_exactly_one_confirmation": not_one,
    }
    ok = (
        len(emails) == expected
        and subscriptions == expected
        and states == {"sent": expected}
        and not_one == 0
    )
    if recipients is not None:
        mine = {address: n for address, n in recipients.items() if address.startswith(f"{prefix}-")}
        result["sink_addresses"] = len(mine)
        result["sink_addresses_not_once"] = sum(1 for n in mine.values() if n != 1)
        result["sink_matches_database"] = set(mine) == emails
        ok = ok and len(mine) == expected and result["sink_addresses_not_once"] == 0 and set(mine) == emails
    result["ok"] = ok
    return result


def run_once(args: argparse.Namespace, number: int) -> dict[str, object]:
    stack = Stack(args)
    n = args.requests
    code = code_version()  # each run starts the web server and the worker anew, from the tree as it is now
    try:
        prepare_database(args, stack.env)
        stack.start_web()
        stack.start_worker()
        progress(f"  {' '.join(stack.web_command)}; sink: {stack.sink.description}")
        expected = 0
        if args.warmup:
            load(args, stack, args.warmup, f"w{number}")
            expected += args.warmup
            stack.sink.wait_for(expected, args.timeout)
            progress(f"  warmed up with {args.warmup} posts")
        healthz = ceiling(f"{stack.url}/healthz", args.connections, args.threads, 5)
        if healthz:
            progress(
                f"  GET /healthz on the same server: {healthz['requests_per_second']:.0f} requests/s, "
                f"p99 {healthz['p99_ms']:.1f} ms"
            )

        progress(f"  whole stack: {n:,} posts with the worker running")
        started = time.perf_counter()
        stacked, stacked_cpu = measured_load(args, stack, n, f"s{number}")
        load_done = time.perf_counter()
        during = stack.sink.count - expected
        progress(f"  {_describe(stacked)}; {during:,} confirmations already delivered; waiting for the rest")
        expected += n
        last = stack.sink.wait_for(expected, args.timeout, _reporter(expected, n))
        end_to_end = last - started
        progress(
            f"  every confirmation delivered {end_to_end:.1f} s after the first post: "
            f"{n / end_to_end:.0f} subscriptions/s sustained"
        )

        stack.stop_worker()
        progress(f"  web tier alone: {n:,} posts, the worker stopped")
        alone, alone_cpu = measured_load(args, stack, n, f"a{number}")
        progress(
            f"  {_describe(alone)}; CPU ms per post {alone_cpu['cpu_ms_per_request']}, "
            f"machine busy {alone_cpu['machine_busy']:.0%}, web processes' shares of the web CPU "
            f"{alone_cpu['web_process_cpu_percent']} %; starting the worker to drain"
        )
        web_peak = peak_rss_mb(stack.web_workers())
        stack.start_worker()
        stack.sink.wait_for(expected + n, args.timeout, _reporter(expected + n, n))
        # Between 10% and 90% of the queue: the worker's pace, without its start and its tail.
        drain_rate = stack.sink.rate_between(expected + n // 10, expected + n - n // 10)
        expected += n
        progress(f"  the worker alone delivered {drain_rate or 0:.0f} confirmations/s")

        recipients = stack.sink.recipients()
        checks = {
            "whole_stack": verify(args, f"s{number}", n, recipients),
            "web_alone": verify(args, f"a{number}", n, recipients),
        }
        for phase, check in checks.items():
            progress(f"  check {phase}: {'ok' if check['ok'] else 'FAILED'} {check}")
        profile = run_profile(args, stack, number) if args.profile and number == 1 else None
        stack.stop_worker()
        return {
            "code": code,
            "healthz_ceiling": healthz,
            "web_alone": {**alone.as_dict(), **alone_cpu},
            "whole_stack": {**stacked.as_dict(), **stacked_cpu},
            "end_to_end_seconds": end_to_end,
            "sustained_subscriptions_per_second": n / end_to_end,
            "confirmations_during_load": during,
            "drain_after_load_per_second": (n - during) / (last - load_done) if last > load_done else None,
            "worker_alone_confirmations_per_second": drain_rate,
            "peak_rss_mb_per_web_worker": web_peak,
            "peak_rss_mb_per_worker_process": stack.worker_peak_mb,
            "sink": stack.sink.description,
            "sink_dump_bytes": stack.sink.dump_bytes(),
            "checks": checks,
            "profile": profile,
        }
    except Exception:
        progress(f"  web log:\n{stack.tail('web.log')}\n  worker log:\n{stack.tail('worker.log')}")
        raise
    finally:
        stack.stop()


def measured_load(
    args: argparse.Namespace, stack: Stack, total: int, prefix: str
) -> tuple[LoadResult, dict[str, object]]:
    """``load``, and the CPU each process group used meanwhile, per post."""
    classify = stack.classifier()
    web_pids = [process.pid for process in stack.web_workers()]
    before = cpu_share.snapshot(classify)
    result = load(args, stack, total, prefix)
    after = cpu_share.snapshot(classify)
    return result, {**cpu_share.difference(before, after, result.seconds, total),
                    "web_process_cpu_percent": _split_over(web_pids, before, after)}


def _split_over(pids: list[int], before: tuple[float, dict], after: tuple[float, dict]) -> list[float]:
    """Each web process's share of the web tier's CPU in a phase, busiest first: about equal
    when the connections are spread over the processes, near 100 for one when they all sit on
    one (a kept-alive connection stays with the process that accepted it)."""
    used = [max(0.0, after[1][pid][1] - before[1].get(pid, ("", 0.0))[1]) for pid in pids if pid in after[1]]
    total = sum(used)
    return sorted((round(100 * cpu / total, 1) for cpu in used), reverse=True) if total else []


def _describe(result: LoadResult) -> str:
    return (
        f"{result.requests_per_second:.0f} requests/s, p50 {result.p50_ms:.1f} ms, "
        f"p99 {result.p99_ms:.1f} ms, statuses {result.statuses}"
    )


def _reporter(expected: int, batch: int):  # type: ignore[no-untyped-def]
    return lambda count: progress(f"    {count - expected + batch:,}/{batch:,} confirmations at the sink")


def run_profile(args: argparse.Namespace, stack: Stack, number: int) -> dict[str, object]:
    """py-spy on every web worker during a web-alone load, wall clock (with idle) and CPU.

    Every worker, because a kept-alive connection stays with the worker that accepted it and
    one of them may serve none (docs/benchmarks.md, "Session 8"); each kind's samples are
    merged over the workers.
    """
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy (or '.[bench]')")
    stack.stop_worker()
    workers = stack.web_workers()
    RESULTS.mkdir(parents=True, exist_ok=True)
    pattern = ("-new-connections" if args.new_connections else "") + options_suffix(args.web_args)
    outputs = {
        # The raw stacks are large; *.tmp keeps them out of git (see .gitignore).
        kind: RESULTS / f"subscribe-profile-{kind}-{args.requests}{pattern}.raw.tmp"
        for kind in ("wall", "cpu")
    }
    recorders: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
    for kind, output in outputs.items():
        for worker in workers:
            part = output.with_name(output.name.replace(".raw.tmp", f".{worker.pid}.raw.tmp"))
            command = [py_spy, "record", "--pid", str(worker.pid), "--rate", "100", "--nonblocking",
                       "--format", "raw", "--output", str(part)]
            # Wall clock: every sample, waiting included. CPU: py-spy's default, which leaves out
            # threads the kernel reports as waiting; not all: in session 9 it still counted the
            # main thread's epoll wait and the socket calls, so read its leaves with care. Not
            # --gil: that counted the waits in psycopg, which releases the GIL, as the GIL holder's.
            if kind == "wall":
                command.append("--idle")
            log = (stack.logs / f"py-spy-{kind}.log").open("ab")
            recorders.append((kind, part, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)))
    try:
        time.sleep(1)
        progress(f"  profiling {len(workers)} web worker(s) under {args.requests:,} more posts, "
                 "worker stopped")
        result = load(args, stack, args.requests, f"p{number}")
    finally:
        for _, _, recorder in recorders:
            recorder.send_signal(signal.SIGINT)
        for _, _, recorder in recorders:
            try:
                recorder.wait(timeout=60)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()
        for kind, output in outputs.items():
            parts = [part for part_kind, part, _ in recorders if part_kind == kind and part.exists()]
            output.write_text("".join(part.read_text() for part in parts))
            for part in parts:
                part.unlink()
    progress(f"  under the profiler: {result.requests_per_second:.0f} requests/s, p99 {result.p99_ms:.1f} ms")
    titles = {
        "wall": "of every web worker, wall clock (--idle: waits on PostgreSQL and Redis included)",
        "cpu": "of every web worker, CPU (py-spy's default: threads it sees as waiting left out)",
    }
    summaries = {
        kind: summarise_profile(path, f"{titles[kind]}, {args.requests:,} posts")
        for kind, path in outputs.items()
        if path.exists()
    }
    for kind, summary in summaries.items():
        (RESULTS / f"subscribe-profile-{kind}-{args.requests}{pattern}.md").write_text(summary["markdown"])
        print(f"\n{summary['markdown']}")
    return {"load": result.as_dict(), **{kind: s["categories"] for kind, s in summaries.items()}}


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def database_facts(url: str) -> dict[str, str]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        facts = {
            "postgresql": connection.scalar(sa.text("SHOW server_version")),
            "synchronous_commit": connection.scalar(sa.text("SHOW synchronous_commit")),
        }
    engine.dispose()
    return facts


def code_version(commit: str = "HEAD") -> dict[str, object]:
    """The commit, a hash of the trees the service runs from (service, tasks, templates, migrations),
    and whether they had uncommitted changes."""

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    folders = ("service", "tasks", "email_templates", "migrations")
    trees = git("rev-parse", *(f"{commit}:{folder}" for folder in folders))
    changed = git("status", "--porcelain", "--", *folders) if commit == "HEAD" else ""
    return {
        "commit": git("rev-parse", "--short", commit),
        "service_tree": hashlib.sha1(trees.encode()).hexdigest()[:12],
        "uncommitted_service_changes": bool(changed),
    }


def same_code(runs: list[dict]) -> bool:
    """Every run started from the same service code (other commits, e.g. of results, do not count)."""
    first = runs[0]["code"]
    return all(
        r["code"]["service_tree"] == first["service_tree"] and not r["code"]["uncommitted_service_changes"]
        for r in runs
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000, help="posts per phase (distinct addresses)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections")
    parser.add_argument("--new-connections", action="store_true",
                        help="a new connection per post (Connection: close), as from many readers' browsers; "
                             "by default each connection is kept alive for all its posts")
    parser.add_argument("--web-args", default="",
                        help="options added to the end of the Procfile's web line, e.g. "
                             "--web-args='--workers 3' (with '='; default: none, the line as it is)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--warmup", type=int, default=200, help="posts before measuring (0: none)")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--sink", choices=("auto", "postfix", "aiosmtpd"), default="auto")
    parser.add_argument("--profile", action="store_true", help="py-spy the web workers after run 1")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for any one wait")
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "BENCH_SUBSCRIBE_DATABASE_URL",
            "postgresql+psycopg://postgres@127.0.0.1:5432/newsletter_bench_subscribe",
        ),
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("BENCH_SUBSCRIBE_REDIS_URL", "redis://127.0.0.1:6379/9")
    )
    args = parser.parse_args()
    if args.generator == "auto":
        args.generator = "wrk" if wrk_binary() else "python"
        if args.generator == "python":
            progress("wrk not found (apt-get install -y wrk): using the Python client, which shares the CPUs")
    elif args.generator == "wrk" and wrk_binary() is None:
        raise SystemExit("wrk not found: apt-get install -y wrk, or pass --generator python")

    started = datetime.now(UTC)
    host = machine()
    runs = []
    for number in range(1, args.runs + 1):
        progress(
            f"run {number}/{args.runs}: {args.requests:,} posts per phase, {args.connections} connections"
        )
        try:
            runs.append(run_once(args, number))
        except LoadError as error:
            raise SystemExit(f"the load generator failed: {error}") from None
    web = procfile_command("web", {**os.environ, "PORT": "<port>"})
    result = {
        "when": started.isoformat(timespec="seconds"),
        "machine": {**host, **database_facts(args.database_url)},
        "code": runs[0]["code"],
        "same_code_in_every_run": same_code(runs),
        "sink": runs[0]["sink"],
        "generator": runs[0]["whole_stack"]["generator"],
        "web": " ".join([Path(web[0]).name, *web[1:], args.web_args]).strip(),
        "worker": " ".join(procfile_command("worker", os.environ)[1:]),
        "settings": {k: getattr(args, k)
                     for k in ("requests", "runs", "connections", "new_connections", "web_args",
                               "threads", "warmup")},
        "summary": summary(runs),
        "all_checks_ok": all(c["ok"] for r in runs for c in r["checks"].values()),
        "server_errors": sum(r[p]["server_errors"] for r in runs for p in ("web_alone", "whole_stack")),
        "runs": runs,
    }
    write(result)
    if not result["all_checks_ok"] or result["server_errors"]:
        raise SystemExit("FAILED: a subscription lost, a confirmation missing or doubled, or a 5xx answer")


def summary(runs: list[dict]) -> dict[str, dict[str, float]]:
    measures = {
        "web_alone_requests_per_second": lambda r: r["web_alone"]["requests_per_second"],
        "web_alone_p50_ms": lambda r: r["web_alone"]["p50_ms"],
        "web_alone_p99_ms": lambda r: r["web_alone"]["p99_ms"],
        "whole_stack_requests_per_second": lambda r: r["whole_stack"]["requests_per_second"],
        "whole_stack_p50_ms": lambda r: r["whole_stack"]["p50_ms"],
        "whole_stack_p99_ms": lambda r: r["whole_stack"]["p99_ms"],
        "sustained_subscriptions_per_second": lambda r: r["sustained_subscriptions_per_second"],
        "end_to_end_seconds": lambda r: r["end_to_end_seconds"],
        "confirmations_during_load": lambda r: r["confirmations_during_load"],
        "worker_alone_confirmations_per_second": lambda r: r["worker_alone_confirmations_per_second"],
        "web_alone_cpu_ms_web": lambda r: r["web_alone"]["cpu_ms_per_request"].get(WEB, 0.0),
        "web_alone_cpu_ms_postgresql": lambda r: r["web_alone"]["cpu_ms_per_request"].get(
            "postgresql (our database's backends)", 0.0
        ),
        "web_alone_cpu_ms_redis": lambda r: r["web_alone"]["cpu_ms_per_request"].get(
            "redis (the whole server)", 0.0
        ),
        "web_alone_cpu_ms_other": lambda r: sum(
            r["web_alone"]["cpu_ms_per_request"].get(group, 0.0)
            for group in ("other processes", "postgresql (server processes, other databases)")
        ),
        "web_alone_machine_busy_percent": lambda r: 100 * (r["web_alone"]["machine_busy"] or 0.0),
        "web_alone_busiest_web_process_percent": lambda r: (r["web_alone"].get("web_process_cpu_percent")
                                                            or [None])[0],
        "web_alone_cpu_ms_generator": lambda r: r["web_alone"]["generator_cpu_ms_per_request"],
        "healthz_requests_per_second": lambda r: (r["healthz_ceiling"] or {}).get("requests_per_second"),
        "healthz_p99_ms": lambda r: (r["healthz_ceiling"] or {}).get("p99_ms"),
        "peak_rss_mb_per_web_worker": lambda r: r["peak_rss_mb_per_web_worker"],
        "peak_rss_mb_per_worker_process": lambda r: r["peak_rss_mb_per_worker_process"],
    }
    values = {name: [v for r in runs if (v := measure(r)) is not None] for name, measure in measures.items()}
    return {name: summarise(found) for name, found in values.items() if found}


def options_suffix(web_args: str) -> str:
    """'--workers 3 --backlog 256' -> '-workers-3-backlog-256', for the results' file names."""
    words = re.findall(r"[A-Za-z0-9]+(?:[-_.][A-Za-z0-9]+)*", web_args)
    # Options with no word in them still must not write over the plain run's files.
    return "".join(f"-{word}" for word in words) or ("-web-args" if web_args.strip() else "")


def write(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    # Its own files, so a run of the other connection pattern does not replace these.
    pattern = "-new-connections" if result["settings"].get("new_connections") else ""
    pattern += options_suffix(result["settings"].get("web_args", ""))
    stem = RESULTS / f"subscribe-{result['settings']['requests']}{pattern}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    s, settings, host, code = result["summary"], result["settings"], result["machine"], result["code"]

    def row(label: str, key: str, fmt: str = ".0f") -> str:
        if key not in s:
            return f"| {label} | n/a | | |"
        m = s[key]
        return f"| {label} | {m['median']:{fmt}} | {m['min']:{fmt}} | {m['max']:{fmt}} |"

    not_ok = sum(r[p]["not_ok"] for r in result["runs"] for p in ("web_alone", "whole_stack"))
    table = "\n".join(
        [
            f"{settings['requests']:,} posts per phase, {settings['runs']} run(s), {settings['connections']} "
            f"connections; {host['cpus']} CPUs, Python {host['python']}, PostgreSQL {host['postgresql']} "
            f"(synchronous_commit={host['synchronous_commit']}); load generator: {result['generator']}; "
            f"sink: {result['sink']}; web: {result['web']}; celery {result['worker']}; code "
            f"{code['commit']}{' with uncommitted changes' if code['uncommitted_service_changes'] else ''}"
            f"{'' if result['same_code_in_every_run'] else ' (the code CHANGED between runs)'}",
            "",
            "| measure | median | min | max |",
            "| --- | --- | --- | --- |",
            row("web tier alone: requests/s", "web_alone_requests_per_second"),
            row("web tier alone: p50 latency (ms)", "web_alone_p50_ms", ".1f"),
            row("web tier alone: p99 latency (ms)", "web_alone_p99_ms", ".1f"),
            row("whole stack: requests/s (worker sending meanwhile)", "whole_stack_requests_per_second"),
            row("whole stack: p50 latency (ms)", "whole_stack_p50_ms", ".1f"),
            row("whole stack: p99 latency (ms)", "whole_stack_p99_ms", ".1f"),
            row("whole stack: confirmations delivered while the posts ran", "confirmations_during_load"),
            row(
                "sustained subscriptions/s, first post to last confirmation",
                "sustained_subscriptions_per_second",
            ),
            row("seconds from first post to last confirmation", "end_to_end_seconds", ".1f"),
            row(
                "worker alone: confirmations/s (queue drained after the posts)",
                "worker_alone_confirmations_per_second",
            ),
            row("web tier alone: CPU ms per post in the web server", "web_alone_cpu_ms_web", ".2f"),
            row(
                "web tier alone: CPU ms per post in PostgreSQL (our backends)",
                "web_alone_cpu_ms_postgresql",
                ".2f",
            ),
            row("web tier alone: CPU ms per post in Redis", "web_alone_cpu_ms_redis", ".2f"),
            row(
                "web tier alone: CPU ms per post elsewhere (others' tests, PostgreSQL's shared processes)",
                "web_alone_cpu_ms_other",
                ".2f",
            ),
            row("web tier alone: CPU ms per post in the load generator", "web_alone_cpu_ms_generator", ".2f"),
            row("web tier alone: machine busy (% of all cores)", "web_alone_machine_busy_percent"),
            row("web tier alone: the busiest web process's share of the web server's CPU (%; even: 100 / "
                "processes)", "web_alone_busiest_web_process_percent"),
            row(
                "for scale: GET /healthz on the same server, requests/s (wrk, 5 s)",
                "healthz_requests_per_second",
            ),
            row("for scale: GET /healthz p99 latency (ms)", "healthz_p99_ms", ".1f"),
            row("peak RSS per web worker (MB)", "peak_rss_mb_per_web_worker"),
            row("peak RSS per Celery process (MB)", "peak_rss_mb_per_worker_process"),
            f"| answers other than 2xx/3xx (5xx) | {not_ok} ({result['server_errors']}) | | |",
            f"| every address stored, one confirmation each at the sink | "
            f"{'yes' if result['all_checks_ok'] else 'NO'} | | |",
            "",
        ]
    )
    stem.with_suffix(".md").write_text(table)
    print("\n" + table)


if __name__ == "__main__":
    main()
