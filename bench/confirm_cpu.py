"""CPU per confirmation email in one process, by how many confirmations one task carries.

    .venv/bin/python -m bench.confirm_cpu                      # 2,000 readers; 5, 20 and 200 a task
    .venv/bin/python -m bench.confirm_cpu --per-task 5 --profile

Form posts reach the worker as tasks of a few confirmations each: a web
process publishes what gathered within its publisher's linger time
(tasks/publisher.py). This stores pending readers of two topics through the
form's own code, then sends their confirmations in this process as
``send_delivery_batch`` does (a transport per task, ``deliver_many``) over SMTP
to the sink (Postfix's smtp-sink when installed), the tasks of each size taking
turns, and reports this process's CPU per confirmation. Like bench/fanout_cpu.py
it compares versions of the sending code; its figures are not the worker's
throughput.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from types import SimpleNamespace

import sqlalchemy as sa

from bench.fanout import Sink, base_environment, progress, reset_database

DEFAULT_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/newsletter_bench_confirm_cpu"
DEFAULT_REDIS = "redis://127.0.0.1:6379/13"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readers", type=int, default=2000)
    parser.add_argument("--per-task", type=int, action="append",
                        help="confirmations a task carries (repeatable; default 5, 20 and 200)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each size, taking turns")
    parser.add_argument("--sink", choices=("auto", "postfix", "aiosmtpd"), default="auto")
    parser.add_argument("--profile", action="store_true",
                        help="print a cProfile of one round of the first size")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS)
    args = parser.parse_args()
    sizes = args.per_task or [5, 20, 200]

    import flask_migrate

    from service import create_app
    from service.config import get_settings
    from service.deliveries import deliver_many
    from service.extensions import db
    from service.mail.transport import transport_for
    from service.models import Delivery, DeliveryState
    from service.subscriptions import SubscriptionRequest, subscribe
    from service.topics import seed_demo_topics

    sink = Sink(args.sink)
    try:
        reset_database(args)
        app = create_app(base_environment(SimpleNamespace(**vars(args)), sink.port))
        with app.app_context():
            flask_migrate.upgrade()
            seed_demo_topics(db.session)
            db.session.commit()
            progress(f"storing {args.readers:,} pending readers through the form's code")
            topics = ["marvel-news", "tv-news"]
            for n in range(args.readers):
                request = SubscriptionRequest(f"reader{n}@example.com", topics, name="Peggy")
                subscribe(db.session, request, "weekly")
            db.session.commit()
            ids = list(db.session.scalars(sa.select(Delivery.id).order_by(Delivery.id)))
            settings = get_settings()

            def send_all(per_task: int) -> float:
                """CPU µs a confirmation for sending every one again, ``per_task`` to a task."""
                db.session.execute(sa.update(Delivery).values(state=DeliveryState.QUEUED, attempts=0))
                db.session.commit()
                db.session.expunge_all()  # as a worker starts: nothing loaded
                before_count, cpu = sink.received(), time.process_time()
                for start in range(0, len(ids), per_task):
                    transport = transport_for(settings, db.session)
                    try:
                        deliver_many(db.session, ids[start:start + per_task], transport, settings)
                    finally:
                        transport.close()
                cpu = time.process_time() - cpu
                sink.wait_for(before_count + len(ids), timeout=120)
                return cpu / len(ids) * 1e6

            progress(f"sending {len(ids):,} confirmations {args.rounds} times at each of {sizes} a task "
                     f"({sink.description})")
            send_all(max(sizes))  # warm-up
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                send_all(sizes[0])
                profiler.disable()
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
            per_size: dict[int, list[float]] = {size: [] for size in sizes}
            for round_number in range(1, args.rounds + 1):
                for size in sizes:
                    per_size[size].append(send_all(size))
                progress(f"  round {round_number}: " + ", ".join(
                    f"{size} a task {per_size[size][-1]:,.0f} µs" for size in sizes))
    finally:
        sink.stop()
    print(f"\nCPU per confirmation in the sending process ({args.rounds} rounds of {len(ids):,}):")
    for size, figures in per_size.items():
        print(f"  {size:>4} a task: median {statistics.median(figures):,.0f} µs "
              f"(min {min(figures):,.0f}, max {max(figures):,.0f})")


if __name__ == "__main__":
    main()
