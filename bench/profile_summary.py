"""Summarise a py-spy ``--format raw`` profile of a web worker into where a request's time goes.

    .venv/bin/python -m bench.profile_summary bench/results/subscribe-profile-wall-20000.txt

Only samples inside a request (below granian's WSGI ``_runner``, or gunicorn's
``handle_request`` in the profiles of sessions 6 to 10) count. Each
sample goes to the category of its innermost frame that belongs to one (see
CATEGORIES). Recorded with ``--idle`` the shares are of wall-clock time
(waiting on PostgreSQL or Redis included); without, of CPU time.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

REQUEST_FRAMES = ("_runner (granian/wsgi.py", "handle_request (gunicorn/workers/gthread.py")
COMMIT_FRAME = "Session.commit (sqlalchemy/orm/session.py"
SQL = "SQLAlchemy ORM + psycopg: queries and flushes"
COMMIT = "COMMIT (PostgreSQL: WAL flush and round trip)"
REST = "Flask, Werkzeug and our own code (the rest)"

# (category, patterns of the frames that own a sample). Walking from the leaf up, the
# first frame that matches decides, so Redis time under kombu is Celery's, Redis time
# under the rate limits is the limits', and a view under Flask-Limiter's decorator
# (before it was replaced) is still the view's.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("rate limits (Redis round trips)",
     ("limits/", "flask_limiter/_extension.py", "service/web/rate_limits.py")),
    ("Celery publish (kombu, Redis)", ("kombu/", "celery/")),
    (SQL, ("sqlalchemy/", "psycopg/", "psycopg_binary/")),
    ("Jinja2: the 'check your inbox' page", ("jinja2/", "render_template (flask/templating.py")),
    ("email-validator", ("email_validator/",)),
    (
        "form parsing (Werkzeug)",
        ("werkzeug/formparser", "werkzeug/sansio/multipart", "werkzeug/datastructures"),
    ),
    ("itsdangerous", ("itsdangerous/",)),
    ("logging", ("logging/__init__",)),
    ("the web server's Python side (granian's WSGI glue; gunicorn's HTTP parser)",
     ("granian/", "gunicorn/http/", "gunicorn/util.py")),
]

# Steps of a post, inclusive (they overlap with the categories and with each other).
OPERATIONS: list[tuple[str, tuple[str, ...]]] = [
    ("rate limits: counting the post's windows",
     ("_check_request_limit (flask_limiter/", "SubscribeLimits.hit (service/")),
    ("connection ping at checkout (every one before session 6, then only after 0.5 s idle)",
     ("_do_ping_w_event", "do_ping (sqlalchemy/")),
    ("the new reader's one statement (insert_new_reader)", ("insert_new_reader (service/",)),
    ("db.session.commit()", ("Session.commit (sqlalchemy/orm/session.py",)),
    ("handing the delivery to the publisher thread (publish_soon)", ("publish_soon (tasks/",)),
    ("the answer page (render_template)", ("_accepted (service/",)),
    ("request id (uuid4)", ("uuid4 (uuid.py",)),
]

FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")


def read_raw(path: Path) -> list[tuple[list[str], int]]:
    """Each line of py-spy's raw output is 'frame;frame;...;leaf COUNT', root first."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def category_of(frames: list[str]) -> str:
    """``frames`` from the request's root to the leaf."""
    for depth, frame in enumerate(reversed(frames)):
        if depth and _is_request(frame):
            continue  # granian's root frame owns its own time, not its callees' (Flask's, ours)
        for name, patterns in CATEGORIES:
            if any(pattern in frame for pattern in patterns):
                if name == SQL and any(COMMIT_FRAME in f for f in frames):
                    return COMMIT
                return name
    return REST


def _is_request(frame: str) -> bool:
    return any(root in frame for root in REQUEST_FRAMES)


def function_of(frame: str) -> str:
    match = FRAME.match(frame)
    return f"{match['function']} ({match['file']})" if match else frame


def summarise_profile(path: Path, title: str = "", top: int = 15) -> dict[str, object]:
    stacks = read_raw(path)
    total = sum(count for _, count in stacks)
    in_requests = [
        (frames, count) for frames, count in stacks if any(_is_request(frame) for frame in frames)
    ]
    request_samples = sum(count for _, count in in_requests) or 1
    categories: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    operations: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for frames, count in in_requests:
        start = next(i for i, frame in enumerate(frames) if _is_request(frame))
        below = frames[start:]
        categories[category_of(below)] += count
        for function in {function_of(frame) for frame in below}:
            inclusive[function] += count
        for name, patterns in OPERATIONS:
            if any(pattern in frame for frame in below for pattern in patterns):
                operations[name] += count
        leaves[function_of(frames[-1])] += count
    share = {name: round(100 * n / request_samples, 1) for name, n in categories.most_common()}
    lines = [
        f"py-spy profile {title or path.name}: {total:,} samples, {request_samples:,} inside requests "
        f"({100 * request_samples / max(total, 1):.0f}%)",
        "",
        "| where a request's time goes | share |",
        "| --- | --- |",
        *[f"| {name} | {value:.1f}% |" for name, value in share.items()],
        "",
        "| step of a post (inclusive; steps overlap) | share |",
        "| --- | --- |",
        *[f"| {name} | {100 * operations[name] / request_samples:.1f}% |" for name, _ in OPERATIONS],
        "",
        f"Our own functions, inclusive (top {top}):",
        "",
        "| function | share |",
        "| --- | --- |",
        *[f"| `{name}` | {100 * n / request_samples:.1f}% |" for name, n in _interesting(inclusive, top)],
        "",
        f"Top {top} leaves (self time):",
        "",
        "| function | share |",
        "| --- | --- |",
        *[f"| `{name}` | {100 * n / request_samples:.1f}% |" for name, n in leaves.most_common(top)],
        "",
    ]
    steps = {name: round(100 * operations[name] / request_samples, 1) for name, _ in OPERATIONS}
    return {"categories": share, "steps": steps, "markdown": "\n".join(lines)}


def _interesting(inclusive: Counter[str], top: int) -> list[tuple[str, int]]:
    """The heaviest of our own functions (service/ and tasks/)."""
    ours = [(name, n) for name, n in inclusive.most_common() if "(service/" in name or "(tasks/" in name]
    return ours[:top]


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        print(summarise_profile(Path(argument))["markdown"])
