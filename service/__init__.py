"""The newsletter service: a Flask application built by :func:`create_app`."""

from __future__ import annotations

from collections.abc import Mapping

from flask import Flask
from flask_cors import CORS
from sqlalchemy import event
from sqlalchemy.engine import Engine
from werkzeug.middleware.proxy_fix import ProxyFix

from service.config import PROJECT_ROOT, Settings, settings_from_environment
from service.database_pool import ping_idle_connections
from service.extensions import db, discard_session, migrate
from service.logs import configure_logging
from service.tokens import TokenSigner
from service.web.abuse import init_abuse_protection
from service.web.challenge import init_proof_of_work
from service.web.csrf import init_csrf
from service.web.request_bodies import SizedBodies
from service.web.security import add_security_headers
from tasks import celery_init_app


def create_app(config: Mapping[str, str] | None = None) -> Flask:
    """Build the application. ``config`` overrides environment variables by name."""
    app = Flask(__name__, instance_relative_config=True)
    settings = settings_from_environment(config, default_instance_path=None)
    app.instance_path = str(settings.INSTANCE_PATH)
    settings.INSTANCE_PATH.mkdir(parents=True, exist_ok=True)
    _configure_flask(app, settings)
    _configure_logging(settings)

    app.extensions["settings"] = settings
    app.extensions["token_signer"] = TokenSigner(settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS)
    db.init_app(app)
    if not settings.DATABASE_URL.startswith("sqlite"):
        with app.app_context():
            ping_idle_connections(db.engine)
    # Runs before Flask-SQLAlchemy's own teardown, which then finds nothing to do.
    app.teardown_appcontext(lambda exc: discard_session())
    migrate.init_app(app, db, directory=str(PROJECT_ROOT / "migrations"))
    celery_init_app(app, settings)

    init_abuse_protection(app, settings)
    app.wsgi_app = SizedBodies(app.wsgi_app, app.config["MAX_CONTENT_LENGTH"])  # type: ignore[method-assign]
    if settings.TRUSTED_PROXY_HOPS:
        # Client IPs (for rate limits and consent records) from exactly this many proxies.
        hops = settings.TRUSTED_PROXY_HOPS
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]
    if settings.PUBLISHER_ORIGINS:
        # The JSON variant of the form, and the proof-of-work challenge, from publishers' pages only.
        CORS(app, resources={r"/subscribe(/challenge)?$": {"origins": list(settings.PUBLISHER_ORIGINS)}},
             methods=["GET", "POST"], allow_headers=["Content-Type"], max_age=3600)
    add_security_headers(app, settings.PUBLISHER_ORIGINS)
    init_csrf(app)
    init_proof_of_work(app, settings)

    from service.web import register_web

    register_web(app, settings)
    from service.commands import register_commands

    register_commands(app)
    return app


def _configure_flask(app: Flask, settings: Settings) -> None:
    # Disconnects are caught by service.database_pool's ping of idle connections. Last in,
    # first out keeps the connections in use hot (unpinged) and lets the others idle.
    engine_options: dict[str, object] = {"pool_use_lifo": True}
    if settings.DATABASE_URL.startswith("sqlite"):
        engine_options = {"connect_args": {"timeout": 30}}
    app.config.update(
        SECRET_KEY=settings.SECRET_KEY,
        SECRET_KEY_FALLBACKS=list(settings.SECRET_KEY_FALLBACKS),
        SQLALCHEMY_DATABASE_URI=settings.DATABASE_URL,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options,
        # The largest body any endpoint takes; public forms set a tighter limit per request.
        MAX_CONTENT_LENGTH=2 * 1024 * 1024,
        CONFIRM_TOKEN_MAX_AGE=settings.CONFIRM_TOKEN_MAX_AGE,
        JSON_SORT_KEYS=False,
    )


def _configure_logging(settings: Settings) -> None:
    configure_logging(settings.LOG_LEVEL, as_json=settings.LOG_FORMAT == "json")


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, connection_record) -> None:  # type: ignore[no-untyped-def]
    """WAL lets the web server, worker and beat share one SQLite file without 'database is locked'."""
    module = type(dbapi_connection).__module__
    if not module.startswith("sqlite3"):
        return
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
