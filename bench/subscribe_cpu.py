"""CPU per POST /subscribe inside one process: the Flask app with Flask's test client, on a
PostgreSQL database of its own and Redis (limiter and broker), no web server, no load generator.

    .venv/bin/python -m bench.subscribe_cpu                    # 2,000 posts
    .venv/bin/python -m bench.subscribe_cpu --posts 500 --profile

Quicker and steadier than bench/subscribe.py for comparing two versions of the
subscribe path (it measures this process's CPU, which the rest of the machine
disturbs less than it disturbs throughput), and it can print a cProfile. It
counts the background publisher's thread too. Each post is a new address for
two topics, with a name, as the publisher's form sends it.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
import uuid

import redis
import sqlalchemy as sa
from flask_migrate import upgrade

from service import create_app
from service.extensions import db
from service.models import Topic
from service.topics import seed_demo_topics

DEFAULT_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/newsletter_bench_subscribe_cpu"
DEFAULT_REDIS = "redis://127.0.0.1:6379/12"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--profile", action="store_true", help="print the top of a cProfile of the posts")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS)
    args = parser.parse_args()

    _recreate_database(args.database_url)
    redis.Redis.from_url(args.redis_url).flushdb()
    app = create_app({
        "DATABASE_URL": args.database_url, "CELERY_BROKER_URL": args.redis_url,
        "LIMITER_STORAGE_URL": args.redis_url, "SECRET_KEY": "benchmark-secret-key-0123456789",
        # Raised as bench/subscribe.py raises them: same windows, never tripped.
        "SUBSCRIBE_LIMIT_PER_IP": "100000000/minute;1000000000/hour",
        "SUBSCRIBE_LIMIT_PER_DOMAIN": "1000000000/hour",
        "PUBLIC_BASE_URL": "https://newsletter.example.com", "MAIL_FROM": "Marvel News <news@example.com>",
        "SEED_DEMO_TOPICS": "false", "LOG_LEVEL": "WARNING", "INSTANCE_PATH": tempfile.mkdtemp(),
    })
    with app.app_context():
        upgrade()
        seed_demo_topics(db.session)
        db.session.commit()
        topics = list(db.session.scalars(sa.select(Topic.slug).order_by(Topic.slug)))[:2]

    client = app.test_client()
    run = uuid.uuid4().hex[:8]

    def post(n: int) -> None:
        response = client.post("/subscribe", data={
            "email": f"reader-{run}-{n}@example.com", "topics": topics, "name": "Peggy"})
        if response.status_code != 200:
            raise SystemExit(f"POST /subscribe answered {response.status_code}")

    for n in range(args.warmup):
        post(-1 - n)
    profile = cProfile.Profile() if args.profile else None
    cpu, wall = time.process_time(), time.perf_counter()
    if profile:
        profile.enable()
    for n in range(args.posts):
        post(n)
    if profile:
        profile.disable()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    app.extensions["publisher"].close()
    print(f"{args.posts} posts: {1000 * cpu / args.posts:.2f} ms CPU and {1000 * wall / args.posts:.2f} ms "
          f"wall per post{' (under cProfile)' if profile else ''}")
    if profile:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)


def _recreate_database(url: str) -> None:
    parsed = sa.engine.make_url(url)
    admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {parsed.database} WITH (FORCE)"))
        connection.execute(sa.text(f"CREATE DATABASE {parsed.database}"))
    admin.dispose()


if __name__ == "__main__":
    main()
