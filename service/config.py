"""Every setting the service reads, taken from the environment in one place.

The environment is read once, by :func:`load_settings`, and validated. A bad or
missing value raises :class:`ConfigError` with one line that names the variable;
the entry points print that line and exit instead of showing a traceback.

With no variables at all the service runs in its *embedded* mode: SQLite and a
SQLite-backed Celery broker in the instance folder, and an outbox that stores
sent mail for reading at ``/outbox`` instead of talking to an SMTP server.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

from flask import current_app
from limits import parse_many

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SMTP_SECURITY_MODES = ("none", "starttls", "tls")
FREQUENCIES = ("daily", "weekly")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line naming it."""


@dataclass(frozen=True)
class Settings:
    """Validated settings. Field names match the environment variables."""

    DATABASE_URL: str
    CELERY_BROKER_URL: str
    SECRET_KEY: str
    SECRET_KEY_FALLBACKS: tuple[str, ...]
    PUBLIC_BASE_URL: str
    MAIL_FROM: str
    SMTP_HOST: str | None
    SMTP_PORT: int
    SMTP_USERNAME: str | None
    SMTP_PASSWORD: str | None
    SMTP_SECURITY: str
    SMTP_TIMEOUT: float
    ADMIN_API_TOKEN: str | None
    PUBLISHER_ORIGINS: tuple[str, ...]
    CONFIRM_TOKEN_MAX_AGE: int
    CONFIRM_ON_GET: bool
    CONFIRMATION_RESEND_SECONDS: int
    CONFIRMATION_MAX_PENDING: int
    CONSENT_TEXT_VERSION: str
    SUBSCRIBE_LIMIT_PER_IP: str
    SUBSCRIBE_LIMIT_PER_ADDRESS: str
    SUBSCRIBE_LIMIT_PER_DOMAIN: str
    TRUSTED_PROXY_HOPS: int
    LIMITER_STORAGE_URL: str
    FORM_MIN_FILL_SECONDS: float
    POW_REQUIRED: bool
    METRICS_TOKEN: str | None
    LOG_FORMAT: str
    POW_MAX_NUMBER: int
    POW_TTL_SECONDS: int
    DEFAULT_FREQUENCY: str
    MAX_FORM_BYTES: int
    DELIVERY_MAX_ATTEMPTS: int
    DELIVERY_RETRY_BASE_SECONDS: float
    DELIVERY_SWEEP_SECONDS: float
    DELIVERY_STALE_SECONDS: float
    DELIVERY_LEASE_SECONDS: float
    DELIVERY_GROUP_SIZE: int
    SEED_DEMO_TOPICS: bool
    DIGEST_MAIL_FROM: str
    DIGEST_SEND_HOUR: int
    DIGEST_WEEKLY_DAY: str
    DIGEST_MAX_ARTICLES_PER_TOPIC: int
    DIGEST_MAX_ARTICLES: int
    DIGEST_BATCH_SIZE: int
    DIGEST_PLAN_BATCH_SIZE: int
    DIGEST_SCHEDULE_SECONDS: float
    PUBLISHER_NAME: str
    PUBLISHER_POSTAL_ADDRESS: str
    SEND_RATE_LIMIT: float
    SEND_RATE_BURST: int
    RATE_LIMIT_REDIS_URL: str | None
    DKIM_DOMAIN: str | None
    DKIM_SELECTOR: str | None
    DKIM_PRIVATE_KEY: str | None
    FEEDBACK_ID_SENDER: str | None
    BOUNCE_ADDRESS: str | None
    BOUNCE_WEBHOOK_TOKEN: str | None
    BOUNCE_SOFT_LIMIT: int
    POLICY_PAUSE_THRESHOLD: int
    PAUSE_RECHECK_SECONDS: float
    FEED_POLL_SECONDS: float
    FEED_FETCH_TIMEOUT: float
    FEED_MAX_BYTES: int
    LOG_LEVEL: str
    INSTANCE_PATH: Path
    embedded: bool = field(default=False)

    @property
    def uses_outbox(self) -> bool:
        """True when mail is stored for /outbox instead of sent over SMTP."""
        return self.SMTP_HOST is None

    @cached_property
    def mail_domain(self) -> str:
        """The domain of MAIL_FROM, used for Message-IDs."""
        return parseaddr(self.MAIL_FROM)[1].rpartition("@")[2]


def settings_from_environment(
    overrides: Mapping[str, str] | None = None, default_instance_path: Path | None = None
) -> Settings:
    """Load settings from the process environment, with ``overrides`` on top.

    The only place that reads ``os.environ``. INSTANCE_PATH moves the folder that
    holds the embedded mode's files.
    """
    environ = {**os.environ, **(overrides or {})}
    instance = environ.get("INSTANCE_PATH") or default_instance_path or PROJECT_ROOT / "instance"
    return load_settings(environ, Path(instance))


def get_settings() -> Settings:
    """The running application's settings (set up by create_app)."""
    return current_app.extensions["settings"]


def load_settings(environ: Mapping[str, str], instance_path: Path) -> Settings:
    """Read and validate every setting from ``environ``.

    ``instance_path`` is where the embedded mode keeps its SQLite files and
    generated secret key.
    """
    env = _Env(environ)
    embedded = env.str("DATABASE_URL") is None
    database_url = env.str("DATABASE_URL") or f"sqlite:///{instance_path / 'newsletter.sqlite3'}"
    broker_url = env.str("CELERY_BROKER_URL") or (
        f"sqla+sqlite:///{instance_path / 'celery-broker.sqlite3'}"
    )
    secret_key = env.str("SECRET_KEY")
    if secret_key is None:
        if not embedded:
            raise ConfigError("SECRET_KEY is required when DATABASE_URL is set")
        secret_key = _instance_secret_key(instance_path)
    elif len(secret_key) < 16:
        raise ConfigError("SECRET_KEY must be at least 16 characters long")

    mail_from = env.mailbox("MAIL_FROM", "Newsletter <newsletter@localhost>")
    settings = Settings(
        DATABASE_URL=_normalise_database_url(database_url),
        CELERY_BROKER_URL=broker_url,
        SECRET_KEY=secret_key,
        SECRET_KEY_FALLBACKS=env.list("SECRET_KEY_FALLBACKS"),
        PUBLIC_BASE_URL=env.url("PUBLIC_BASE_URL", "http://127.0.0.1:5000"),
        MAIL_FROM=mail_from,
        SMTP_HOST=env.str("SMTP_HOST"),
        SMTP_PORT=env.int("SMTP_PORT", _default_smtp_port(env.str("SMTP_SECURITY"))),
        SMTP_USERNAME=env.str("SMTP_USERNAME"),
        SMTP_PASSWORD=env.str("SMTP_PASSWORD"),
        SMTP_SECURITY=env.choice("SMTP_SECURITY", SMTP_SECURITY_MODES, "none"),
        SMTP_TIMEOUT=env.float("SMTP_TIMEOUT", 30.0),
        ADMIN_API_TOKEN=env.str("ADMIN_API_TOKEN"),
        PUBLISHER_ORIGINS=tuple(_origin(o) for o in env.list("PUBLISHER_ORIGINS")),
        CONFIRM_TOKEN_MAX_AGE=env.int("CONFIRM_TOKEN_MAX_AGE", 7 * 24 * 3600),
        CONFIRM_ON_GET=env.bool("CONFIRM_ON_GET", False),
        CONFIRMATION_RESEND_SECONDS=env.int("CONFIRMATION_RESEND_SECONDS", 3600),
        CONFIRMATION_MAX_PENDING=env.int("CONFIRMATION_MAX_PENDING", 3),
        CONSENT_TEXT_VERSION=env.str("CONSENT_TEXT_VERSION") or "1",
        SUBSCRIBE_LIMIT_PER_IP=env.rate("SUBSCRIBE_LIMIT_PER_IP", "20/minute;200/hour"),
        SUBSCRIBE_LIMIT_PER_ADDRESS=env.rate("SUBSCRIBE_LIMIT_PER_ADDRESS", "5/hour;20/day"),
        SUBSCRIBE_LIMIT_PER_DOMAIN=env.rate("SUBSCRIBE_LIMIT_PER_DOMAIN", "2000/hour"),
        TRUSTED_PROXY_HOPS=env.int_range("TRUSTED_PROXY_HOPS", 0, 0, 10),
        LIMITER_STORAGE_URL=env.str("LIMITER_STORAGE_URL") or (
            broker_url if broker_url.startswith(("redis://", "rediss://")) else "memory://"),
        FORM_MIN_FILL_SECONDS=env.non_negative_float("FORM_MIN_FILL_SECONDS", 2.0),
        POW_REQUIRED=env.bool("POW_REQUIRED", False),
        METRICS_TOKEN=env.str("METRICS_TOKEN"),
        LOG_FORMAT=env.choice("LOG_FORMAT", ("json", "text"), "text" if embedded else "json"),
        POW_MAX_NUMBER=env.int("POW_MAX_NUMBER", 100_000),
        POW_TTL_SECONDS=env.int("POW_TTL_SECONDS", 600),
        DEFAULT_FREQUENCY=env.choice("DEFAULT_FREQUENCY", FREQUENCIES, "weekly"),
        MAX_FORM_BYTES=env.int("MAX_FORM_BYTES", 16 * 1024),
        DELIVERY_MAX_ATTEMPTS=env.int("DELIVERY_MAX_ATTEMPTS", 8),
        DELIVERY_RETRY_BASE_SECONDS=env.float("DELIVERY_RETRY_BASE_SECONDS", 30.0),
        DELIVERY_SWEEP_SECONDS=env.float("DELIVERY_SWEEP_SECONDS", 60.0),
        DELIVERY_STALE_SECONDS=env.float("DELIVERY_STALE_SECONDS", 120.0),
        DELIVERY_LEASE_SECONDS=env.float("DELIVERY_LEASE_SECONDS", 600.0),
        DELIVERY_GROUP_SIZE=env.int_range("DELIVERY_GROUP_SIZE", 50, 1, 10_000),
        SEED_DEMO_TOPICS=env.bool("SEED_DEMO_TOPICS", embedded),
        DIGEST_MAIL_FROM=env.mailbox("DIGEST_MAIL_FROM", mail_from),
        DIGEST_SEND_HOUR=env.int_range("DIGEST_SEND_HOUR", 8, 0, 23),
        DIGEST_WEEKLY_DAY=env.choice("DIGEST_WEEKLY_DAY", WEEKDAYS, "monday"),
        DIGEST_MAX_ARTICLES_PER_TOPIC=env.int("DIGEST_MAX_ARTICLES_PER_TOPIC", 8),
        DIGEST_MAX_ARTICLES=env.int("DIGEST_MAX_ARTICLES", 30),
        DIGEST_BATCH_SIZE=env.int("DIGEST_BATCH_SIZE", 500),
        DIGEST_PLAN_BATCH_SIZE=env.int_range("DIGEST_PLAN_BATCH_SIZE", 5000, 1, 100_000),
        DIGEST_SCHEDULE_SECONDS=env.float("DIGEST_SCHEDULE_SECONDS", 300.0),
        PUBLISHER_NAME=env.str("PUBLISHER_NAME") or parseaddr(mail_from)[0] or "Newsletter",
        PUBLISHER_POSTAL_ADDRESS=env.str("PUBLISHER_POSTAL_ADDRESS") or "",
        SEND_RATE_LIMIT=env.non_negative_float("SEND_RATE_LIMIT", 0.0),
        SEND_RATE_BURST=env.int_range("SEND_RATE_BURST", 0, 0, 1_000_000),
        RATE_LIMIT_REDIS_URL=env.str("RATE_LIMIT_REDIS_URL") or (
            broker_url if broker_url.startswith(("redis://", "rediss://")) else None),
        DKIM_DOMAIN=env.str("DKIM_DOMAIN"),
        DKIM_SELECTOR=env.str("DKIM_SELECTOR"),
        DKIM_PRIVATE_KEY=_dkim_key(env),
        FEEDBACK_ID_SENDER=env.str("FEEDBACK_ID_SENDER"),
        BOUNCE_ADDRESS=env.optional_address("BOUNCE_ADDRESS"),
        BOUNCE_WEBHOOK_TOKEN=env.str("BOUNCE_WEBHOOK_TOKEN"),
        BOUNCE_SOFT_LIMIT=env.int("BOUNCE_SOFT_LIMIT", 3),
        POLICY_PAUSE_THRESHOLD=env.int_range("POLICY_PAUSE_THRESHOLD", 5, 0, 1_000_000),
        PAUSE_RECHECK_SECONDS=env.float("PAUSE_RECHECK_SECONDS", 60.0),
        FEED_POLL_SECONDS=env.float("FEED_POLL_SECONDS", 900.0),
        FEED_FETCH_TIMEOUT=env.float("FEED_FETCH_TIMEOUT", 20.0),
        FEED_MAX_BYTES=env.int("FEED_MAX_BYTES", 5 * 1024 * 1024),
        LOG_LEVEL=env.choice("LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
        INSTANCE_PATH=instance_path,
        embedded=embedded,
    )
    dkim_parts = (settings.DKIM_DOMAIN, settings.DKIM_SELECTOR, settings.DKIM_PRIVATE_KEY)
    if any(dkim_parts) and not all(dkim_parts):
        raise ConfigError("DKIM needs DKIM_DOMAIN, DKIM_SELECTOR and DKIM_PRIVATE_KEY (or _FILE) together")
    if settings.SMTP_USERNAME and not settings.SMTP_PASSWORD:
        raise ConfigError("SMTP_PASSWORD is required when SMTP_USERNAME is set")
    return settings


class _Env:
    """Typed accessors that turn a bad value into a one-line ConfigError."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def str(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def list(self, name: str) -> tuple[str, ...]:
        raw = self.str(name) or ""
        return tuple(item.strip() for item in raw.split(",") if item.strip())

    def int(self, name: str, default: int) -> int:
        """A positive whole number."""
        return self.int_range(name, default, 1, 2**31 - 1)

    def int_range(self, name: str, default: int, low: int, high: int) -> int:
        value = self._number(name, default, int, "a whole number")
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, got {value!r}")
        return int(value)

    def float(self, name: str, default: float) -> float:
        """A positive number."""
        value = self._number(name, default, float, "a number")
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value!r}")
        return float(value)

    def non_negative_float(self, name: str, default: float) -> float:
        value = self._number(name, default, float, "a number")
        if value < 0:
            raise ConfigError(f"{name} must be zero or more, got {value!r}")
        return float(value)

    def _number(self, name: str, default: float, cast: type, kind: str) -> float:
        raw = self.str(name)
        if raw is None:
            return default
        try:
            return cast(raw)
        except ValueError:
            raise ConfigError(f"{name} must be {kind}, got {raw!r}") from None

    def rate(self, name: str, default: str) -> str:
        """A rate string of the limits library such as '10/minute;100/hour'."""
        raw = self.str(name) or default
        try:
            parse_many(raw)
        except ValueError:
            raise ConfigError(f"{name} must look like '10/minute;100/hour', got {raw!r}") from None
        return raw

    def bool(self, name: str, default: bool) -> bool:
        raw = self.str(name)
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        raw = self.str(name)
        if raw is None:
            return default
        for choice in choices:
            if raw.lower() == choice.lower():
                return choice
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")

    def url(self, name: str, default: str) -> str:
        raw = self.str(name) or default
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{name} must be an http(s) URL, got {raw!r}")
        return raw.rstrip("/")

    def optional_address(self, name: str) -> str | None:
        raw = self.str(name)
        if raw is None:
            return None
        local, at, domain = raw.partition("@")
        if not at or not local or "." not in domain or "+" in local or " " in raw:
            raise ConfigError(f"{name} must be a bare address without '+', like bounces@example.com")
        return raw

    def mailbox(self, name: str, default: str) -> str:
        raw = self.str(name) or default
        _, address = parseaddr(raw)
        if "@" not in address:
            raise ConfigError(f"{name} must be an address like 'News <news@example.com>'")
        return raw


def _dkim_key(env: _Env) -> str | None:
    """The PEM key from DKIM_PRIVATE_KEY (\\n allowed for newlines) or DKIM_PRIVATE_KEY_FILE."""
    inline, path = env.str("DKIM_PRIVATE_KEY"), env.str("DKIM_PRIVATE_KEY_FILE")
    if inline and path:
        raise ConfigError("set DKIM_PRIVATE_KEY or DKIM_PRIVATE_KEY_FILE, not both")
    if path:
        try:
            inline = Path(path).read_text()
        except OSError as error:
            raise ConfigError(f"DKIM_PRIVATE_KEY_FILE cannot be read: {error.strerror}") from None
    if inline is None:
        return None
    key = inline.replace("\\n", "\n").strip()
    if "PRIVATE KEY-----" not in key:
        raise ConfigError("DKIM_PRIVATE_KEY must be a PEM private key (-----BEGIN ... PRIVATE KEY-----)")
    return key + "\n"


def _origin(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"PUBLISHER_ORIGINS entries must be origins like https://example.com, "
                          f"got {value!r}")
    return f"{parts.scheme}://{parts.netloc}".lower()


def _default_smtp_port(security: str | None) -> int:
    return {"tls": 465, "starttls": 587}.get((security or "none").lower(), 25)


def _normalise_database_url(url: str) -> str:
    # Heroku-style URLs say postgres://; SQLAlchemy wants a dialect and driver.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    if not url.startswith(("postgresql+", "sqlite")):
        raise ConfigError(f"DATABASE_URL must be a PostgreSQL or SQLite URL, got {url.split(':')[0]!r}")
    return url


def _instance_secret_key(instance_path: Path) -> str:
    """Keep one random key per instance folder so links survive restarts."""
    key_file = instance_path / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()
    instance_path.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    key_file.write_text(key)
    key_file.chmod(0o600)
    return key
