"""Migrations run up and down on both databases and match the models exactly."""

import flask_migrate
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from service import create_app
from service.extensions import db
from tests.conftest import POSTGRES_ADMIN_URL

MIGRATIONS_DATABASE = "newsletter_migrations_test"


@pytest.fixture(params=["postgres", "sqlite"])
def fresh_app(request, tmp_path):
    env = {"INSTANCE_PATH": str(tmp_path), "SEED_DEMO_TOPICS": "false"}
    if request.param == "postgres":
        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS {MIGRATIONS_DATABASE} WITH (FORCE)"))
            connection.execute(sa.text(f"CREATE DATABASE {MIGRATIONS_DATABASE}"))
        admin.dispose()
        env["DATABASE_URL"] = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{MIGRATIONS_DATABASE}"
        env["SECRET_KEY"] = "migrations-test-secret-key"
    app = create_app(env)
    yield app
    with app.app_context():
        db.engine.dispose()


def _schema_differences(app) -> list:
    with app.app_context(), db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, db.metadata)


def test_migrations_go_up_down_and_up_again_and_match_the_models(fresh_app):
    with fresh_app.app_context():
        flask_migrate.upgrade()
        assert _schema_differences(fresh_app) == []
        flask_migrate.downgrade(revision="base")
        with db.engine.connect() as connection:
            assert set(sa.inspect(connection).get_table_names()) <= {"alembic_version"}
        flask_migrate.upgrade()
    assert _schema_differences(fresh_app) == []


def test_0007_rewrites_international_domains_to_the_spelling_we_now_store(fresh_app):
    stored_before = {
        1: "reader@bücher.example",  # rewritten
        2: "jürgen@example.com",  # a local part outside ASCII: no ASCII spelling, left alone
        3: "peggy@example.com",  # ASCII already
        4: "again@bücher.example",  # its ASCII spelling exists (signed up again): left alone
        5: "again@xn--bcher-kva.example",
    }
    with fresh_app.app_context():
        flask_migrate.upgrade(revision="0006")
        with db.engine.begin() as connection:
            for subscriber_id, email in stored_before.items():
                connection.execute(sa.text(
                    "INSERT INTO subscribers (id, email, frequency, status, token_epoch, created_at) "
                    "VALUES (:id, :email, 'weekly', 'pending', 1, CURRENT_TIMESTAMP)"),
                    {"id": subscriber_id, "email": email})
        flask_migrate.upgrade()
        with db.engine.connect() as connection:
            after = dict(connection.execute(sa.text("SELECT id, email FROM subscribers")).all())
    assert after == {**stored_before, 1: "reader@xn--bcher-kva.example"}
