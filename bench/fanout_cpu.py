"""CPU per digest in one process: the worker's sending code without Celery, against a real sink.

    .venv/bin/python -m bench.fanout_cpu                       # 5,000 readers, 3 rounds
    .venv/bin/python -m bench.fanout_cpu --readers 2000 --profile

It seeds readers as bench/fanout.py does, plans their digests with the real
code, then sends them in this process with ``deliver_many`` in batches of
DIGEST_BATCH_SIZE, over SMTP to the sink (Postfix's smtp-sink when installed,
in a process of its own). Each round puts the same deliveries back in the queue
and sends them again. It reports this process's CPU per message: the part of a
worker's cost that our code decides, which the rest of a shared machine
disturbs far less than it disturbs bench/fanout.py's throughput. Use it to
compare two versions of the sending path; its figures are not the fan-out's.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from types import SimpleNamespace

import redis
import sqlalchemy as sa

from bench.fanout import Sink, environment, progress, reset_database, seed

DEFAULT_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/newsletter_bench_fanout_cpu"
DEFAULT_REDIS = "redis://127.0.0.1:6379/13"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readers", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=500, help="DIGEST_BATCH_SIZE")
    parser.add_argument("--group", type=int, default=50, help="DELIVERY_GROUP_SIZE")
    parser.add_argument("--sink", choices=("auto", "postfix", "aiosmtpd"), default="auto")
    parser.add_argument("--profile", action="store_true", help="print the top of a cProfile of one round")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS)
    args = parser.parse_args()

    from service import create_app
    from service.config import get_settings
    from service.deliveries import deliver_many
    from service.digests import DigestFilter
    from service.extensions import db
    from service.mail.transport import transport_for
    from service.models import Delivery, DeliveryState
    from tasks.digests import plan_and_publish

    sink = Sink(args.sink)
    try:
        reset_database(args)
        redis.Redis.from_url(args.redis_url).flushdb()
        app = create_app(environment(SimpleNamespace(**vars(args)), sink.port))
        progress(f"seeding {args.readers:,} readers")
        seed(app, args.readers)
        with app.app_context():
            planned = plan_and_publish(force=True, only=DigestFilter())
            redis.Redis.from_url(args.redis_url).flushdb()  # no worker: the published tasks are not needed
            ids = list(db.session.scalars(sa.select(Delivery.id).order_by(Delivery.id)))
            progress(f"planned {planned:,} digests; sending them {args.rounds} times in this process "
                     f"({sink.description})")
            settings = get_settings()
            per_message = []
            for round_number in range(1, args.rounds + 1):
                db.session.execute(sa.update(Delivery).values(state=DeliveryState.QUEUED, attempts=0))
                db.session.commit()
                profiler = cProfile.Profile() if args.profile and round_number == args.rounds else None
                before_count, cpu, wall = sink.received(), time.process_time(), time.perf_counter()
                if profiler:
                    profiler.enable()
                for start in range(0, len(ids), args.batch):
                    transport = transport_for(settings, db.session)
                    try:
                        deliver_many(db.session, ids[start:start + args.batch], transport, settings)
                    finally:
                        transport.close()
                if profiler:
                    profiler.disable()
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                sink.wait_for(before_count + len(ids), timeout=120)
                per_message.append(cpu / len(ids) * 1e6)
                progress(f"  round {round_number}: {per_message[-1]:.0f} µs of CPU a message, "
                         f"{len(ids) / wall:,.0f} messages/s in one process")
                if profiler:
                    pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
    finally:
        sink.stop()
    print(f"\nCPU per message in the sending process: median {statistics.median(per_message):.0f} µs "
          f"(min {min(per_message):.0f}, max {max(per_message):.0f}; {args.rounds} rounds of {len(ids):,})")


if __name__ == "__main__":
    main()
