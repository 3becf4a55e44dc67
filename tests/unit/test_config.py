import os
import subprocess
import sys

import pytest

from service.config import ConfigError, load_settings

PRODUCTION = {
    "DATABASE_URL": "postgres://app@db.internal/news",
    "SECRET_KEY": "a-long-enough-secret-key",
}


def test_no_variables_at_all_means_the_embedded_mode(tmp_path):
    settings = load_settings({}, tmp_path)
    assert settings.embedded
    assert f"sqlite:///{tmp_path / 'newsletter.sqlite3'}" == settings.DATABASE_URL
    assert settings.CELERY_BROKER_URL.startswith("sqla+sqlite:///")
    assert settings.uses_outbox
    assert settings.SEED_DEMO_TOPICS


def test_the_embedded_secret_key_survives_a_restart(tmp_path):
    first = load_settings({}, tmp_path).SECRET_KEY
    assert first == load_settings({}, tmp_path).SECRET_KEY
    assert len(first) >= 32


def test_a_heroku_style_database_url_gets_the_psycopg_driver(tmp_path):
    settings = load_settings(PRODUCTION, tmp_path)
    assert settings.DATABASE_URL == "postgresql+psycopg://app@db.internal/news"
    assert not settings.embedded
    assert not settings.SEED_DEMO_TOPICS


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"DATABASE_URL": "postgresql://x/y"}, "SECRET_KEY"),
        ({**PRODUCTION, "SECRET_KEY": "short"}, "SECRET_KEY"),
        ({"SMTP_SECURITY": "ssl-please"}, "SMTP_SECURITY"),
        ({"SMTP_PORT": "twenty-five"}, "SMTP_PORT"),
        ({"SMTP_PORT": "-1"}, "SMTP_PORT"),
        ({"PUBLIC_BASE_URL": "newsletter.example.com"}, "PUBLIC_BASE_URL"),
        ({"MAIL_FROM": "nobody"}, "MAIL_FROM"),
        ({"CONFIRM_ON_GET": "maybe"}, "CONFIRM_ON_GET"),
        ({"SMTP_USERNAME": "user"}, "SMTP_PASSWORD"),
        ({"DATABASE_URL": "mysql://x/y", "SECRET_KEY": "a-long-enough-secret-key"}, "DATABASE_URL"),
        ({"PUBLISHER_ORIGINS": "example.com"}, "PUBLISHER_ORIGINS"),
        ({"DEFAULT_FREQUENCY": "hourly"}, "DEFAULT_FREQUENCY"),
    ],
)
def test_a_bad_value_names_the_variable(tmp_path, environ, named):
    with pytest.raises(ConfigError, match=named):
        load_settings(environ, tmp_path)


def test_smtp_port_follows_the_security_mode(tmp_path):
    assert load_settings({"SMTP_SECURITY": "tls"}, tmp_path).SMTP_PORT == 465
    assert load_settings({"SMTP_SECURITY": "starttls"}, tmp_path).SMTP_PORT == 587
    assert load_settings({}, tmp_path).SMTP_PORT == 25


def test_publisher_origins_are_normalised(tmp_path):
    settings = load_settings({"PUBLISHER_ORIGINS": "https://News.Example.com/path, http://a.test:8080"},
                             tmp_path)
    assert settings.PUBLISHER_ORIGINS == ("https://news.example.com", "http://a.test:8080")


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "service.cli", "routes"],
        [sys.executable, "-c", "import tasks.worker"],
        [sys.executable, "-c", "import service.wsgi"],
    ],
    ids=["cli", "worker", "wsgi"],
)
def test_start_up_with_a_bad_setting_prints_one_line_and_no_traceback(tmp_path, command):
    env = {**os.environ, "DATABASE_URL": "postgresql://x/y", "INSTANCE_PATH": str(tmp_path)}
    env.pop("SECRET_KEY", None)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "SECRET_KEY is required" in lines[0]
